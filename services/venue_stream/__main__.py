"""python -m services.venue_stream"""

from libs.common.config import ExchangeSettings, NatsSettings, VenueStreamSettings, load
from libs.common.logs import setup_logging
from libs.common.service import run_service
from services.venue_stream.service import VenueStreamService


def main() -> None:
    setup_logging("venue_stream")
    svc = VenueStreamService(
        load(NatsSettings), load(ExchangeSettings).require_keys(), load(VenueStreamSettings)
    )
    run_service(svc)


if __name__ == "__main__":
    main()
