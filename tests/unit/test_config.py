import errno

import pytest

from libs.common.config import (
    ConfigError,
    ExchangeSettings,
    NatsSettings,
    RiskSettings,
    RouterSettings,
    load,
    placeholder_problem,
)


def test_bad_values_exit_with_one_readable_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("ROUTER_RETRY_MAX_ATTEMPTS", "abc")
    monkeypatch.setenv("ROUTER_RETRY_JITTER", "-1")
    with pytest.raises(ConfigError) as e:
        load(RouterSettings)
    msg = str(e.value)
    assert msg.startswith("invalid configuration: ") and "\n" not in msg
    assert "ROUTER_RETRY_MAX_ATTEMPTS" in msg and "ROUTER_RETRY_JITTER" in msg


def test_credentials_from_files_are_secrets(tmp_path, monkeypatch):
    (tmp_path / "key").write_text("file-key\n")
    (tmp_path / "secret").write_text("file-secret\n")
    monkeypatch.setenv("EXCHANGE_API_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("EXCHANGE_API_SECRET_FILE", str(tmp_path / "secret"))
    s = load(ExchangeSettings)
    assert s.api_key.get_secret_value() == "file-key" and s.api_secret.get_secret_value() == "file-secret"
    shown = repr(s) + str(s.model_dump()) + s.model_dump_json()
    assert "file-key" not in shown and "file-secret" not in shown


def test_unreadable_credentials_file_names_the_variable(monkeypatch):
    monkeypatch.setenv("EXCHANGE_API_SECRET_FILE", "/nonexistent/secret")
    with pytest.raises(ConfigError, match="cannot read EXCHANGE_API_SECRET_FILE /nonexistent/secret"):
        load(ExchangeSettings)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RISK_ADMIN_TOKEN", "change-me"),
        ("RISK_ADMIN_TOKEN", ""),
        ("RISK_ADMIN_TOKEN", "  "),
        ("NATS_PASSWORD", "risk-dev-password"),
        ("NATS_PASSWORD", "Router-Dev-Password"),
        ("NATS_PASSWORD", "admin"),
        ("NATS_PASSWORD", ""),
    ],
)
def test_a_published_placeholder_or_empty_secret_refuses_to_start_naming_the_variable(
    monkeypatch, var, value
):
    monkeypatch.setenv(var, value)
    cls = RiskSettings if var.startswith("RISK_") else NatsSettings
    with pytest.raises(ConfigError) as e:
        load(cls)
    msg = str(e.value)
    assert msg.startswith(f"invalid configuration: {var}: ") and "make secrets" in msg
    assert value.strip() == "" or value not in msg  # the refused value is never echoed


def test_real_secrets_and_unset_ones_are_accepted(monkeypatch):
    assert load(RiskSettings).admin_token is None  # unset: the halt API answers 503, as before
    assert load(NatsSettings).password is None  # unset: an open server (tests, `make run` without auth)
    monkeypatch.setenv("RISK_ADMIN_TOKEN", "Zk3v9b1X0q")
    monkeypatch.setenv("NATS_PASSWORD", "4d0c8a6e2f")
    assert load(RiskSettings).admin_token.get_secret_value() == "Zk3v9b1X0q"
    assert load(NatsSettings).password.get_secret_value() == "4d0c8a6e2f"


def test_placeholder_problem():
    for bad in ("change-me", "CHANGEME", "ops-dev-password", "", "sim-key", "secret"):
        assert placeholder_problem(bad), bad
    for good in ("x9", "dev", "a-password-of-mine"):
        assert placeholder_problem(good) is None, good


def test_a_signing_service_on_the_real_venue_refuses_placeholder_keys(monkeypatch, tmp_path):
    # the simulator takes any key: its defaults stay usable
    assert load(ExchangeSettings).require_keys().api_key.get_secret_value() == "sim-key"
    monkeypatch.setenv("EXCHANGE_API_URL", "")
    with pytest.raises(ConfigError, match=r"EXCHANGE_API_KEY \(or EXCHANGE_API_KEY_FILE\) is a published"):
        load(ExchangeSettings).require_keys()
    (tmp_path / "key").write_text("real-key\n")
    (tmp_path / "secret").write_text("\n")
    monkeypatch.setenv("EXCHANGE_API_KEY_FILE", str(tmp_path / "key"))
    monkeypatch.setenv("EXCHANGE_API_SECRET_FILE", str(tmp_path / "secret"))
    with pytest.raises(ConfigError, match=r"EXCHANGE_API_SECRET \(or EXCHANGE_API_SECRET_FILE\) is empty"):
        load(ExchangeSettings).require_keys()
    (tmp_path / "secret").write_text("real-secret")
    assert load(ExchangeSettings).require_keys().api_url is None


def test_an_unreadable_secret_file_says_which_user_must_read_it(monkeypatch):
    # as compose mounts a 600 file of the host's user into an image that runs as uid 10001
    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr("builtins.open", denied)
    monkeypatch.setenv("EXCHANGE_API_KEY_FILE", "/run/secrets/exchange_api_key")
    with pytest.raises(
        ConfigError,
        match=r"EXCHANGE_API_KEY_FILE /run/secrets/exchange_api_key: Permission denied .*uid 10001",
    ):
        load(ExchangeSettings)
