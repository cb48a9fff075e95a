"""Time synchronisation of the stereo inputs and the newest-only hand-off to the worker thread.

`StampSynchronizer` is the built-in fallback for message_filters' Python TimeSynchronizer and
ApproximateTimeSynchronizer, with the same matching rules (so the node behaves the same whether or
not message_filters is installed):
- each input keeps a queue keyed by header stamp (a repeated stamp replaces the older message); when
  a queue holds more than queue_size messages, the one with the oldest stamp is dropped;
- exact: a set is emitted as soon as one stamp is present in every queue;
- approximate: when a message arrives, every other queue contributes the stamps within slop of it
  (nearest first); the first combination whose spread (newest - oldest) is below slop is emitted;
- emitted messages leave their queues, so a message is used at most once.
Nothing is ever emitted out of thin air: a missing input simply leaves the others queued (and bounded).
"""
from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Callable, Sequence

NANOSECONDS = 1_000_000_000


def stamp_ns(msg: Any) -> int:
    """A message's header stamp in integer nanoseconds."""
    stamp = msg.header.stamp
    return int(stamp.sec) * NANOSECONDS + int(stamp.nanosec)


def stamp_text(stamp: int) -> str:
    """Integer nanoseconds as seconds with all nine digits (a float would round the last ones)."""
    seconds, nanoseconds = divmod(stamp, NANOSECONDS)
    return f"{seconds}.{nanoseconds:09d}"


