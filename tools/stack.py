"""Start the stack as real processes: nats-server, the simulator and the services.

One implementation serves ``make run`` (tools/run_local.py), the benchmarks and
the chaos tests, which kill and restart these processes.

``make run`` uses fixed, documented ports (a busy one is an error naming its
setting, never a silent move) and a secured bus: one user per service with the
deployment's permissions (tools/nats_config.py) and passwords generated per run.
Tests, benchmarks and soaks use free ports and, unless they ask, an open bus.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tools.nats_config import USERS, env_var, render
from tools.natsd import NatsCluster, NatsServer, die_with_parent, free_port, stop_process
from tools.secrets import new_secret

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ChildSpec:
    name: str
    module: str
    port_env: str
    default_port: int
    probe: str = "/readyz"
    nats_user: str | None = None  # its NATS user on a secured bus (tools/nats_config.py)


SIMULATOR = ChildSpec("simulator", "services.simulator", "SIM_PORT", 8090, "/fapi/v1/ping")
ROUTER = ChildSpec("router", "services.router", "ROUTER_HTTP_PORT", 8101, nats_user="router")
RECONCILER = ChildSpec(
    "reconciler", "services.reconciler", "RECONCILE_HTTP_PORT", 8102, nats_user="reconciler"
)
RISK = ChildSpec("risk", "services.risk", "RISK_HTTP_PORT", 8103, nats_user="risk")
ENTRY = ChildSpec("entry", "services.entry", "ENTRY_HTTP_PORT", 8104, nats_user="entry")
VENUE_STREAM = ChildSpec(
    "venue_stream", "services.venue_stream", "VENUE_STREAM_HTTP_PORT", 8105, nats_user="venue_stream"
)
# risk first: router and entry refuse entries until it has published the guard knobs
SERVICES = (RISK, ROUTER, RECONCILER, ENTRY, VENUE_STREAM)

# the ports ``make run`` listens on besides the children's HTTP ports: setting -> default
NATS_PORTS = {"NATS_PORT": 4222, "NATS_MONITOR_PORT": 8222}
SIM_WS_PORT = ("SIM_WS_PORT", 8091)  # the simulator's user data stream (WebSocket)


def port_settings(simulator: bool = True) -> dict[str, int]:
    """Every port setting of the local stack with its documented default, in start order."""
    ports = dict(NATS_PORTS)
    if simulator:
        ports[SIMULATOR.port_env] = SIMULATOR.default_port
        ports[SIM_WS_PORT[0]] = SIM_WS_PORT[1]
    ports.update({s.port_env: s.default_port for s in SERVICES})
    return ports


class PortError(ValueError):
    """A port setting that cannot be used; the message names the setting."""


def resolve_ports(defaults: Mapping[str, int], environ: Mapping[str, str]) -> dict[str, int]:
    """The configured port of every setting, else its default; never another one.

    A bad value or two settings on one port is an error naming the settings.
    """
    ports: dict[str, int] = {}
    problems: list[str] = []
    for name, default in defaults.items():
        raw = environ.get(name, "").strip()
        if not raw:
            ports[name] = default
        elif raw.isdigit() and 1 <= int(raw) <= 65535:
            ports[name] = int(raw)
        else:
            problems.append(f"{name}={raw!r} is not a port number (1-65535)")
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            problems.append(f"{seen[port]} and {name} are both {port}: set one of them to another port")
        seen.setdefault(port, name)
    if problems:
        raise PortError("; ".join(problems))
    return ports


def busy_port_problems(ports: Mapping[str, int], free: Callable[[int], bool]) -> list[str]:
    return [
        f"port {port} ({name}) is in use: stop what listens there or set {name} to a free port"
        for name, port in ports.items()
        if not free(port)
    ]


def port_free(port: int) -> bool:
    """Could a server listen on ``port`` now? SO_REUSEADDR like our servers (uvicorn, aiohttp,
    nats-server) so a port left in TIME_WAIT by the previous run counts as free, which it is."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def write_credentials(directory: Path) -> dict[str, str]:
    """A random password for every NATS user, each in ``<user>.password`` (0600, directory 0700).

    New on every run: a password from an earlier run (or a leaked log) opens nothing now.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    passwords: dict[str, str] = {}
    for user in USERS:
        path = directory / f"{user}.password"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(passwords.setdefault(user, new_secret()))  # a form nats-server's $VAR parsing keeps
    return passwords


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
    # True (make run): the configured or documented port of every setting (check_ports first);
    # False (tests): free ports
    fixed_ports: bool = False
    # True (make run): the deployment's users and permissions with passwords generated per run;
    # False: an open bus
    secure: bool = False
    nats: NatsServer | NatsCluster | None = None
    children: dict[str, Child] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def credentials_dir(self) -> Path:
        return self.run_dir / "nats"

    def check_ports(self, simulator: bool = True) -> dict[str, int]:
        """make run, before it starts anything: every port it will use, or PortError naming the
        settings of the bad or busy ones."""
        ports = resolve_ports(port_settings(simulator), os.environ)
        problems = busy_port_problems(ports, port_free)
        if problems:
            raise PortError("; ".join(problems))
        return ports

    def _port(self, env: str, default: int) -> int:
        return resolve_ports({env: default}, os.environ)[env] if self.fixed_ports else free_port()

    def start_nats(self, store_dir: Path | None = None) -> NatsServer:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        store = store_dir or self.run_dir / "nats-store"
        store.mkdir(parents=True, exist_ok=True)
        config_file, env = None, None
        if self.secure:
            # the committed permission blocks (one place: tools/nats_config.py); the listen address
            # and ports come from the command line, which overrides the file's
            self.passwords = write_credentials(self.credentials_dir)
            conf = self.credentials_dir / "nats.conf"
            conf.write_text(render(store_dir=str(store.resolve())))
            config_file = str(conf)
            env = {env_var(u): p for u, p in self.passwords.items()} | {"NATS_SERVER_NAME": "erl-local"}
        self.nats = NatsServer(
            port=self._port("NATS_PORT", NATS_PORTS["NATS_PORT"]),
            monitor_port=self._port("NATS_MONITOR_PORT", NATS_PORTS["NATS_MONITOR_PORT"]),
            store_dir=str(store),
            config_file=config_file,
            env=env,
            log_file=str(self.run_dir / "logs" / "nats-server.log"),
        )
        self.nats.start()
        return self.nats

    def nats_credentials(self, user: str | None) -> dict[str, str]:
        """NATS_USER / NATS_PASSWORD of ``user`` on a secured bus; nothing on an open one."""
        if not self.secure or user is None:
            return {}
        return {"NATS_USER": user, "NATS_PASSWORD": self.passwords[user]}

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
        child_env = {
            **self.base_env(),
            **self.nats_credentials(spec.nats_user),
            spec.port_env: str(port),
            **(env or {}),
        }
        if spec is SIMULATOR and not child_env.get(SIM_WS_PORT[0]):
            # a known port: the services are told the stream's URL before the simulator is up
            child_env[SIM_WS_PORT[0]] = str(self._port(*SIM_WS_PORT))
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
