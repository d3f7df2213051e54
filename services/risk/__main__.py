"""python -m services.risk"""

import asyncio

from libs.common.config import KillSettings, NatsSettings, RiskSettings, load
from libs.common.logs import setup_logging
from services.risk.service import RiskService


def main() -> None:
    setup_logging("risk")
    svc = RiskService(load(NatsSettings), load(RiskSettings), load(KillSettings))
    asyncio.run(svc.serve_forever())


if __name__ == "__main__":
    main()
