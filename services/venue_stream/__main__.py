"""python -m services.venue_stream"""

import asyncio

from libs.common.config import ExchangeSettings, NatsSettings, VenueStreamSettings, load
from libs.common.logs import setup_logging
from services.venue_stream.service import VenueStreamService


def main() -> None:
    setup_logging("venue_stream")
    svc = VenueStreamService(
        load(NatsSettings), load(ExchangeSettings).require_keys(), load(VenueStreamSettings)
    )
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
