"""python -m services.reconciler"""

from libs.common.config import BootSettings, ExchangeSettings, NatsSettings, ReconcilerSettings, load
from libs.common.logs import setup_logging
from libs.common.service import run_service
from services.reconciler.service import ReconcilerService


def main() -> None:
    setup_logging("reconciler")
    svc = ReconcilerService(
        load(NatsSettings),
        load(ExchangeSettings).require_keys(),
        load(ReconcilerSettings),
        load(BootSettings),
    )
    run_service(svc)


if __name__ == "__main__":
    main()
