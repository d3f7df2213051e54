"""python -m services.simulator: the Binance USD-M wire-format exchange simulator."""

from __future__ import annotations

import json
import sys
import time

import uvicorn

from libs.common.config import ConfigError
from services.simulator.app import create_app
from services.simulator.config import SimulatorSettings
from services.simulator.persistence import StateFileError


def main() -> int:
    try:
        from pydantic import ValidationError

        try:
            settings = SimulatorSettings()
        except ValidationError as e:
            raise ConfigError(
                "invalid configuration: "
                + "; ".join(f"SIM_{'.'.join(map(str, x['loc'])).upper()}: {x['msg']}" for x in e.errors())
            ) from None
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "ts": round(time.time(), 3),
                "level": "info",
                "service": "simulator",
                "event": "simulator.start",
                "url": f"http://{settings.host}:{settings.port}",
                "stream_url": f"ws://{settings.host}:{settings.ws_port}/ws"
                if settings.ws_port
                else "GET /_sim/stream",
                "symbols": len(settings.symbol_list()),
                "tick_ms": settings.tick_ms,
                "state_file": settings.state_file or "(none: a restart forgets positions and orders)",
            }
        ),
        file=sys.stderr,
        flush=True,
    )
    try:
        app = create_app(settings)
    except StateFileError as e:
        print(f"simulator: {e}", file=sys.stderr)
        return 2
    # uvicorn handles SIGINT/SIGTERM with a graceful shutdown (which writes SIM_STATE_FILE a last time)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
