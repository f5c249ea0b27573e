"""Publish/subscribe: PubChannel, SubChannel and select_sub_channel.

A PubChannel broadcasts on ``base.type.pub-sub``; every SubChannel on that
slot, in every context of the network, queues the message.

Flow control:

* A subscriber that is not in sync mode keeps at most the context's
  ``queue_params`` count of messages (and ``max_queue_bytes``); beyond that
  it discards by the discard mode, counted in ``statistics()['discarded']``.
  Its publishers are not slowed down.
* Sync mode makes the slot lossless end to end. A SubChannel in sync mode
  sends ``full`` on ``base.type.sub-pub`` when more than :data:`FULL_MARK`
  messages are waiting and ``ok`` when it has been read down below
  :data:`OK_MARK`, and repeats its status every :data:`REPEAT_STATUS`
  seconds (yoton 2.2's wire messages). A PubChannel that has heard ``full``
  waits before each send until every such subscriber says ``ok`` -- for as
  long as the connection the ``full`` came on is connected and not timed
  out, and the status keeps being repeated (a ``full`` not repeated for
  :data:`BLOCK_EXPIRY` seconds is forgotten). So a subscriber that
  disappears releases its publishers within its connection's timeout.
* What is already on its way when the subscriber says ``full`` still
  arrives; a sync-mode subscriber never discards it. When its queue reaches
  its bounds it stops reading from the connection until it has room, and
  TCP slows the senders down (other channels on that connection wait too).
"""

from __future__ import annotations

import threading
import time
from threading import get_ident
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import WouldBlock
from ..messages import BinaryMessageType
from ..queues import BLOCK, Policy
from .base import BaseChannel

if TYPE_CHECKING:
    from ..context import Context
    from ..messages import MessageType
    from ..transport.link import Link
    from ..wire.frames import Package

__all__ = ["PubChannel", "SubChannel", "select_sub_channel"]

FULL_MARK = 32
OK_MARK = 16
REPEAT_STATUS = 4.0
BLOCK_EXPIRY = 10.0
#: A PubChannel waits for at most this many full subscribers; more 'full's
#: are ignored (a peer inventing subscribers cannot grow the map for ever).
MAX_BLOCKERS = 1024


def _deadline(block: bool | float) -> float | None:
    """The monotonic deadline for a ``block`` argument (None: no limit or no wait)."""
    if block is True or block is False:
        return None
    if isinstance(block, bool) or not isinstance(block, (int, float)):
        raise ValueError(f"block must be True, False or a number of seconds, not {block!r}")
    return time.monotonic() + block


_MAIN_ID = threading.main_thread().ident  # (the thread Ctrl-C is raised in)


