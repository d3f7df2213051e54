"""Start the stack as real processes: nats-server, the simulator and the services.

One implementation serves ``make run`` (tools/run_local.py), the benchmarks and
the chaos tests, which kill and restart these processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tools.natsd import NatsCluster, NatsServer, die_with_parent, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ChildSpec:
    name: str
    module: str
    port_env: str
    default_port: int
    probe: str = "/readyz"


SIMULATOR = ChildSpec("simulator", "services.simulator", "SIM_PORT", 8090, "/fapi/v1/ping")
ROUTER = ChildSpec("router", "services.router", "ROUTER_HTTP_PORT", 8101)
RECONCILER = ChildSpec("reconciler", "services.reconciler", "RECONCILE_HTTP_PORT", 8102)
RISK = ChildSpec("risk", "services.risk", "RISK_HTTP_PORT", 8103)
ENTRY = ChildSpec("entry", "services.entry", "ENTRY_HTTP_PORT", 8104)
VENUE_STREAM = ChildSpec("venue_stream", "services.venue_stream", "VENUE_STREAM_HTTP_PORT", 8105)
# risk first: router and entry refuse entries until it has published the guard knobs
SERVICES = (RISK, ROUTER, RECONCILER, ENTRY, VENUE_STREAM)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def choose_port(env: str, default: int | None) -> int:
    """The configured port, else the default if free, else any free port."""
    if os.environ.get(env):
        return int(os.environ[env])
    if default and port_free(default):
        return default
    return free_port()


def http_ok(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@dataclass
class Child:
    spec: ChildSpec
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.spec.module],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def wait_ready(self, timeout: float = 30.0) -> bool:
        return http_ok(self.url + self.spec.probe, timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class LocalStack:
    run_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    fixed_ports: bool = False  # True: honour defaults like 4222/8090 (make run); False: free ports (tests)
    nats: NatsServer | NatsCluster | None = None
    children: dict[str, Child] = field(default_factory=dict)

    def _port(self, env: str, default: int) -> int:
        return choose_port(env, default) if self.fixed_ports else free_port()

    def start_nats(self, store_dir: Path | None = None) -> NatsServer:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        store = store_dir or self.run_dir / "nats-store"
        store.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(
            port=self._port("NATS_PORT", 4222),
            monitor_port=self._port("NATS_MONITOR_PORT", 8222),
            store_dir=str(store),
            log_file=str(self.run_dir / "logs" / "nats-server.log"),
        )
        self.nats.start()
        return self.nats

    def base_env(self) -> dict[str, str]:
        assert self.nats
        env = {**os.environ, "NATS_URL": self.nats.url, "PYTHONUNBUFFERED": "1"}
        sim = self.children.get("simulator")
        if sim is not None:
            env["EXCHANGE_API_URL"] = sim.url
            env["EXCHANGE_WS_URL"] = f"ws://127.0.0.1:{sim.env['SIM_WS_PORT']}/ws"  # its user data stream
        env.update(self.extra_env)
        return env

    def add(self, spec: ChildSpec, env: dict[str, str] | None = None, start: bool = True) -> Child:
        port = self._port(spec.port_env, spec.default_port)
        child_env = {**self.base_env(), spec.port_env: str(port), **(env or {})}
        if spec is SIMULATOR and not child_env.get("SIM_WS_PORT"):
            # a known port: the services are told the stream's URL before the simulator is up
            child_env["SIM_WS_PORT"] = str(self._port("SIM_WS_PORT", 8091))
        child = Child(spec, port, child_env, self.run_dir / "logs" / f"{spec.name}.log")
        self.children[spec.name] = child
        if start:
            child.start()
        return child

    def __getitem__(self, name: str) -> Child:
        return self.children[name]

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            child.stop()
        if self.nats is not None:
            self.nats.stop()
