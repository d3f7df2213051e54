"""Shared bits for benchmarks: percentiles and a description of the machine they ran on."""

from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence

from tools.natsd import NatsServer
from tools.stack import SIMULATOR, Child, ChildSpec, LocalStack

# the venue's weight and order limits raised far past any bench's rate (enforcement stays on, so a 429
# would still show): benches that measure our own path must not measure the venue's budget instead
RAISED_VENUE_LIMITS = {
    "SIM_WEIGHT_LIMIT_1M": str(10**8),
    "SIM_ORDERS_LIMIT_10S": str(10**8),
    "SIM_ORDERS_LIMIT_1M": str(10**8),
}


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def dist(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 3),
        "p90": round(pct(values, 90), 3),
        "p99": round(pct(values, 99), 3),
        "max": round(max(values), 3) if values else float("nan"),
        "mean": round(statistics.fmean(values), 3) if values else float("nan"),
    }


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
    }


async def jetstream_baseline(nats_url: str, n: int = 500) -> dict[str, float]:
    """The same-run substrate baseline: acked JetStream publish latency (ms) on a scratch stream.

    Figures from different machines compare as ratios to this.
    """
    import time
    import uuid

    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    stream = f"BENCH_BASELINE_{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=stream, subjects=[f"{stream}.>"], storage="file")
    lat: list[float] = []
    try:
        for i in range(n):
            t = time.perf_counter()
            await js.publish(f"{stream}.x", b"x" * 200, headers={"Nats-Msg-Id": f"b{i}"})
            lat.append((time.perf_counter() - t) * 1000)
    finally:
        await js.delete_stream(stream)
        await nc.close()
    return dist(lat)


def start_stack(
    stack: LocalStack, services: Sequence[ChildSpec]
) -> tuple[NatsServer, Child, dict[str, float]]:
    """nats-server, the same-run JetStream baseline on it, the simulator, then ``services``: each ready,
    or an error naming the log folder."""
    import asyncio

    nats = stack.start_nats()
    baseline = asyncio.run(jetstream_baseline(nats.url))
    sim = stack.add(SIMULATOR)
    assert sim.wait_ready(), f"simulator not ready, see {stack.run_dir}/logs"
    for spec in services:
        stack.add(spec)
    for spec in services:
        assert stack[spec.name].wait_ready(), f"{spec.name} not ready, see {stack.run_dir}/logs"
    return nats, sim, baseline
