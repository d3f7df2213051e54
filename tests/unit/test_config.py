import pytest

from libs.common.config import ConfigError, ExchangeSettings, RouterSettings, load


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
