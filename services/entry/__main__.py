"""python -m services.entry"""

import asyncio

from libs.common.config import EntrySettings, ExchangeSettings, GuardSettings, NatsSettings, load
from libs.common.logs import setup_logging
from services.entry.service import EntryService


def main() -> None:
    setup_logging("entry")
    svc = EntryService(load(NatsSettings), load(EntrySettings), load(GuardSettings), load(ExchangeSettings))
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
