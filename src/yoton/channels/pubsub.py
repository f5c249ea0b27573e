"""Publish/subscribe: PubChannel, SubChannel and select_sub_channel.

A PubChannel broadcasts on ``base.type.pub-sub``; every SubChannel on that
slot, in every context of the network, queues the message.

Sync mode (backpressure): a SubChannel in sync mode sends ``full`` on
``base.type.sub-pub`` when more than :data:`FULL_MARK` messages are waiting
and ``ok`` when it has been read down below :data:`OK_MARK`; it repeats its
status every :data:`REPEAT_STATUS` seconds. A PubChannel that has heard
``full`` from any subscriber waits (up to a second per message) before each
send until all say ``ok``; a ``full`` not repeated for
:data:`BLOCK_EXPIRY` seconds is forgotten, so a vanished subscriber cannot
block a publisher for ever.
"""

from __future__ import annotations

import threading
import time

from ..messages import BinaryMessageType
from .base import BaseChannel

__all__ = ["PubChannel", "SubChannel", "select_sub_channel"]

FULL_MARK = 32
OK_MARK = 16
REPEAT_STATUS = 4.0
BLOCK_EXPIRY = 10.0
MAX_BLOCK_PER_SEND = 1.0


class PubChannel(BaseChannel):
    """The sending end of publish/subscribe: every message goes to all SubChannels on the slot."""

    _pattern_out = "pub-sub"
    _pattern_in = "sub-pub"

    def __init__(self, context, slot_base: str, message_type=None):
        super().__init__(context, slot_base, message_type)
        self._blockers: dict = {}  # source id -> time of its last 'full'
        self._unblocked = threading.Condition(threading.Lock())

    def send(self, message) -> None:
        """Publish ``message`` to all subscribers (queued; returns at once).

        Raises ``ValueError`` for a message the channel's type cannot encode
        or one larger than the context's ``max_package_size``, and
        :class:`~yoton.errors.ChannelClosedError` (an ``OSError``) when
        the channel is closed. Blocks (at most a second) while a subscriber
        in sync mode reports that it is full; otherwise a network or peer too
        slow to keep up does not block it: the context's send queues are
        bounded by ``max_queue_bytes`` and discard (counted) when full.
        """
        if self._blockers:
            self._wait_unblocked()
        self._send(message)

    def _wait_unblocked(self) -> None:
        deadline = time.monotonic() + MAX_BLOCK_PER_SEND
        with self._unblocked:
            while self._blockers and not self._closed:
                now = time.monotonic()
                for source, since in list(self._blockers.items()):
                    if now - since > BLOCK_EXPIRY:
                        del self._blockers[source]
                if not self._blockers or now >= deadline:
                    return
                self._unblocked.wait(deadline - now)

    def _receive(self, pkg) -> None:
        status = bytes(pkg.data)
        with self._unblocked:
            if status == b"full":
                self._blockers[pkg.source_id] = time.monotonic()
            elif status == b"ok":
                self._blockers.pop(pkg.source_id, None)
                if not self._blockers:
                    self._unblocked.notify_all()

    def close(self) -> None:
        """Close the channel; sending afterwards raises ``ChannelClosedError``."""
        super().close()
        with self._unblocked:
            self._unblocked.notify_all()


