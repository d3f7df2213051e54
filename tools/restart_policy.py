"""When ``make run`` restarts a process that died: exponential backoff, never a tight loop.

Pure (the caller passes the clock), so the launcher's supervision is a thin loop around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    first_delay: float = 1.0
    max_delay: float = 30.0
    # a process that stayed up this long had recovered: its next crash starts the backoff over
    stable_after: float = 60.0
    _attempts: dict[str, int] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)

    def started(self, name: str, now: float) -> None:
        self._started[name] = now
        self._due.pop(name, None)

    def exited(self, name: str, now: float) -> float:
        """Note that ``name`` died (once per death); the delay before its restart."""
        if now - self._started.get(name, now) >= self.stable_after:
            self._attempts[name] = 0
        n = self._attempts[name] = self._attempts.get(name, 0) + 1
        delay = min(self.first_delay * 2 ** (n - 1), self.max_delay)
        self._due[name] = now + delay
        return delay

    def waiting(self, name: str) -> bool:
        """Died and not restarted yet (its death already noted)."""
        return name in self._due

    def due(self, name: str, now: float) -> bool:
        return name in self._due and now >= self._due[name]
