"""Bounded FIFO queues: the one place that decides what a full queue does.

Every queue that holds messages on their way is a :class:`BoundedQueue`: a
connection's send queue, the startup queue of a context that has no
connection yet, and a channel's receive queue. Each is bounded in items
and in bytes (either bound may be None: no limit) and has a policy for a
put that does not fit:

==============  ===========================================================
``BLOCK``       Backpressure. The queue takes the item anyway: a producer
                that can wait must first wait until :meth:`has_room` (the
                queue calls its ``on_room`` hook when a full queue drains to
                its resume mark, or empties); one that must not wait (the
                I/O thread, control messages) overshoots the bound by what
                it puts.
``DROP_OLD``    The oldest items are discarded until the new one fits.
``DROP_NEW``    The new item is discarded.
==============  ===========================================================

Rules:

* One item is always accepted into an empty queue, whatever its size (what
  bounds a single item is the context's ``max_package_size``).
* "Full" means: over a bound, or with no room for the next item a producer
  asked about. Once a queue has been full it stays marked full until it
  drains to its resume mark (3/4 of the byte bound and of the item bound):
  waiting producers are woken in batches, not one item at a time.
  ``on_room`` is called only for a queue that was marked full.
* Every discarded item is counted in ``discarded``. The first discard of an
  episode (discards without an accepted item or a drain in between) is
  logged once, at the level given; the episode ends when an item is accepted
  without a discard, or the queue drains. The message is logged after the
  lock is released: a logging handler may put into this very queue (a pyzo
  kernel's stderr is a FileWrapper, whose sends go through a context's queues).
* An item's size is what ``size_of(item)`` says (default ``len``); the
  queue keeps no per-item sizes (computing them when items leave is
  cheaper than keeping them on the send path).
* All state changes happen under the queue's own lock, so any thread may
  put and take. ``len()`` and truth tests read without the lock (a snapshot).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from enum import Enum
from itertools import islice, repeat, starmap
from typing import Any, Callable, Iterable, Iterator, Sequence

__all__ = ["Policy", "BoundedQueue", "BLOCK", "DROP_OLD", "DROP_NEW"]

log = logging.getLogger("yoton")

#: Runs an iterator to its end, in C (``_drain(starmap(d.popleft, repeat((), n)))``
#: pops n items without a Python-level loop).
_drain: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend


class Policy(Enum):
    """What a :class:`BoundedQueue` does with an item that does not fit."""

    BLOCK = "block"  #: take it; the producer should have waited for room
    DROP_OLD = "old"  #: discard the oldest items to make room
    DROP_NEW = "new"  #: discard the new item

    @classmethod
    def for_discard_mode(cls, mode: str) -> Policy:
        """The drop policy for a ``queue_params`` discard mode ('old' or 'new')."""
        return cls.DROP_OLD if mode == "old" else cls.DROP_NEW


BLOCK, DROP_OLD, DROP_NEW = Policy.BLOCK, Policy.DROP_OLD, Policy.DROP_NEW


class BoundedQueue:
    """A FIFO bounded in items and bytes, with a :class:`Policy` for when it is full.

    ``max_items`` / ``max_bytes``: the bounds (None: unbounded). ``policy``:
    see the module docstring; it may be changed at any time (a connection
    whose peer stopped reading switches from BLOCK to a drop policy).
    ``size_of(item)`` gives an item's size in bytes (default ``len``), and
    ``sizes_of(items)`` (optional) the total of a list of them, faster.
    ``name`` appears in log messages; ``log_level`` is the level of the
    once-per-episode discard message. ``on_room`` (optional, no arguments)
    is called, without the lock, when a queue marked full drains to its
    resume mark or runs empty: producers waiting for room may look again.
    """

    __slots__ = (
        "_items",
        "_bytes",
        "_lock",
        "max_items",
        "max_bytes",
        "policy",
        "name",
        "log_level",
        "on_room",
        "discarded",
        "_full",
        "_dropping",
        "_note",
        "_resume_items",
        "_resume_bytes",
        "_size_of",
        "_sizes_of",
    )

    def __init__(
        self,
        max_items: int | None = None,
        max_bytes: int | None = None,
        policy: Policy = BLOCK,
        *,
        name: str = "queue",
        log_level: int = logging.WARNING,
        on_room: Callable[[], object] | None = None,
        size_of: Callable[[Any], int] = len,
        sizes_of: Callable[[Sequence[Any]], int] | None = None,
    ) -> None:
        self._items: deque = deque()
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
        self._full = False  # was full and has not drained to the resume mark since
        self._dropping = False  # in a discard episode (logged already)
        self._note: tuple | None = None  # the discard episode to log, once the lock is released
        self._size_of = size_of
        self._sizes_of = sizes_of or (lambda items: sum(map(size_of, items)))

    def __repr__(self) -> str:
        return f"<BoundedQueue {self.name!r} {len(self._items)} items {self._bytes} bytes {self.policy.value}>"

    # -- reading the state (no lock: snapshots) ------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[Any]:
        """Iterate over a snapshot of the items, oldest first."""
        with self._lock:
            return iter(list(self._items))

    @property
    def items(self) -> deque[Any]:
        """The items themselves (a deque, oldest first): for a quick truth test
        or a look without the lock. Never change it: use the methods."""
        return self._items

    @property
    def bytes(self) -> int:
        """Bytes held (the sum of the items' sizes)."""
        return self._bytes

    @property
    def full(self) -> bool:
        """Whether the queue is over a bound, or was marked full and has not yet
        drained to its resume mark (BLOCK queues: producers should wait)."""
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

        A "no" marks the queue full: ``on_room`` is then called once it has
        drained to its resume mark (or runs empty).
        """
        if not self._items:
            return True
        with self._lock:
            if self._full or self._over(size):
                if self._items:
                    self._full = True
                return not self._items
            return True

    def statistics(self) -> dict:
        """``items``, ``bytes``, the bounds, ``policy`` and ``discarded`` (a snapshot)."""
        return {
            "items": len(self._items),
            "bytes": self._bytes,
            "max_items": self.max_items,
            "max_bytes": self.max_bytes,
            "policy": self.policy.value,
            "discarded": self.discarded,
        }

    # -- putting -------------------------------------------------------------------

    def put(self, item: Any) -> bool:
        """Add ``item`` by the policy; return False if it was discarded."""
        size = self._size_of(item)
        with self._lock:
            before = self.discarded
            accepted = not self._over(size) or self._make_room(size)
            if accepted:
                self._items.append(item)
                self._bytes += size
                self._after_put(before)
            note, self._note = self._note, None
        if note is not None:
            self._log_discard(note)
        return accepted

    def put_many(self, items: Sequence[Any], total: int | None = None) -> int:
        """Add ``items`` (of ``total`` bytes, if the caller knows) in order, by the
        policy; return how many items were discarded (of these or of older ones)."""
        if total is None:
            total = self._sizes_of(items)
        with self._lock:
            if self.policy is BLOCK:  # (the common case: all in, mark full if at a bound)
                self._items.extend(items)
                self._bytes += total
                if self._over(0):  # (the same test as `full`: one meaning of full)
                    self._full = True
                return 0
            queue = self._items
            count, have = len(items), len(queue)
            limit = self.max_items
            if (not have and count <= 1) or (
                (limit is None or have + count <= limit)
                and ((limit := self.max_bytes) is None or self._bytes + total <= limit)
            ):  # (the common case: all fit, nothing discarded; one item always fits an empty queue)
                queue.extend(items)
                self._bytes += total
                self._dropping = False  # (accepted without a discard: an episode is over)
                return 0
            before = self.discarded  # (item by item, making room by the policy)
            append, size_of = queue.append, self._size_of
            for item in items:
                size = size_of(item)
                if self._over(size) and not self._make_room(size):
                    continue
                append(item)
                self._bytes += size
            self._after_put(before)
            dropped = self.discarded - before
            note, self._note = self._note, None
        if note is not None:
            self._log_discard(note)
        return dropped

    def extend(self, items: Sequence[Any], total: int) -> bool:
        """Add ``items`` of ``total`` bytes as :meth:`put_many` does; return
        whether the queue is :attr:`full` afterwards (should its producers wait?).

        The send path of a connection: one call where there were three.
        """
        with self._lock:
            if self.policy is BLOCK:  # (put_many's common case, and `full`, inline)
                queue = self._items
                queue.extend(items)
                self._bytes += total
                if not self._full and queue:
                    limit = self.max_bytes
                    if limit is not None and self._bytes > limit:
                        self._full = True
                    else:
                        limit = self.max_items
                        if limit is not None and len(queue) >= limit:
                            self._full = True
                return self._full
        self.put_many(items, total)
        return self.full

    def _make_room(self, size: int) -> bool:
        """Apply the policy to an item that does not fit (under the lock);
        return whether it may go in."""
        policy = self.policy
        if policy is BLOCK:
            return True
        if policy is DROP_NEW:
            self._discard(1)
            return False
        items, size_of = self._items, self._size_of
        dropped = 0
        while items and self._over(size):
            self._bytes -= size_of(items.popleft())
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
            self._note = (len(self._items), self._bytes, self.policy)  # (logged by the caller, unlocked)

    def _log_discard(self, note: tuple) -> None:
        items, nbytes, policy = note
        log.log(
            self.log_level,
            "yoton: %s is full (%d items, %d bytes): discarding the %s items (counted; logged once until it drains)",
            self.name,
            items,
            nbytes,
            "oldest" if policy is DROP_OLD else "newest",
        )

    # -- taking --------------------------------------------------------------------

    def popleft(self) -> Any:
        """Remove and return the oldest item; IndexError if empty."""
        with self._lock:
            item = self._items.popleft()
            self._bytes -= self._size_of(item)
            room = self._after_take() if self._full or self._dropping else None
        if room is not None:
            room()
        return item

    def put_back(self, items: Sequence[Any]) -> None:
        """Return ``items``, taken from the front a moment ago, to the front in
        their order (a reader interrupted before it could hand them on); never
        refused, dropped or counted as new."""
        if not items:
            return
        with self._lock:
            self._items.extendleft(reversed(items))
            self._bytes += sum(map(self._size_of, items))

    def take(
        self,
        count: int | None = None,
        sink: Callable[[list[Any], int], object] | None = None,
        max_bytes: int | None = None,
    ) -> list[Any]:
        """Remove and return up to ``count`` oldest items (all if None), in order;
        with ``max_bytes``, no more items than fit in that many bytes (but at
        least one).

        ``sink``, if given, is called with them and their size in bytes under
        the lock, before they leave the queue: whoever looks at the queue and
        at the sink's target never sees the items in neither.
        """
        with self._lock:
            items = self._items
            n = len(items) if count is None else min(count, len(items))
            if not n:
                return []
            if n == len(items) and (max_bytes is None or self._bytes <= max_bytes):
                out = list(items)
                if sink is not None:
                    sink(out, self._bytes)
                items.clear()
                self._bytes = 0
            else:  # (a batch from a longer queue: one slice, one size sum, the pops in C)
                out = list(islice(items, n))
                taken = self._sizes_of(out)
                if max_bytes is not None and n > 1 and taken > max_bytes:
                    size_of, budget, fit = self._size_of, max_bytes, 0
                    for item in out:
                        budget -= size_of(item)
                        if budget < 0:
                            break
                        fit += 1
                    n = max(1, fit)
                    del out[n:]
                    taken = self._sizes_of(out)
                if sink is not None:
                    sink(out, taken)
                _drain(starmap(items.popleft, repeat((), n)))
                self._bytes -= taken
            room = self._after_take() if self._full or self._dropping else None
        if room is not None:
            room()
        return out

    def take_while(self, keep: Callable[[Any], bool]) -> list[Any]:
        """Remove and return the oldest items for which ``keep(item)`` is true, stopping at the first that is not."""
        with self._lock:
            items, out = self._items, []
            while items and keep(items[0]):
                out.append(items.popleft())
            if out:
                self._bytes -= self._sizes_of(out)
            room = self._after_take() if out and (self._full or self._dropping) else None
        if room is not None:
            room()
        return out

    def peek(self) -> Any:
        """The oldest item (not removed); IndexError if empty."""
        return self._items[0]

    def _after_take(self) -> Callable[[], object] | None:
        # Under the lock, for a queue marked full or dropping: did it drain far
        # enough to let producers in? Returns the on_room hook to call (without
        # the lock), or None.
        if self._items and not self.drained():
            return None
        self._dropping = False
        if not self._full:
            return None
        self._full = False
        return self.on_room

    def clear(self) -> int:
        """Remove every item without counting it; return how many there were."""
        return self._empty(False)

    def discard_all(self) -> int:
        """Remove every item and count it as discarded; return how many there were."""
        return self._empty(True)

    def _empty(self, count: bool) -> int:
        with self._lock:
            n = len(self._items)
            if count:
                self.discarded += n
            self._items.clear()
            self._bytes = 0
            room = self.on_room if self._full else None
            self._full = self._dropping = False
        if room is not None:
            room()
        return n
