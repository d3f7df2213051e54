"""python -m services.risk"""

from libs.common.config import KillSettings, NatsSettings, RiskSettings, load
from libs.common.logs import setup_logging
from libs.common.service import run_service
from services.risk.service import RiskService


def main() -> None:
    setup_logging("risk")
    svc = RiskService(load(NatsSettings), load(RiskSettings), load(KillSettings))
    run_service(svc)


if __name__ == "__main__":
    main()
