"""Bounded FIFO queues: the one place that decides what a full queue does.

Every queue that holds messages on their way is a :class:`BoundedQueue`: a
connection's send queue, the startup queue of a context that has no
connection yet, and a channel's receive queue. Each is bounded in items
and in bytes (either bound may be None: no limit) and has a policy for a
put that does not fit:

==============  ===========================================================
``BLOCK``       Backpressure. The queue takes the item anyway: a producer
                that can wait must first wait until :meth:`has_room` (the
                queue calls its ``on_room`` hook when a full queue drains
                below its resume mark, or empties); one that must not wait
                (the I/O thread, control messages) overshoots the bound by
                what it puts.
``DROP_OLD``    The oldest items are discarded until the new one fits.
``DROP_NEW``    The new item is discarded.
==============  ===========================================================

Rules:

* One item is always accepted into an empty queue, whatever its size (what
  bounds a single item is the context's ``max_package_size``).
* "Full" means: over a bound, or with no room for the next item. Once a
  ``BLOCK`` queue has been full it stays marked full until it drains to its
  resume mark (3/4 of the byte bound and of the item bound): waking
  waiting producers in batches, not one item at a time.
* Every discarded item is counted in ``discarded``. The first discard of an
  episode (discards without an accepted item or a drain in between) is
  logged once, at the level given; the episode ends when an item is accepted
  without a discard, or the queue drains.
* The consumer reports progress with :meth:`note_progress` (e.g. bytes that
  left for the network); :meth:`stalled` tells whether a full queue has seen
  none for a while (its consumer is gone or stopped).
* All state changes happen under the queue's own lock, so any thread may
  put and take. ``len()`` and truth tests read without the lock (a snapshot).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from enum import Enum
from itertools import islice, repeat

__all__ = ["Policy", "BoundedQueue", "BLOCK", "DROP_OLD", "DROP_NEW"]

log = logging.getLogger("yoton")


class Policy(Enum):
    """What a :class:`BoundedQueue` does with an item that does not fit."""

    BLOCK = "block"  #: take it; the producer should have waited for room
    DROP_OLD = "old"  #: discard the oldest items to make room
    DROP_NEW = "new"  #: discard the new item

    @classmethod
    def for_discard_mode(cls, mode: str) -> "Policy":
        """The drop policy for a ``queue_params`` discard mode ('old' or 'new')."""
        return cls.DROP_OLD if mode == "old" else cls.DROP_NEW


BLOCK, DROP_OLD, DROP_NEW = Policy.BLOCK, Policy.DROP_OLD, Policy.DROP_NEW


class BoundedQueue:
    """A FIFO bounded in items and bytes, with a :class:`Policy` for when it is full.

    ``max_items`` / ``max_bytes``: the bounds (None: unbounded). ``policy``:
    see the module docstring; it may be changed at any time (a connection
    whose peer stopped reading switches from BLOCK to a drop policy).
    ``name`` appears in log messages; ``log_level`` is the level of the
    once-per-episode discard message. ``on_room`` (optional, no arguments)
    is called, without the lock, when a full queue drains to its resume mark
    or runs empty: producers waiting for room can look again.
    """

    __slots__ = ("_items", "_sizes", "_bytes", "_lock", "max_items", "max_bytes", "policy", "name",
                 "log_level", "on_room", "discarded", "_full", "_dropping", "_resume_items",
                 "_resume_bytes", "last_progress")

    def __init__(self, max_items: int | None = None, max_bytes: int | None = None,
                 policy: Policy = BLOCK, *, name: str = "queue", log_level: int = logging.WARNING,
                 on_room=None):
        self._items: deque = deque()
        self._sizes: deque = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._resume_items = None if max_items is None else max_items * 3 // 4
        self._resume_bytes = None if max_bytes is None else max_bytes * 3 // 4
        self.policy = policy
        self.name = name
        self.log_level = log_level
        self.on_room = on_room
        self.discarded = 0
        self._full = False  # BLOCK: was full and has not drained to the resume mark since
        self._dropping = False  # in a discard episode (logged already)
        self.last_progress = time.monotonic()

    def __repr__(self):
        return (f"<BoundedQueue {self.name!r} {len(self._items)} items {self._bytes} bytes "
                f"{self.policy.value}>")

    # -- reading the state (no lock: snapshots) ------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self):
        """Iterate over a snapshot of the items, oldest first."""
        with self._lock:
            return iter(list(self._items))

    @property
    def bytes(self) -> int:
        """Bytes held (the sum of the sizes given when the items were put)."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether the queue is over a bound, or was and has not yet drained
        to its resume mark (BLOCK queues: producers should wait)."""
        return self._full or self._over(0)

    def _over(self, size: int) -> bool:
        # Would an item of `size` bytes go over a bound? (Never for an empty queue.)
        items = self._items
        if not items:
            return False
        limit = self.max_items
        if limit is not None and len(items) >= limit:
            return True
        limit = self.max_bytes
        return limit is not None and self._bytes + size > limit

    def drained(self) -> bool:
        """Whether the queue is at or below its resume mark (3/4 of its bounds)."""
        resume = self._resume_bytes
        if resume is not None and self._bytes > resume:
            return False
        resume = self._resume_items
        return resume is None or len(self._items) <= resume

    def has_room(self, size: int = 0) -> bool:
        """Whether an item of ``size`` bytes fits now (and the queue is not marked full).

        For a BLOCK queue, a "no" marks the queue full: ``on_room`` is then
        called once it has drained to its resume mark (or runs empty).
        """
        if not self._items:
            return True
        with self._lock:
            if self._full or self._over(size):
                if self.policy is BLOCK and self._items:
                    self._full = True
                return not self._items
            return True

    def stalled(self, timeout: float, now: float | None = None) -> bool:
        """Whether the queue is full and its consumer made no progress for ``timeout`` s."""
        if not self.full:
            return False
        return (time.monotonic() if now is None else now) - self.last_progress >= timeout

    def statistics(self) -> dict:
        """``items``, ``bytes``, the bounds, ``policy`` and ``discarded`` (a snapshot)."""
        return {"items": len(self._items), "bytes": self._bytes, "max_items": self.max_items,
                "max_bytes": self.max_bytes, "policy": self.policy.value, "discarded": self.discarded}

    # -- putting -------------------------------------------------------------------

    def put(self, item, size: int) -> bool:
        """Add ``item`` of ``size`` bytes by the policy; return False if it was discarded."""
        with self._lock:
            before = self.discarded
            if self._over(size) and not self._make_room(size):
                return False
            self._items.append(item)
            self._sizes.append(size)
            self._bytes += size
            self._after_put(before)
            return True

    def put_many(self, items, sizes, total: int) -> int:
        """Add ``items`` (sizes in ``sizes``, adding up to ``total``) in order, by the
        policy; return how many items were discarded (of these or of older ones)."""
        with self._lock:
            before = self.discarded
            if self.policy is BLOCK or not self._over_by(len(items), total):
                self._items.extend(items)
                self._sizes.extend(sizes)
                self._bytes += total
            else:  # item by item, making room by the policy
                append, append_size = self._items.append, self._sizes.append
                for item, size in zip(items, sizes):
                    if self._over(size) and not self._make_room(size):
                        continue
                    append(item)
                    append_size(size)
                    self._bytes += size
            self._after_put(before)
            return self.discarded - before

    def _over_by(self, count: int, total: int) -> bool:
        # Would `count` more items of `total` bytes go over a bound? (One item
        # into an empty queue never does.)
        have = len(self._items)
        if not have and count <= 1:
            return False
        limit = self.max_items
        if limit is not None and have + count > limit:
            return True
        limit = self.max_bytes
        return limit is not None and self._bytes + total > limit

    def _make_room(self, size: int) -> bool:
        """Apply the policy to an item that does not fit (under the lock);
        return whether it may go in."""
        policy = self.policy
        if policy is BLOCK:
            return True
        if policy is DROP_NEW:
            self._discard(1)
            return False
        items, sizes = self._items, self._sizes
        dropped = 0
        while items and self._over(size):
            items.popleft()
            self._bytes -= sizes.popleft()
            dropped += 1
        self._discard(dropped)
        return True

    def _after_put(self, discarded_before: int) -> None:
        if self.policy is BLOCK and self._over(0):
            self._full = True
        if self._dropping and self.discarded == discarded_before:
            self._dropping = False  # accepted without a discard: the episode is over

    def _discard(self, count: int) -> None:
        if not count:
            return
        self.discarded += count
        if not self._dropping:
            self._dropping = True
            log.log(self.log_level, "yoton: %s is full (%d items, %d bytes): discarding the %s "
                    "items (counted; logged once until it drains)", self.name, len(self._items),
                    self._bytes, "oldest" if self.policy is DROP_OLD else "newest")

    # -- taking --------------------------------------------------------------------

    def popleft(self):
        """Remove and return the oldest item; IndexError if empty."""
        with self._lock:
            item = self._items.popleft()
            self._bytes -= self._sizes.popleft()
            room = self._after_take()
        if room is not None:
            room()
        return item

    def take(self, count: int | None = None, sink=None, max_bytes: int | None = None) -> list:
        """Remove and return up to ``count`` oldest items (all if None), in order;
        with ``max_bytes``, no more items than fit in that many bytes (but at
        least one).

        ``sink``, if given, is called with them under the lock, before they
        leave the queue: whoever looks at the queue and at the sink's target
        never sees the items in neither.
        """
        with self._lock:
            items, sizes = self._items, self._sizes
            n = len(items) if count is None else min(count, len(items))
            if max_bytes is not None and n > 1 and self._bytes > max_bytes:
                budget, fit = max_bytes, 0
                for size in islice(sizes, n):
                    budget -= size
                    if budget < 0:
                        break
                    fit += 1
                n = max(1, fit)
            if n == len(items):
                out = list(items)
                if sink is not None:
                    sink(out)
                items.clear()
                sizes.clear()
                self._bytes = 0
            else:
                out = list(islice(items, n))
                if sink is not None:
                    sink(out)
                popleft, sizeleft = items.popleft, sizes.popleft
                for _ in repeat(None, n):
                    popleft()
                self._bytes -= sum(sizeleft() for _ in repeat(None, n))
            room = self._after_take() if n else None
        if room is not None:
            room()
        return out

    def take_while(self, keep) -> list:
        """Remove and return the oldest items for which ``keep(item)`` is true, stopping at the first that is not."""
        with self._lock:
            items, sizes, out = self._items, self._sizes, []
            while items and keep(items[0]):
                out.append(items.popleft())
                self._bytes -= sizes.popleft()
            room = self._after_take() if out else None
        if room is not None:
            room()
        return out

    def peek(self):
        """The oldest item (not removed); IndexError if empty."""
        return self._items[0]

    def _after_take(self):
        # Under the lock: did the queue drain far enough to let producers in?
        # Returns the on_room hook to call (without the lock), or None.
        self.last_progress = time.monotonic()
        if self._full:
            if self._items and not self.drained():
                return None
            self._full = False
        elif self._items:
            return None
        self._dropping = False
        return self.on_room

    def note_progress(self) -> None:
        """The consumer made progress (e.g. bytes taken earlier left for the network)."""
        self.last_progress = time.monotonic()

    def clear(self) -> int:
        """Remove every item without counting it; return how many there were."""
        with self._lock:
            n = len(self._items)
            self._items.clear()
            self._sizes.clear()
            self._bytes = 0
            self._full = False
            self._dropping = False
            room = self.on_room if n else None
        if room is not None:
            room()
        return n

    def discard_all(self) -> int:
        """Remove every item and count it as discarded; return how many there were."""
        with self._lock:
            n = len(self._items)
            self.discarded += n
            self._items.clear()
            self._sizes.clear()
            self._bytes = 0
            self._full = False
            room = self.on_room if n else None
        if room is not None:
            room()
        return n
