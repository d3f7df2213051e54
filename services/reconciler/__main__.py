"""python -m services.reconciler"""

import asyncio

from libs.common.config import BootSettings, ExchangeSettings, NatsSettings, ReconcilerSettings, load
from libs.common.logs import setup_logging
from services.reconciler.service import ReconcilerService


def main() -> None:
    setup_logging("reconciler")
    svc = ReconcilerService(
        load(NatsSettings),
        load(ExchangeSettings).require_keys(),
        load(ReconcilerSettings),
        load(BootSettings),
    )
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
