import pytest

from tools.stack import PortError, busy_port_problems, port_settings, resolve_ports


def test_documented_defaults_unless_configured():
    defaults = port_settings()
    assert (
        defaults["NATS_PORT"] == 4222
        and defaults["RISK_HTTP_PORT"] == 8103
        and defaults["SIM_WS_PORT"] == 8091
    )
    assert len(set(defaults.values())) == len(defaults)  # the defaults never collide
    ports = resolve_ports(defaults, {"RISK_HTTP_PORT": "9103", "NATS_PORT": " "})
    assert ports["RISK_HTTP_PORT"] == 9103 and ports["NATS_PORT"] == 4222
    assert "SIM_PORT" not in port_settings(simulator=False)


@pytest.mark.parametrize("value", ["abc", "0", "70000", "-1", "80.5"])
def test_a_bad_port_value_names_its_setting(value):
    with pytest.raises(PortError, match=f"RISK_HTTP_PORT={value!r} is not a port number"):
        resolve_ports({"RISK_HTTP_PORT": 8103}, {"RISK_HTTP_PORT": value})


def test_two_settings_on_one_port_are_refused():
    with pytest.raises(PortError, match="NATS_PORT and RISK_HTTP_PORT are both 4222"):
        resolve_ports({"NATS_PORT": 4222, "RISK_HTTP_PORT": 8103}, {"RISK_HTTP_PORT": "4222"})


def test_a_busy_port_names_the_setting_to_change():
    ports = {"NATS_PORT": 4222, "SIM_PORT": 8090}
    (problem,) = busy_port_problems(ports, free=lambda port: port != 8090)
    assert "8090" in problem and "set SIM_PORT" in problem
