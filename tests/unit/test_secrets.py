"""make secrets: generated once, kept, never defaulted; alert destinations rendered for Alertmanager."""

import json
import stat

import pytest

from tools import alertmanager_config, secrets
from tools.nats_config import USERS, env_var


def test_generates_every_secret_once_private_and_keeps_existing_ones(tmp_path):
    path = tmp_path / ".env"
    added = secrets.generate(path)
    assert set(added) == set(secrets.REQUIRED) >= {env_var(u) for u in USERS} | {"RISK_ADMIN_TOKEN"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = secrets.parse(path.read_text())
    assert secrets.problems(env) == []
    assert len({env[k] for k in secrets.REQUIRED}) == len(secrets.REQUIRED)  # each its own
    assert all(env[k] == "" for k in secrets.OPTIONAL)  # alert destinations: for the operator to fill in
    assert secrets.generate(path) == [] and secrets.parse(path.read_text()) == env
    # a secret removed by hand comes back, the others stay
    path.write_text("\n".join(ln for ln in path.read_text().splitlines() if not ln.startswith("OPS_")))
    assert secrets.generate(path) == ["OPS_NATS_PASSWORD"]
    again = secrets.parse(path.read_text())
    assert {k: v for k, v in again.items() if k != "OPS_NATS_PASSWORD"} == {
        k: v for k, v in env.items() if k != "OPS_NATS_PASSWORD"
    }


def test_generated_secrets_are_not_placeholders_and_start_with_a_letter():
    for _ in range(50):
        s = secrets.new_secret()
        assert s[0].isalpha() and s.isalnum() and len(s) > 40


def test_check_refuses_placeholders_missing_and_half_telegram(tmp_path, capsys):
    path = tmp_path / ".env"
    secrets.generate(path)
    text = path.read_text()
    path.write_text(
        text.replace("RISK_ADMIN_TOKEN=", "RISK_ADMIN_TOKEN=change-me\n#", 1).replace(
            "ALERT_TELEGRAM_CHAT_ID=", "ALERT_TELEGRAM_CHAT_ID=12345"
        )
    )
    assert secrets.main(["--check", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "RISK_ADMIN_TOKEN is a published placeholder" in err and "change-me" not in err
    assert "ALERT_TELEGRAM_BOT_TOKEN and ALERT_TELEGRAM_CHAT_ID go together" in err
    assert secrets.main(["--check", "--file", str(tmp_path / "none")]) == 2
    assert "RISK_ADMIN_TOKEN is missing" in capsys.readouterr().err


def test_parse_reads_what_compose_reads():
    env = secrets.parse("# c\n\nA=1\nB='two words'\nC=\"x=y\"\nD=\n")
    assert env == {"A": "1", "B": "two words", "C": "x=y", "D": ""}


def test_alertmanager_routes_to_the_webhook_and_to_telegram_only_when_configured():
    off = alertmanager_config.render("http://hook/alerts")
    assert alertmanager_config.destinations(off) == ["webhook"]
    on = alertmanager_config.render("http://hook/alerts", "123:abc", "-1001")
    assert alertmanager_config.destinations(on) == ["webhook", "telegram"]
    assert on["receivers"][0]["telegram_configs"][0]["chat_id"] == -1001
    assert on["route"]["receiver"] == on["receivers"][0]["name"]
    assert alertmanager_config.destinations(alertmanager_config.render()) == []
    with pytest.raises(ValueError, match="ALERT_TELEGRAM_CHAT_ID must be a number"):
        alertmanager_config.render("", "123:abc", "@channel")
    with pytest.raises(ValueError, match="go together"):
        alertmanager_config.render("", "123:abc", "")


def test_alertmanager_config_cli_writes_json_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALERT_WEBHOOK_URL", "http://hook/x")
    monkeypatch.delenv("ALERT_TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("ALERT_TELEGRAM_CHAT_ID", raising=False)
    out = tmp_path / "am" / "alertmanager.yml"
    assert alertmanager_config.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["receivers"][0]["webhook_configs"][0]["url"] == "http://hook/x"
    assert "alerts go to: webhook" in capsys.readouterr().out
    monkeypatch.setenv("ALERT_TELEGRAM_BOT_TOKEN", "t")
    assert alertmanager_config.main(["--out", str(out)]) == 2


def test_generated_secrets_survive_nats_servers_variable_parsing():
    """make run once drew NATS passwords with token_urlsafe: one in six runs had a password starting with
    '-' (or a digit), which nats-server parses as a number and refuses the config."""
    from tools.secrets import new_secret

    for _ in range(500):
        s = new_secret()
        assert s[0].isalpha() and s.isalnum() and len(s) >= 24
