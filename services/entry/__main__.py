"""python -m services.entry"""

from libs.common.config import EntrySettings, ExchangeSettings, GuardSettings, NatsSettings, load
from libs.common.logs import setup_logging
from libs.common.service import run_service
from services.entry.service import EntryService


def main() -> None:
    setup_logging("entry")
    svc = EntryService(load(NatsSettings), load(EntrySettings), load(GuardSettings), load(ExchangeSettings))
    run_service(svc)


if __name__ == "__main__":
    main()
