"""Rolling statistics, throttling and problem tracking behind the node's logs and /diagnostics.

Plain classes with an explicit `now` (seconds, monotonic), so they are tested without clocks or ROS.
"""
from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels (as bytes there)
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR"}


class RollingStats:
    """The last `window` samples of a quantity; percentiles for p50/p99."""

    def __init__(self, window: int = 300):
        self._values: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))

    def percentiles(self, *q: float) -> tuple[float, ...] | None:
        with self._lock:
            if not self._values:
                return None
            values = np.fromiter(self._values, np.float64, len(self._values))
        return tuple(float(v) for v in np.percentile(values, q))

    def __len__(self) -> int:
        return len(self._values)


class RateMeter:
    """Events per second over the last window_s seconds."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self.count = 0
        self._last: float | None = None  # kept past the window: how long a topic has been quiet

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            self.count += 1
            self._last = now
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            if len(self._times) < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def last(self) -> float | None:
        """When the newest event came (however long ago), None before the first."""
        with self._lock:
            return self._last

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self.window_s:
            self._times.popleft()


class Throttle:
    """At most one go per key per period_s (so each kind of problem gets its own log line)."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str, now: float) -> bool:
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                return False
            self._last[key] = now
            return True


@dataclasses.dataclass
class Problem:
    level: int
    message: str
    first_seen: float
    last_seen: float
    count: int = 1


class ProblemBoard:
    """Problems reported by key; one stays active for hold_s after it was last reported (or until cleared)."""

    def __init__(self, hold_s: float):
        self.hold_s = hold_s
        self._problems: dict[str, Problem] = {}
        self._lock = threading.Lock()
        self.totals: collections.Counter[str] = collections.Counter()

    def report(self, key: str, level: int, message: str, now: float) -> None:
        with self._lock:
            self.totals[key] += 1
            old = self._problems.get(key)
            if old is not None and now - old.last_seen <= self.hold_s:
                old.level, old.message, old.last_seen, old.count = level, message, now, old.count + 1
            else:
                self._problems[key] = Problem(level, message, now, now)

    def clear(self, key: str) -> None:
        with self._lock:
            self._problems.pop(key, None)

    def active(self, now: float) -> dict[str, Problem]:
        with self._lock:
            for key in [k for k, p in self._problems.items() if now - p.last_seen > self.hold_s]:
                del self._problems[key]
            return {k: dataclasses.replace(p) for k, p in self._problems.items()}


def summarize(problems: dict[str, Problem], healthy_message: str) -> tuple[int, str]:
    """(level, message) of a status: the worst active problem first, or the healthy message."""
    if not problems:
        return OK, healthy_message
    ordered = sorted(problems.items(), key=lambda kv: (-kv[1].level, kv[0]))
    level = ordered[0][1].level
    text = "; ".join(f"{key}: {p.message}" for key, p in ordered)
    return level, text


def format_ms(stats: RollingStats) -> str:
    pct = stats.percentiles(50, 99)
    return "n/a" if pct is None else f"p50 {pct[0]:.1f} ms, p99 {pct[1]:.1f} ms"


def status_message(name: str, hardware_id: str, level: int, message: str, values: list[tuple[str, str]]):
    """diagnostic_msgs/DiagnosticStatus from plain values."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

    status = DiagnosticStatus()
    status.level = bytes([level])
    status.name, status.message, status.hardware_id = name, message, hardware_id
    status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values]
    return status


def status_level(status) -> int:
    """The int level of a DiagnosticStatus (a bytes field in rclpy)."""
    level = status.level
    return level[0] if isinstance(level, (bytes, bytearray)) else int(level)
