"""`make run`'s launcher (tools.run_local) as a real process: it starts nats-server, the simulator and
every service on a secured bus (a user per service, passwords generated per run), the stack trades, a
child that dies is restarted, nats-server too, and Ctrl-C stops every process it started (services
first, then the bus), even when its own stdout is gone (a `| tee` killed by the same Ctrl-C). A busy
port stops it before it starts anything.
"""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import nats
import pytest

from tools.nats_config import USERS
from tools.natsd import die_with_parent, free_ports
from tools.stack import ROOT, SERVICES, http_ok, port_settings

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

SIGNAL = ("--symbol", "BTC/USDT:USDT", "--side", "buy", "--qty", "0.01")
PORT_ENVS = tuple(port_settings())


def children_of(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: {pid: command line}."""
    out: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid and stat.rsplit(")", 1)[1].split()[0] != "Z":
                out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return out


class Launcher:
    def __init__(self, run_dir: Path, **ports: int) -> None:
        self.run_dir = run_dir
        self.ports = dict(zip(PORT_ENVS, free_ports(len(PORT_ENVS)), strict=True)) | ports
        env = {**os.environ, "ERL_RUN_DIR": str(run_dir), **{k: str(v) for k, v in self.ports.items()}}
        for var in ("EXCHANGE_API_URL", "RISK_ADMIN_TOKEN", "NATS_URL", "NATS_USER", "NATS_PASSWORD"):
            env.pop(var, None)
        env["SIM_TICK_MS"] = "0"
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.run_local"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
        # its output goes through a `cat`, as through `make run | tee run.log`, so the test can kill
        # the reader (Ctrl-C in a terminal kills the tee too)
        self.tee = subprocess.Popen(["cat"], stdin=self.proc.stdout, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout
        self.proc.stdout.close()  # only the tee reads it now
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.tee.stdout
        for line in self.tee.stdout:
            self.lines.put(line.rstrip("\n"))

    def kill_tee(self) -> None:
        self.tee.kill()
        self.tee.wait()

    def wait_line(self, fragment: str, within: float = 60.0) -> list[str]:
        """Every line up to and including the first that contains ``fragment``."""
        seen: list[str] = []
        deadline = time.monotonic() + within
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no line with {fragment!r} in {within}s; saw {seen}") from None
            seen.append(line)
            if fragment in line:
                return seen

    def url(self, port_env: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[port_env]}{path}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.ports['NATS_PORT']}"

    def password(self, user: str) -> str:
        return (self.run_dir / "nats" / f"{user}.password").read_text()


def all_ready(launcher: Launcher, within: float) -> bool:
    return all(http_ok(launcher.url(s.port_env, "/readyz"), timeout=within) for s in SERVICES)


async def refused_resume(launcher: Launcher) -> None:
    """Nobody without a service's password reaches the bus; a user without the right may not resume."""
    denied: list[str] = []

    async def on_error(e: Exception) -> None:
        denied.append(str(e).lower())

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # anonymous
        await nats.connect(launcher.nats_url, allow_reconnect=False, error_cb=on_error)

    nc = await nats.connect(
        launcher.nats_url,
        user="ops",
        password=launcher.password("ops"),
        inbox_prefix="_INBOX.ops",
        error_cb=on_error,
        allow_reconnect=False,
    )
    with pytest.raises(nats.errors.TimeoutError):  # refused: the journal never acks it
        await nc.request("erl.risk.command.api", b"{}", timeout=1)
    await nc.close()
    assert any('permissions violation for publish to "erl.risk.command.api"' in d for d in denied), denied


def test_make_run_launcher_starts_trades_restarts_and_stops_cleanly(tmp_path):
    launcher = Launcher(tmp_path)
    try:
        banner = launcher.wait_line("Ctrl-C stops everything")
        for spec in SERVICES:
            assert any(spec.name in line and line.endswith("ready") for line in banner), banner
        # the table names every port it listens on, with the setting that moves it
        for setting, port in launcher.ports.items():
            assert any(f":{port}" in line and setting in line for line in banner), (setting, banner)
        token = tmp_path / "admin-token"
        assert token.stat().st_mode & 0o777 == 0o600 and token.read_text().strip()
        creds = tmp_path / "nats"
        assert creds.stat().st_mode & 0o777 == 0o700
        for user in USERS:
            path = creds / f"{user}.password"
            assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text()) >= 24
        kids = children_of(launcher.proc.pid)
        assert len(kids) == 2 + len(SERVICES), kids  # nats-server, simulator, services
        for pid, cmd in kids.items():  # each service on the bus as its own user
            spec = next((s for s in SERVICES if f"-m {s.module}" in cmd), None)
            if spec is not None:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                assert f"NATS_USER={spec.nats_user}".encode() in env, spec.name
        asyncio.run(refused_resume(launcher))

        # it trades: a signal from the operator CLI (as the ops user, as erl connects) becomes a filled order
        cli = subprocess.run(
            [sys.executable, "-m", "services.entry.cli", *SIGNAL, "--wait", "45"],  # a loaded CI machine
            cwd=ROOT,
            env={
                **launcher.env,
                "NATS_URL": launcher.nats_url,
                "NATS_USER": "ops",
                "NATS_PASSWORD": launcher.password("ops"),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        router_status = launcher.url("ROUTER_HTTP_PORT", "/status")
        deadline = time.monotonic() + 30
        while httpx.get(router_status, timeout=5).json()["counts"].get("order_FILLED", 0) < 1:
            assert time.monotonic() < deadline, httpx.get(router_status, timeout=5).json()
            time.sleep(0.1)

        # a child that dies is restarted, on the same port
        (entry_pid,) = [pid for pid, cmd in kids.items() if "services.entry" in cmd]
        os.kill(entry_pid, signal.SIGKILL)
        launcher.wait_line("entry exited")
        assert http_ok(launcher.url("ENTRY_HTTP_PORT", "/readyz"), timeout=30)
        kids = children_of(launcher.proc.pid)
        assert entry_pid not in kids and len(kids) == 2 + len(SERVICES), kids

        # so is nats-server: the outage and the restart are logged, the services are ready again
        (nats_pid,) = [pid for pid, cmd in kids.items() if "nats-server" in cmd]
        os.kill(nats_pid, signal.SIGKILL)
        launcher.wait_line("nats-server exited")
        launcher.wait_line("nats-server back on", within=60)
        assert all_ready(launcher, within=60)
        kids = children_of(launcher.proc.pid)
        assert nats_pid not in kids and len(kids) == 2 + len(SERVICES), kids

        # Ctrl-C with nobody left reading the launcher's output
        launcher.kill_tee()
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(timeout=60) == 0
        assert children_of(launcher.proc.pid) == {}
        for pid in kids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
        logs = tmp_path / "logs"
        for spec in SERVICES:
            text = (logs / f"{spec.name}.log").read_text()
            assert text.rstrip().endswith('"event":"service.stopped"}'), spec.name
            # the bus outlived the service: it stopped on its own terms, not because NATS vanished
            last_run = text.rsplit('"service.started"', 1)[-1]
            assert "nats.disconnected" not in last_run.rsplit('"nats.reconnected"', 1)[-1], spec.name
        assert "Server Exiting" in (logs / "nats-server.log").read_text()
    finally:
        for proc in (launcher.proc, launcher.tee):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_busy_port_stops_make_run_before_it_starts_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = Launcher(tmp_path, RISK_HTTP_PORT=port)
        try:
            out = launcher.wait_line("cannot start", within=30)
            assert launcher.proc.wait(timeout=30) == 2
        finally:
            if launcher.proc.poll() is None:
                launcher.proc.kill()
            launcher.proc.wait()
    assert f"port {port} (RISK_HTTP_PORT) is in use" in out[-1] and "set RISK_HTTP_PORT" in out[-1], out
    assert not (tmp_path / "logs").exists() and not (tmp_path / "nats").exists()  # nothing started
