"""python -m services.router"""

import asyncio

from libs.common.config import ExchangeSettings, GuardSettings, NatsSettings, RouterSettings, load
from libs.common.logs import setup_logging
from services.router.service import RouterService


def main() -> None:
    setup_logging("router")
    svc = RouterService(
        load(NatsSettings), load(ExchangeSettings).require_keys(), load(RouterSettings), load(GuardSettings)
    )
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