class StampSynchronizer:
    """Match one message from each of n inputs by header stamp (exact, or within slop_s)."""

    def __init__(self, inputs: int, queue_size: int, callback: Callable[..., None],
                 slop_s: float | None = None):
        if inputs < 2:
            raise ValueError(f"synchronising needs at least 2 inputs, got {inputs}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if slop_s is not None and slop_s <= 0:
            raise ValueError(f"slop must be > 0 seconds for approximate sync (use exact sync otherwise), got {slop_s}")
        self.queue_size = queue_size
        self.slop_ns = None if slop_s is None else int(round(slop_s * NANOSECONDS))
        self.callback = callback
        self.queues: list[dict[int, Any]] = [{} for _ in range(inputs)]
        self.lock = threading.Lock()

    @property
    def approximate(self) -> bool:
        return self.slop_ns is not None

    def add(self, index: int, msg: Any) -> None:
        """Queue msg on input index; call the callback with one message per input when a set matches."""
        stamp = stamp_ns(msg)
        with self.lock:
            queue = self.queues[index]
            queue[stamp] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            matched = self._match_approximate(index, stamp) if self.approximate else self._match_exact()
        for msgs in matched:  # outside the lock: the callback may take its time
            self.callback(*msgs)

    def _match_exact(self) -> list[list[Any]]:
        common = set(self.queues[0]).intersection(*self.queues[1:])
        matched = []
        for stamp in sorted(common):
            matched.append([queue.pop(stamp) for queue in self.queues])
        return matched

    def _match_approximate(self, index: int, stamp: int) -> list[list[Any]]:
        candidates: list[list[int]] = []
        for other, queue in enumerate(self.queues):
            if other == index:
                continue
            near = sorted((s for s in queue if abs(s - stamp) <= self.slop_ns), key=lambda s: abs(s - stamp))
            if not near:
                return []
            candidates.append(near)
        for combination in itertools.product(*candidates):
            stamps = list(combination)
            stamps.insert(index, stamp)
            if max(stamps) - min(stamps) < self.slop_ns:
                return [[queue.pop(s) for queue, s in zip(self.queues, stamps)]]
        return []

    def pending(self) -> list[int]:
        """Messages waiting on each input (for diagnostics)."""
        with self.lock:
            return [len(queue) for queue in self.queues]

    def discard_after(self, stamp: int) -> None:
        """Drop the queued messages stamped after stamp (ns): after the clock jumped back they never match, and
        as the newest of a full queue they would make it drop each new message instead."""
        with self.lock:
            for queue in self.queues:
                for newer in [s for s in queue if s > stamp]:
                    del queue[newer]


class MessageFiltersSynchronizer:
    """The same interface over message_filters' (Approximate)TimeSynchronizer, used when it is installed.

    Our own subscriptions feed plain SimpleFilter inputs, so the node can re-create a subscription (QoS
    change) without rebuilding the synchronizer.
    """

    def __init__(self, inputs: int, queue_size: int, callback: Callable[..., None],
                 slop_s: float | None = None):
        self._settings = (inputs, queue_size, callback, slop_s)
        self.approximate = slop_s is not None
        self._build()

    def _build(self) -> None:
        import message_filters

        inputs, queue_size, callback, slop_s = self._settings
        self.inputs = [message_filters.SimpleFilter() for _ in range(inputs)]
        if slop_s is None:
            self.sync = message_filters.TimeSynchronizer(self.inputs, queue_size)
        else:
            self.sync = message_filters.ApproximateTimeSynchronizer(self.inputs, queue_size, slop_s)
        self.sync.registerCallback(callback)

    def add(self, index: int, msg: Any) -> None:
        self.inputs[index].signalMessage(msg)

    def discard_after(self, stamp: int) -> None:
        """message_filters keeps its queues to itself: start over with empty ones (drops every queued message)."""
        self._build()

    def pending(self) -> list[int]:
        return [len(queue) for queue in getattr(self.sync, "queues", [])]


def message_filters_available() -> bool:
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return False
    return hasattr(message_filters, "ApproximateTimeSynchronizer")


def make_synchronizer(inputs: int, queue_size: int, callback: Callable[..., None], approximate: bool,
                      slop_s: float, use_message_filters: bool | None = None):
    """message_filters' synchronizer when installed (or asked for), else the built-in one.

    Approximate sync with slop 0 would never match anything, so it means exact sync.
    """
    slop = slop_s if approximate and slop_s > 0 else None
    if use_message_filters is None:
        use_message_filters = message_filters_available()
    cls = MessageFiltersSynchronizer if use_message_filters else StampSynchronizer
    return cls(inputs, queue_size, callback, slop)


class NewestSlot:
    """Hands the newest item from producers to one consumer; the older of two untaken items is dropped (counted).

    This is what keeps a slow frame from building a backlog: the worker always gets the latest pair. "Newest"
    is by `order` (the stamp) when given, so a late, older pair does not displace a newer one.
    """

    def __init__(self):
        self._item: Any = None
        self._order: int | None = None
        self._full = False
        self._closed = False
        self._cond = threading.Condition()
        self.dropped = 0
        self.put_count = 0

    def put(self, item: Any, order: int | None = None) -> bool:
        """Offer item; True when an item was dropped (the one waiting, or this one if it is older)."""
        with self._cond:
            self.put_count += 1
            if self._full and order is not None and self._order is not None and order < self._order:
                self.dropped += 1
                return True
            replaced = self._full
            self.dropped += int(replaced)
            self._item, self._order, self._full = item, order, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest item, or None after timeout seconds or once closed."""
        with self._cond:
            if not self._full and not self._closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._order, self._full = self._item, None, None, False
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class CameraInfoMatching:
    """Whether image pairs wait for the CameraInfos of their own stamps or take the newest ones, decided from
    what became of the recent pairs (messages are compared by identity: the synchronizers pass them on).

    A pair is matched when a complete set (images + both infos of their stamps) came for it. Once at least
    `min_pairs` pairs are `settle_s` old, fewer than `enter_below` of them matched means the infos do not come
    with the images (latched or static calibration, stamped differently, or slower than the images): use the
    newest; `leave_at` or more matched means they do again. A busy executor that takes a few images before
    their infos, or a static calibration matching a pair by chance, does not flip the mode.
    """

    def __init__(self, window: int = 30, settle_s: float = 0.5, enter_below: float = 0.5, leave_at: float = 0.9,
                 min_pairs: int = 3):
        self.settle_s, self.min_pairs = settle_s, min_pairs
        self.enter_below, self.leave_at = enter_below, leave_at
        self.pairs: collections.deque = collections.deque(maxlen=window)  # [arrival s, left message, matched]
        self.completed: collections.deque = collections.deque(maxlen=window)  # lefts of sets before their pair
        self.newest = False
        self.lock = threading.Lock()

    def image_pair(self, left: Any, now: float) -> tuple[bool, bool]:
        """Record an image pair; (use the newest infos for it, the mode changed)."""
        with self.lock:
            matched = any(seen is left for seen in self.completed)
            self.pairs.append([now, left, matched])
            return self._update(now)

    def full_set(self, left: Any, now: float) -> tuple[bool, bool]:
        """Record a complete set; (newest mode, the mode changed)."""
        with self.lock:
            entry = next((e for e in self.pairs if e[1] is left), None)
            if entry is not None:
                entry[2] = True
            else:
                self.completed.append(left)
            return self._update(now)

    def _update(self, now: float) -> tuple[bool, bool]:
        settled = [matched for arrival, _, matched in self.pairs if now - arrival >= self.settle_s]
        before = self.newest
        if len(settled) >= self.min_pairs:
            ratio = sum(settled) / len(settled)
            if self.newest and ratio >= self.leave_at:
                self.newest = False
            elif not self.newest and ratio < self.enter_below:
                self.newest = True
        return self.newest, self.newest != before


def stamps_spread_s(stamps: Sequence[int | None]) -> float | None:
    """Newest minus oldest of the known stamps (ns) in seconds, None when fewer than two are known."""
    known = [s for s in stamps if s is not None]
    if len(known) < 2:
        return None
    return (max(known) - min(known)) / NANOSECONDS