class SubChannel(BaseChannel):
    """The receiving end of publish/subscribe.

    Iterating over it yields the messages pending at that time. Use
    :func:`select_sub_channel` to read several SubChannels in send order.
    """

    _pattern_out = "sub-pub"
    _pattern_in = "pub-sub"

    def __init__(self, context, slot_base: str, message_type=None):
        super().__init__(context, slot_base, message_type)
        self._sync = False
        self._said_full = False
        self._repeat = None
        self._select_group: tuple = ()
        self._per_package = type(self)._receive is not SubChannel._receive

    def recv(self, block=True):
        """Return the next message.

        ``block`` True waits for one, False returns at once, a number waits at
        most that many seconds. Returns the empty message (``''``, ``b''``
        or None) when nothing came, or when the channel is closed and empty.
        """
        pkg = self._wait_package(block)
        if self._said_full:
            self._check_ok()
        return self._empty() if pkg is None else self._decode(pkg)

    def recv_all(self) -> list:
        """Return all pending messages (possibly an empty list)."""
        queue, out = self._queue, []
        while queue:
            try:
                out.append(queue.popleft())
            except IndexError:
                break
        if self._said_full:
            self._check_ok()
        kind = type(self._message_type)
        if kind is BinaryMessageType:  # (its decoding inline: no call per message)
            return [pkg.data if type(pkg.data) is bytes else bytes(pkg.data) for pkg in out]
        decode = self._message_type.message_from_bytes
        return [decode(pkg.data) for pkg in out]

    def recv_selected(self) -> list:
        """Return the pending messages older than any pending in the other channels
        passed to the last :func:`select_sub_channel` call that chose this one."""
        limit = min((ch._queue[0].recv_seq for ch in self._select_group if ch._queue), default=None)
        queue, out = self._queue, []
        while queue and (limit is None or queue[0].recv_seq < limit):
            out.append(queue.popleft())
        if self._said_full:
            self._check_ok()
        kind = type(self._message_type)
        if kind is BinaryMessageType:  # (its decoding inline: no call per message)
            return [pkg.data if type(pkg.data) is bytes else bytes(pkg.data) for pkg in out]
        decode = self._message_type.message_from_bytes
        return [decode(pkg.data) for pkg in out]

    def __iter__(self):
        return self

    def __next__(self):
        if not self._queue:
            raise StopIteration
        return self.recv(False)

    def next(self):
        """Return the next pending message, or raise StopIteration if there is none."""
        return self.__next__()

    def set_sync_mode(self, value: bool) -> None:
        """Turn sync mode (backpressure on the publishers) on or off.

        In sync mode, publishers of this slot are slowed down while more than
        32 messages wait here. It works without the yoton event loop.
        """
        value = bool(value)
        if value == self._sync:
            return
        self._sync = value
        if value:
            self._repeat = self._context._ensure_loop().call_later(REPEAT_STATUS, self._repeat_status)
            if len(self._queue) > FULL_MARK:
                self._say(True)
        else:
            if self._repeat is not None:
                self._context._ensure_loop().cancel(self._repeat)
                self._repeat = None
            if self._said_full:
                self._say(False)

    def _say(self, full: bool) -> None:
        self._said_full = full
        if not self._closed:
            self._send("full" if full else "ok")

    def _check_ok(self) -> None:
        if self._said_full and len(self._queue) < OK_MARK:
            self._say(False)

    def _repeat_status(self) -> None:
        if self._sync and not self._closed:
            self._say(self._said_full)
            self._repeat = self._context._ensure_loop().call_later(REPEAT_STATUS, self._repeat_status)

    def _receive(self, pkg) -> None:
        self._queue_many((pkg,))
        self._check_full()

    def _receive_many(self, pkgs) -> None:
        if self._per_package:  # a subclass hooks _receive: one call per package
            super()._receive_many(pkgs)
            return
        self._queue_many(pkgs)
        self._check_full()

    def _check_full(self) -> None:
        if self._sync and not self._said_full and len(self._queue) > FULL_MARK:
            self._say(True)

    def _send(self, message, dest_id: int = 0, dest_seq: int = 0) -> None:
        # Status messages are text on the wire, whatever this channel's type.
        if self._closed:
            return
        self._context._send(self._slot_out, message.encode("ascii"), dest_id, dest_seq)

    def close(self) -> None:
        """Close the channel; pending messages can still be received."""
        if self._repeat is not None and self._context._loop is not None:
            self._context._loop.cancel(self._repeat)
        self._sync = False
        super().close()


def select_sub_channel(*channels):
    """Return the SubChannel holding the oldest pending message, or None.

    Then call ``recv_selected()`` on it to get its messages older than the
    oldest pending in the others; repeating this reads all the channels in
    the order the messages arrived.
    """
    best, best_seq = None, None
    for channel in channels:
        if not isinstance(channel, SubChannel):
            raise ValueError(f"select_sub_channel takes SubChannels, not {type(channel).__name__}")
        queue = channel._queue
        if queue:
            seq = queue[0].recv_seq
            if best_seq is None or seq < best_seq:
                best, best_seq = channel, seq
    if best is not None:
        best._select_group = tuple(ch for ch in channels if ch is not best)
    return best
