"""python -m services.router"""

from libs.common.config import ExchangeSettings, GuardSettings, NatsSettings, RouterSettings, load
from libs.common.logs import setup_logging
from libs.common.service import run_service
from services.router.service import RouterService


def main() -> None:
    setup_logging("router")
    svc = RouterService(
        load(NatsSettings), load(ExchangeSettings).require_keys(), load(RouterSettings), load(GuardSettings)
    )
    run_service(svc)


if __name__ == "__main__":
    main()
