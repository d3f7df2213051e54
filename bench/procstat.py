"""CPU time and resident memory of processes, read from /proc (Linux; no dependency).

The parsers are pure (text in, numbers out); ``read_*`` open the files. A process that is gone
reads as None, never as zero: a dead process must not look idle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds_from_stat(stat: str, clk_tck: int = CLK_TCK) -> float:
    """utime + stime of one ``/proc/<pid>/stat`` line, in seconds.

    The command name (field 2) is in parentheses and may hold spaces or ')': fields are counted
    after its last ')'. utime and stime are fields 14 and 15 (clock ticks)."""
    rest = stat[stat.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3]
    return (int(rest[11]) + int(rest[12])) / clk_tck


def rss_kib_from_status(status: str) -> int:
    """VmRSS of one ``/proc/<pid>/status`` text, in KiB."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line (a zombie or kernel thread has none)")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def read_cpu_seconds(pid: int) -> float | None:
    text = _read(f"/proc/{pid}/stat")
    return cpu_seconds_from_stat(text) if text else None


def read_rss_kib(pid: int) -> int | None:
    text = _read(f"/proc/{pid}/status")
    try:
        return rss_kib_from_status(text) if text else None
    except ValueError:
        return None


class CpuMeter:
    """CPU seconds per named process, across a restart of any of them.

    ``pids`` is asked for the current pid of every name on each sample; when a name's pid changed,
    the old process's last sample is carried over (sample just before killing one, or its last
    slice is lost)."""

    def __init__(self, pids: Callable[[], Mapping[str, int]]) -> None:
        self.pids = pids
        self._last: dict[str, tuple[int, float]] = {}  # name -> (pid, its cpu seconds at last sample)
        self._carried: dict[str, float] = {}  # name -> cpu seconds of its earlier processes

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids().items():
            prev = self._last.get(name)
            if prev is not None and prev[0] != pid:
                self._carried[name] = self._carried.get(name, 0.0) + prev[1]
            now = read_cpu_seconds(pid)
            if now is None:  # gone right now (being restarted): what it had
                now = prev[1] if prev is not None and prev[0] == pid else 0.0
            self._last[name] = (pid, now)
            out[name] = self._carried.get(name, 0.0) + now
        return out


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Seconds each process used between two samples (a name new in ``after`` counts from zero)."""
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in after}
