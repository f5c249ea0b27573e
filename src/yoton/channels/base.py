"""BaseChannel: what every channel shares — slots, the receive queue, signals.

A channel joins a context on two slots: it sends on ``slot_outgoing`` and
receives on ``slot_incoming``. A slot name is ``base.type.pattern`` (e.g.
``'news.txt.pub-sub'``); its hash, taken case-insensitively, is what travels
on the wire. Per context there is at most one sending and one receiving
channel per slot.

Packages arrive on the context's loop side ("the I/O thread" below: the I/O
thread itself, or the one thread waiting in ``recv`` that serves the loop
meanwhile, see :mod:`yoton.transport.ioloop`) and are kept, still encoded, in a
:class:`~yoton.queues.BoundedQueue` bounded in count (the context's
``queue_params``) and in bytes (its ``max_queue_bytes``, counting message
bodies). When either bound is reached, the discard mode of ``queue_params``
applies and ``statistics()`` counts the discards -- except in a SubChannel's
sync mode, which never discards: the channel then stops reading from the
connections its packages come on until it has room again (TCP slows the
senders down). One package is always accepted into an empty queue, however
large (``max_package_size`` bounds it). Messages are decoded in the thread
that calls ``recv``.

Channels reach their context only through its
:class:`~yoton.context.Router` (``context.router``): to send, to take their
slots, and to wait and schedule on the context's loop. Threads that wait for
what a channel receives (``recv``, a future's ``result``, a replier's
worker) do so through a :class:`Waiter`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from operator import attrgetter
from threading import get_ident
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from ..errors import ChannelClosedError
from ..events import Signal, post_event
from ..messages import BinaryMessageType, as_message_type
from ..queues import BLOCK, BoundedQueue, Policy
from ..wire.naming import slot_hash

if TYPE_CHECKING:
    from ..context import Context, Router
    from ..messages import MessageType
    from ..transport.link import Link
    from ..wire.frames import Package

log = logging.getLogger("yoton")

__all__ = ["BaseChannel", "Waiter"]


class Waiter:
    """Threads waiting for something that arrives on the context's loop side.

    The first thread to wait lends a hand to the loop meanwhile
    (:meth:`Router.wait_until <yoton.context.Router.wait_until>`: on Linux it
    waits in the sockets itself and serves the package it waits for); the
    others wait on a condition. :meth:`notify` wakes both kinds: call it
    after making what they wait for true (from any thread, the loop side
    included). The condition is touched only when someone waits on it.
    Without a router (a future made by hand) only the condition is used.

    Waits that are not threads (``yoton.asyncio``'s coroutines) hook in with
    :meth:`add_callback`: every :meth:`notify` calls the callbacks too.
    """

    __slots__ = ("_router", "_cond", "others", "_reader", "callbacks", "_hook_lock")

    def __init__(self, router: Router | None) -> None:
        self._router = router
        self._cond: threading.Condition | None = None  # (made when a thread first waits on it)
        #: How many threads wait on the condition (not counting the reader; read without a lock).
        self.others = 0
        self._reader: int | None = None  # (the ident of) the thread lending the loop a hand
        #: The callbacks :meth:`notify` calls (a tuple, replaced on change: read without a lock).
        self.callbacks: tuple = ()
        self._hook_lock = threading.Lock()

    def add_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` on every :meth:`notify`, in the notifying thread (often
        the loop side: ``fn`` must be quick, thread-safe and never wait)."""
        with self._hook_lock:
            self.callbacks = self.callbacks + (fn,)

    def remove_callback(self, fn: Callable[[], object]) -> None:
        """Stop calling ``fn`` (harmless if it is not there)."""
        with self._hook_lock:
            callbacks = list(self.callbacks)
            if fn in callbacks:
                callbacks.remove(fn)
                self.callbacks = tuple(callbacks)

    def wait(self, ready: Callable[[], Any], deadline: float | None) -> bool:
        """Wait until ``ready()`` or the monotonic ``deadline`` (None: none);
        return ``ready()``."""
        if ready():
            return True
        if self._reader is None and self._router is not None:
            self._reader = get_ident()
            try:
                self._router.wait_until(ready, deadline)
            finally:
                self._reader = None
            if ready():
                return True
        cond = self._cond
        if cond is None:
            with self._hook_lock:
                if self._cond is None:
                    self._cond = threading.Condition(threading.Lock())
                cond = self._cond
        with cond:
            self.others += 1
            try:
                while not ready():
                    if deadline is None:
                        cond.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        cond.wait(remaining)
                return ready()
            finally:
                self.others -= 1

    def notify(self, everyone: bool = False) -> None:
        """Something they wait for happened: wake one waiter (or all)."""
        cond = self._cond
        if self.others and cond is not None:  # (others > 0 only once the condition exists)
            with cond:
                if everyone:
                    cond.notify_all()
                else:
                    cond.notify()
        if self._reader is not None and self._router is not None and not self._router.on_loop_side():
            self._router.wake()  # (a pass on the loop side wakes the reader by itself)
        for callback in self.callbacks:
            try:
                callback()
            except Exception:
                log.exception("yoton: waiter callback %r failed", callback)


def _emit_received_of(channel_ref: weakref.ref[BaseChannel]) -> None:
    channel = channel_ref()
    if channel is not None:
        channel._emit_received()


_data = attrgetter("data")


def _body_size(pkg: Package) -> int:
    return len(pkg.data)


def _bodies_size(pkgs: Iterable[Package]) -> int:
    return sum(map(len, map(_data, pkgs)))


def _slot(base: str, type_name: str, pattern: str) -> tuple[str, int]:
    name = f"{base}.{type_name}.{pattern}"
    return name, slot_hash(name.strip().lower())


class BaseChannel:
    """Abstract base of all channels.

    ``context`` is the :class:`~yoton.Context` to send and receive through,
    ``slot_base`` names the slot (channels at the same slot, pattern and
    message type talk to each other), ``message_type`` converts messages to
    and from bytes (:data:`~yoton.TEXT` by default; a MessageType instance or
    subclass).
    """

    _pattern_out = ""  # e.g. 'pub-sub'; '' means the channel does not send
    _pattern_in = ""  # '' means the channel does not receive
    # (or override _messaging_patterns(), as channels written for yoton 2.2 do)

    def __init__(
        self, context: Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        from ..context import Context

        if not isinstance(context, Context):
            raise ValueError(f"a channel needs a yoton.Context, not {type(context).__name__}")
        if not isinstance(slot_base, str):
            raise ValueError(f"slot_base must be a str, not {type(slot_base).__name__}")
        self._context = context
        self._router = router = context.router
        self._message_type = mt = as_message_type(message_type)
        self._to_bytes = mt.message_to_bytes  # (bound once: the send path's hottest call)
        # Bytes go out as they are when the type is BINARY itself (no call to make).
        self._raw_bytes = type(mt) is BinaryMessageType
        type_name = mt.message_type_name()
        pattern_out, pattern_in = self._messaging_patterns()
        if not (pattern_out or pattern_in):
            raise ValueError(f"{type(self).__name__} has no slot: its messaging patterns are empty")
        # (a name of "" means no such slot: register is told None)
        self._slot_out_name, self._slot_out = _slot(slot_base, type_name, pattern_out) if pattern_out else ("", 0)
        self._slot_in_name, self._slot_in = _slot(slot_base, type_name, pattern_in) if pattern_in else ("", 0)
        self._closed = False
        self._received_signal = Signal()
        self._emit_pending = False
        size, mode = context.queue_params
        self._queue_size = size
        self._queue = BoundedQueue(
            size,
            context.max_queue_bytes,
            Policy.for_discard_mode(mode),
            size_of=_body_size,
            sizes_of=_bodies_size,
            name=f"the receive queue of {type(self).__name__} {self._slot_in_name!r}",
            log_level=logging.INFO,
            on_room=self._on_room,
        )
        self._count_in = 0  # packages delivered to this channel (loop side)
        self._count_out = 0  # messages sent (see statistics)
        self._holding: set = set()  # links whose reading we hold (loop side)
        self._delivering: Link | None = None  # the link of the packages being taken (loop side)
        self._waiter = Waiter(router)
        peer_joined = getattr(self, "_peer_joined", None)
        router.register(
            self,
            self._slot_out if self._slot_out_name else None,
            self._slot_in if self._slot_in_name else None,
            self._receive_many,
            peer_joined,
        )

    def _messaging_patterns(self) -> tuple:
        """Return the patterns ``(outgoing, incoming)`` of the slot names ('' for none).

        Taken from the class attributes ``_pattern_out`` / ``_pattern_in``;
        a channel class may override this instead (yoton 2.2's way). Raises
        NotImplementedError for a class with neither (BaseChannel itself).
        """
        if not (self._pattern_out or self._pattern_in):
            raise NotImplementedError(
                f"{type(self).__name__} defines no messaging pattern "
                "(set _pattern_out/_pattern_in or override _messaging_patterns())"
            )
        return self._pattern_out, self._pattern_in

    def message_to_bytes(self, message: Any) -> bytes:
        """Encode ``message`` with this channel's message type (yoton 2.2 had this on channels)."""
        return self._message_type.message_to_bytes(message)

    def message_from_bytes(self, data: bytes | bytearray | memoryview) -> Any:
        """Decode ``data`` with this channel's message type (yoton 2.2 had this on channels)."""
        return self._message_type.message_from_bytes(data)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._queue)} pending"
        return f"<{type(self).__name__} {self._slot_out_name or self._slot_in_name!r} {state}>"

    # -- properties -----------------------------------------------------------

    @property
    def received(self) -> Signal:
        """Signal ``(channel)`` emitted (through the event queue) when messages arrive.

        Several arrivals may give one emission; by the time a handler runs,
        the messages may already have been received.
        """
        return self._received_signal

    @property
    def pending(self) -> int:
        """The number of received messages waiting to be read."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether the channel is closed."""
        return self._closed

    @property
    def slot_outgoing(self) -> str:
        """The name of the slot this channel sends on ('' if it does not send)."""
        return self._slot_out_name

    @property
    def slot_incoming(self) -> str:
        """The name of the slot this channel receives on ('' if it does not receive)."""
        return self._slot_in_name

    @property
    def context(self) -> Context:
        """The :class:`~yoton.Context` this channel belongs to."""
        return self._context

    @property
    def message_type(self) -> MessageType:
        """The :class:`~yoton.MessageType` of this channel."""
        return self._message_type

    def statistics(self) -> dict:
        """Counters: ``pending`` messages, their size in ``pending_bytes`` (message
        bodies), messages ``discarded`` because the queue was full (in
        count or in bytes), and since the channel was made: packages
        ``received`` on its incoming slot (sync status and request
        signals included) and messages ``sent`` (published, set, requested
        or replied; not the protocol's own signals)."""
        queue = self._queue
        return {
            "pending": len(queue),
            "pending_bytes": queue.bytes,
            "discarded": queue.discarded,
            "received": self._count_in,
            "sent": self._count_out,
        }

    def close(self) -> None:
        """Detach from the context: sending raises, nothing new arrives.

        Messages already queued can still be received; blocked receivers wake.
        """
        if self._closed:
            return
        self._closed = True
        self._router.unregister(self)
        if self._holding:
            self._router.call_soon(self._release)  # (nothing more comes here: read on)
        self._waiter.notify(everyone=True)

    # -- sending ----------------------------------------------------------------

    def _send(self, message: Any, dest_id: int = 0, dest_seq: int = 0, block: bool | float = True) -> None:
        if self._closed:
            raise ChannelClosedError(f"cannot send on closed {type(self).__name__} {self._slot_out_name!r}")
        body = message if self._raw_bytes and type(message) is bytes else self._to_bytes(message)
        if body:  # empty messages are not sent (yoton 2.2 rule)
            self._router.send(self._slot_out, body, dest_id, dest_seq, block)
            self._count_out += 1

    # -- receiving --------------------------------------------------------------

    def _receive_many(self, pkgs: list[Package], link: Link | None = None) -> None:
        """Take packages that arrived on ``link`` from the router, in order (loop side)."""
        self._count_in += len(pkgs)
        self._delivering = link
        try:
            for pkg in pkgs:
                try:
                    self._receive(pkg)
                except Exception:
                    log.exception("yoton: channel %r failed to take a package", self)
        finally:
            self._delivering = None

    def _receive(self, pkg: Package) -> None:
        """Take a package from the context (loop side)."""
        self._queue_many((pkg,))

    def _queue_many(self, pkgs: Sequence[Package], link: Link | None = None) -> None:
        """Queue packages for readers by the queue's policy (loop side).

        A full BLOCK queue (sync mode) takes them anyway and holds reading
        from ``link`` (default: the link being delivered) until it has room
        again.
        """
        queue = self._queue
        queue.put_many(pkgs)
        if queue.policy is BLOCK and queue.full:
            self._hold(link or self._delivering)
        # Wake one thread waiting on the condition; one that finds more passes
        # the wake-up on (see _wait_package). Callbacks hear of every arrival.
        waiter = self._waiter
        if (waiter.others or waiter.callbacks) and queue:
            waiter.notify()
        if not self._emit_pending:  # (else one is pending already: see _announce)
            self._announce()

    def _hold(self, link: Link | None) -> None:
        """Hold reading from ``link`` until our queue has room (loop side)."""
        if link is not None and link not in self._holding:
            self._holding.add(link)
            self._router.hold_reading(link, ("channel", self))
            if not self._queue.full:
                # A reader drained the queue between our look and the hold: its
                # on_room found nothing to release. (Later, it finds us.)
                self._release()

    def _release(self) -> None:
        """Let the links we hold read again (loop side)."""
        holding, self._holding = self._holding, set()
        for link in holding:
            self._router.release_reading(link, ("channel", self))

    def _on_room(self) -> None:
        """The queue drained to its resume mark or ran empty (any thread)."""
        if self._holding:
            self._router.call_soon(self._release)

    def _announce(self) -> None:
        """Emit ``received`` through the event queue, at most one pending at a time.

        Posted with or without handlers (as yoton 2.2 does): the handlers bound
        by the time the event loop runs it are called. The event holds the
        channel weakly: one nobody processes events for can still be collected.
        """
        if not self._emit_pending:
            self._emit_pending = True
            post_event(_emit_received_of, weakref.ref(self))

    def _emit_received(self) -> None:
        self._emit_pending = False
        self._received_signal.emit_now(self)

    def _wait_package(self, block: bool | float | None) -> Package | None:
        """Pop the oldest package, waiting as ``block`` says; None if none."""
        queue = self._queue
        items = queue.items  # (its deque: a truth test without a Python call)
        if items:
            try:
                return queue.popleft()
            except IndexError:  # (taken meanwhile by another reader)
                pass
        if not self._wait_ready(block):
            return None
        return self._pop_after_wait()

    def _wait_ready(self, block: bool | float | None) -> bool:
        """Wait as ``block`` says until a package is pending; whether one is (it is not taken)."""
        items = self._queue.items
        if items:
            return True
        if block is False or block is None or self._closed:
            return False
        if block is True:
            deadline = None
        elif isinstance(block, (int, float)):
            deadline = time.monotonic() + block
        else:
            raise ValueError(f"block must be True, False or a number of seconds, not {block!r}")
        self._waiter.wait(lambda: items or self._closed, deadline)
        return bool(items)

    def _pop_after_wait(self) -> Package | None:
        items = self._queue.items
        try:
            pkg = self._queue.popleft()
        except IndexError:  # (taken meanwhile by another reader)
            return None
        if items and self._waiter.others:
            self._waiter.notify()  # (pass the wake-up on: there is more)
        return pkg

    def _decode(self, pkg: Package) -> Any:
        return self._message_type.message_from_bytes(pkg.data)

    def _empty(self) -> Any:
        return self._message_type.empty_message()
