"""python -m services.entry"""

import asyncio

from libs.common.config import EntrySettings, NatsSettings, load
from libs.common.logs import setup_logging
from services.entry.service import EntryService


def main() -> None:
    setup_logging("entry")
    svc = EntryService(load(NatsSettings), load(EntrySettings))
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
