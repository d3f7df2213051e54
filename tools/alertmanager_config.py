"""Alertmanager's configuration, rendered from the environment (Alertmanager reads no variables itself).

    python -m tools.alertmanager_config --out /etc/alertmanager/alertmanager.yml

Every alert goes to one receiver, "operators": a webhook when ALERT_WEBHOOK_URL is set, Telegram when
ALERT_TELEGRAM_BOT_TOKEN and ALERT_TELEGRAM_CHAT_ID both are (configured but off without them). Compose
runs this in the erl image as a one-shot service before Alertmanager starts; the delivery test renders
it for its own webhook sink.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RECEIVER = "operators"


def render(webhook_url: str = "", telegram_bot_token: str = "", telegram_chat_id: str = "") -> dict:
    """The whole config as a dict; a bad chat id is an error naming its variable."""
    receiver: dict = {"name": RECEIVER}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
    if bool(telegram_bot_token) != bool(telegram_chat_id):
        raise ValueError("ALERT_TELEGRAM_BOT_TOKEN and ALERT_TELEGRAM_CHAT_ID go together (one is empty)")
    if telegram_bot_token:
        try:
            chat_id = int(telegram_chat_id)
        except ValueError:
            raise ValueError("ALERT_TELEGRAM_CHAT_ID must be a number (negative for a group)") from None
        # the default message lists every alert's labels and annotations: the replay command included
        receiver["telegram_configs"] = [
            {"bot_token": telegram_bot_token, "chat_id": chat_id, "send_resolved": True, "parse_mode": ""}
        ]
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname"],
            # a kill-switch trip should reach a phone in seconds, not after Alertmanager's 30 s default
            "group_wait": "5s",
            "group_interval": "1m",
            "repeat_interval": "4h",
        },
        "receivers": [receiver],
    }


def destinations(config: dict) -> list[str]:
    receiver = config["receivers"][0]
    return [k.removesuffix("_configs") for k in ("webhook_configs", "telegram_configs") if k in receiver]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.alertmanager_config", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, required=True, help="where to write alertmanager.yml")
    args = ap.parse_args(argv)
    try:
        config = render(
            os.environ.get("ALERT_WEBHOOK_URL", ""),
            os.environ.get("ALERT_TELEGRAM_BOT_TOKEN", ""),
            os.environ.get("ALERT_TELEGRAM_CHAT_ID", ""),
        )
    except ValueError as e:
        print(f"invalid configuration: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Alertmanager runs as another user (nobody) in its own container: the file must be world-readable,
    # so it lives on a volume only Alertmanager and this step mount
    # JSON is YAML: no YAML library in the runtime image for one file
    args.out.write_text(json.dumps(config, indent=2) + "\n")
    args.out.chmod(0o644)
    where = destinations(config)
    print(f"[alertmanager] alerts go to: {', '.join(where) if where else 'nobody (no destination set)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