class PubChannel(BaseChannel):
    """The sending end of publish/subscribe: every message goes to all SubChannels on the slot."""

    _pattern_out = "pub-sub"
    _pattern_in = "sub-pub"

    def __init__(
        self, context: Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        # (state first: packages may arrive on the loop side as soon as the base class registers us)
        # source id -> (connection its 'full' came on, when it last said so)
        self._blockers: dict = {}
        self._unblocked = threading.Condition(threading.Lock())
        self._plain_send = type(self)._send is BaseChannel._send  # (a subclass may hook _send)
        super().__init__(context, slot_base, message_type)

    def send(self, message: Any, block: bool | float = True) -> None:
        """Publish ``message`` to all subscribers.

        Returns once the message is queued for every connection. ``block``
        says how long to wait when the way is not free -- a send queue is
        full (the peer is slower than this sender), or a subscriber in sync
        mode says it is full: True (default) as long as it takes, False not
        at all, a number at most that many seconds; then
        :class:`~yoton.errors.WouldBlock` is raised and nothing is sent. A
        peer that has taken nothing for its connection's ``timeout`` does
        not hold the sender (see the README's "Flow control").

        Raises ``ValueError`` for a message the channel's type cannot encode
        or one larger than the context's ``max_package_size``, and
        :class:`~yoton.errors.ChannelClosedError` (an ``OSError``) when the
        channel is closed.
        """
        if self._blockers:
            deadline = _deadline(block)
            self._wait_unblocked(block, deadline)
            if deadline is not None:
                block = max(0.0, deadline - time.monotonic())
        if self._closed or not self._plain_send:
            self._send(message, 0, 0, block)
            return
        # BaseChannel._send, inline (one Python call less per message)
        body = message if self._raw_bytes and type(message) is bytes else self._to_bytes(message)
        if body:  # empty messages are not sent (yoton 2.2 rule)
            self._router.send(self._slot_out, body, 0, 0, block)
            self._count_out += 1

    def _wait_unblocked(self, block: bool | float, deadline: float | None) -> None:
        with self._unblocked:
            while not self._closed:
                now = time.monotonic()
                wait = self._blocked_for(now)
                if wait is None:
                    return
                if block is False or (deadline is not None and now >= deadline):
                    raise WouldBlock(
                        f"a subscriber in sync mode on {self._slot_out_name!r} is full"
                        + ("" if block is False else f"; waited {block} s")
                    )
                if deadline is not None:
                    wait = min(wait, deadline - now)
                self._unblocked.wait(wait)

    def _blocked_for(self, now: float) -> float | None:
        """Forget blockers that no longer count; return how long to wait before
        looking again (None: not blocked). Under _unblocked."""
        wait = None
        listens = self._router.link_listens
        for source, (link, since) in list(self._blockers.items()):
            listening, timeout = listens(link)
            if now - since > BLOCK_EXPIRY or not listening:
                del self._blockers[source]
                continue
            # (a timeout or close shows up within half the connection's timeout)
            left = min(since + BLOCK_EXPIRY - now, timeout / 2)
            wait = left if wait is None else min(wait, left)
        return wait

    def _receive(self, pkg: Package) -> None:
        status = bytes(pkg.data)
        link = self._delivering
        with self._unblocked:
            if status == b"full" and link is not None:
                blockers = self._blockers
                if len(blockers) < MAX_BLOCKERS or pkg.source_id in blockers:
                    blockers[pkg.source_id] = (link, time.monotonic())
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

    def __init__(
        self, context: Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        # (state first: packages may arrive on the loop side as soon as the base class registers us)
        self._sync = False
        self._said_full = False
        self._repeat: list | None = None
        self._select_group: tuple = ()
        self._per_package = type(self)._receive is not SubChannel._receive
        super().__init__(context, slot_base, message_type)
        self._pending = self._queue.items  # (the queue's deque, for a truth test and len() without a call)
        self._raw_in = self._raw_bytes and type(self)._decode is BaseChannel._decode

    def recv(self, block: bool | float | None = True) -> Any:
        """Return the next message.

        ``block`` True waits for one, False returns at once, a number waits at
        most that many seconds. Returns the empty message (``''``, ``b''``
        or None) when nothing came, or when the channel is closed and empty.
        """
        if get_ident() == _MAIN_ID:  # (Ctrl-C lands here: a message taken must not be lost to it)
            return self._recv_in_main(block)
        items = self._pending
        if items:  # (one is waiting: the common case under load, taken with fewer calls)
            try:
                pkg = self._queue.popleft()
            except IndexError:  # (taken meanwhile by another reader)
                pkg = self._wait_package(block)
        else:
            pkg = self._wait_package(block)
        if self._said_full and len(items) < OK_MARK:
            self._say(False)
        if pkg is None:
            return self._empty()
        if self._raw_in:  # (BINARY's decoding, inline)
            data = pkg.data
            return data if type(data) is bytes else bytes(data)
        return self._decode(pkg)

    def _recv_in_main(self, block: bool | float | None) -> Any:
        # The wait may be interrupted (nothing is taken yet). Taking and
        # decoding are shielded: a Ctrl-C that comes meanwhile puts the
        # message back and is raised as the block ends.
        items = self._pending
        if not items and not self._wait_ready(block):
            if self._said_full and len(items) < OK_MARK:
                self._say(False)
            return self._empty()
        router = self._router
        on = router.shield_enter()
        pkg = None
        value = None
        try:
            try:
                pkg = self._queue.popleft()
            except IndexError:  # (taken meanwhile by another reader)
                value = self._empty()
            else:
                if items and self._waiter.others:
                    self._waiter.notify()  # (pass the wake-up on: there is more)
                if self._raw_in:  # (BINARY's decoding, inline)
                    data = pkg.data
                    value = data if type(data) is bytes else bytes(data)
                else:
                    value = self._decode(pkg)
            if self._said_full and len(items) < OK_MARK:
                self._say(False)
        except BaseException:
            pkg = None  # (a message that failed to decode is consumed, as without Ctrl-C)
            raise
        finally:
            if on:
                router.shield_exit(None if pkg is None else self._queue.put_back, (pkg,))
        return value

    def recv_all(self) -> list:
        """Return all pending messages (possibly an empty list)."""
        if get_ident() != _MAIN_ID:
            return self._decode_all(self._queue.take())
        router = self._router
        on = router.shield_enter()  # (as in recv: a Ctrl-C meanwhile puts them back)
        pkgs: list = []
        try:
            pkgs = self._queue.take()
            value = self._decode_all(pkgs)
        except BaseException:
            pkgs = []
            raise
        finally:
            if on:
                router.shield_exit(self._queue.put_back if pkgs else None, pkgs)
        return value

    def recv_selected(self) -> list:
        """Return the pending messages older than any pending in the other channels
        passed to the last :func:`select_sub_channel` call that chose this one."""
        limit = None
        for channel in self._select_group:
            try:
                seq = channel._queue.peek().recv_seq
            except IndexError:
                continue
            limit = seq if limit is None else min(limit, seq)
        if limit is None:
            return self._decode_all(self._queue.take())
        return self._decode_all(self._queue.take_while(lambda pkg: pkg.recv_seq < limit))

    def _decode_all(self, pkgs: list) -> list:
        if self._said_full:
            self._check_ok()
        if type(self._message_type) is BinaryMessageType:  # (its decoding inline: no call per message)
            return [pkg.data if type(pkg.data) is bytes else bytes(pkg.data) for pkg in pkgs]
        decode = self._message_type.message_from_bytes
        return [decode(pkg.data) for pkg in pkgs]

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if not self._queue:
            raise StopIteration
        return self.recv(False)

    def next(self) -> Any:
        """Return the next pending message, or raise StopIteration if there is none."""
        return self.__next__()

    def set_sync_mode(self, value: bool) -> None:
        """Turn sync mode (lossless: backpressure on the publishers) on or off.

        In sync mode, publishers of this slot wait while more than 32
        messages wait here, and nothing is discarded: when the queue reaches
        the context's ``queue_params`` size or ``max_queue_bytes``, reading
        from the connection stops until it has room. It works without the
        yoton event loop. Turning it off lets the queue discard again by
        the discard mode.
        """
        value = bool(value)
        if value == self._sync:
            return
        self._sync = value
        router = self._router
        if value:
            self._queue.policy = BLOCK
            self._repeat = router.call_later(self._repeat_status, REPEAT_STATUS)
            if len(self._queue) > FULL_MARK:
                self._say(True)
        else:
            self._queue.policy = Policy.for_discard_mode(router.queue_params[1])
            if self._holding:
                router.call_soon(self._release)
            if self._repeat is not None:
                router.cancel(self._repeat)
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
            self._repeat = self._router.call_later(self._repeat_status, REPEAT_STATUS)

    def _receive(self, pkg: Package) -> None:
        self._queue_many((pkg,))
        self._check_full()

    def _receive_many(self, pkgs: list[Package], link: Link | None = None) -> None:
        if self._per_package:  # a subclass hooks _receive: one call per package
            super()._receive_many(pkgs, link)
            self._check_full()
            return
        self._count_in += len(pkgs)
        self._queue_many(pkgs, link)
        if self._sync:  # (_check_full's first test: a call only in sync mode)
            self._check_full()

    def _check_full(self) -> None:
        if self._sync and not self._said_full and len(self._queue) > FULL_MARK:
            self._say(True)

    def _send(self, message: Any, dest_id: int = 0, dest_seq: int = 0, block: bool | float = True) -> None:
        # Status messages are text on the wire, whatever this channel's type;
        # they never wait (recv sends them, and so does the loop side).
        if self._closed:
            return
        self._router.send(self._slot_out, message.encode("ascii"), dest_id, dest_seq, force=True)

    def close(self) -> None:
        """Close the channel; pending messages can still be received.

        A channel in sync mode that said it is full says ``ok`` first, so
        its publishers need not wait for the status to expire.
        """
        if self._repeat is not None:
            self._router.cancel(self._repeat)
        if self._sync and self._said_full:
            self._say(False)
        self._sync = False
        super().close()


def select_sub_channel(*channels: SubChannel) -> SubChannel | None:
    """Return the SubChannel holding the oldest pending message, or None.

    Then call ``recv_selected()`` on it to get its messages older than the
    oldest pending in the others; repeating this reads all the channels in
    the order the messages arrived.
    """
    best, best_seq = None, None
    for channel in channels:
        if not isinstance(channel, SubChannel):
            raise ValueError(f"select_sub_channel takes SubChannels, not {type(channel).__name__}")
        try:
            seq = channel._queue.peek().recv_seq
        except IndexError:
            continue
        if best_seq is None or seq < best_seq:
            best, best_seq = channel, seq
    if best is not None:
        best._select_group = tuple(ch for ch in channels if ch is not best)
    return best
