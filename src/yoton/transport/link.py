"""What every transport provides: a link between this context and one peer.

The context (its router) talks to each peer through a :class:`Link`, and to
nothing else of the transport; a transport (TCP, TLS and Unix-socket
streams, in-process pairs) is a subclass, reached through the registry in
:mod:`.schemes`. The contract, both ways:

* The router gives a link its :class:`LinkConfig` and itself as the
  :class:`LinkOwner` the link reports to: packages that arrived, that it is
  connected, that it closed, that its send queue has room again, that it
  has written everything.
* The router calls the link's public methods: :meth:`Link.enqueue` (any
  thread), :meth:`Link.has_room`, the read holds (:meth:`Link.hold_reading`
  and friends, loop side), :meth:`Link.begin_close` / :meth:`Link.teardown`,
  and reads its state and figures.

Life of a link (the only place the state changes is :meth:`Link.set_state`,
which refuses other moves)::

    NEW --bind()--> WAITING --(a peer's handshake succeeded)--> CONNECTED
    NEW --connect()--> CONNECTED            (the handshake done before)
    CONNECTED --(lost, with a reconnect policy)--> RECONNECTING --(re-dialled)--> CONNECTED
    WAITING/CONNECTED --close--> CLOSING --(close signal flushed, the peer's EOF; or 1 s)--> CLOSED
    any --(peer closed / EOF / broken stream / close_on_problem / gave up re-dialling)--> CLOSED

A link that is RECONNECTING keeps its send queue: packages still queue on it
(the router counts it among the links that take packages) and are written
once it is connected again. Its silence and stall rules keep running, so a
sender never waits for it longer than the connection's ``timeout``.

Rules the base class keeps for every transport:

* Packages are ``(header, body)`` pairs (or, for a transport that sets
  :attr:`Link.queues_objects`, :class:`~yoton.wire.frames.Package` objects)
  queued on a :class:`~yoton.queues.BoundedQueue` bounded by ``max_queue_bytes``, which
  applies backpressure: senders wait for room (the router does, through
  :meth:`has_room`) while the peer keeps taking data. Once the queue is full
  and the peer has taken nothing for the connection's ``timeout``, the link
  is *stalled*: its queue discards by the discard mode (counted, logged
  once) until the peer has taken a quarter of the queue's bound again.
* Reading can be held for reasons (a relay whose downstream queue is full,
  a sync-mode channel at its bounds); it resumes when none is left. While
  held, the peer's silence is ours: no ``timedout``.
* ``timedout(conn, True)`` is emitted when nothing arrived for ``timeout``
  seconds, ``timedout(conn, False)`` when data arrives again; ``closed(conn,
  reason)`` once, when the state becomes CLOSED; ``reconnected(conn)`` each
  time a lost link is connected again. Signals are emitted with the user's
  :class:`~yoton.Connection` (the link's ``handle``).
* Everything that changes the state runs on the loop side.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence
from typing import Protocol as _Interface

from ..queues import BLOCK, BoundedQueue, Policy
from ..wire.frames import HEADER_SIZE

if TYPE_CHECKING:
    from ..wire.frames import Package
    from .acceptor import Acceptor
    from .connection import Connection
    from .ioloop import IOLoop

log = logging.getLogger("yoton")

__all__ = [
    "LinkState",
    "NEW",
    "WAITING",
    "CONNECTED",
    "RECONNECTING",
    "CLOSING",
    "CLOSED",
    "LinkConfig",
    "LinkOwner",
    "Link",
    "TIMEOUT_MIN",
    "HEARTBEAT_INTERVAL",
    "CLOSE_FLUSH_TIME",
    "REASON_COMMAND",
    "REASON_PROBLEM",
    "REASON_CONTEXT",
]

TIMEOUT_MIN = 0.5
HEARTBEAT_INTERVAL = TIMEOUT_MIN / 2
CLOSE_FLUSH_TIME = 1.0

REASON_COMMAND = "Closed on command."
REASON_PROBLEM = "Unspecified problem"
REASON_CONTEXT = "Closed by the context."


# A queued package's header is always HEADER_SIZE bytes (packed by the router,
# or by Package.header()): the router's totals count it so, and so do these.


def package_size(item: tuple[bytes, bytes]) -> int:
    """Bytes of a queued package, a ``(header, body)`` pair."""
    return HEADER_SIZE + len(item[1])


def packages_size(items: Sequence[tuple[bytes, bytes]]) -> int:
    """Bytes of queued packages (``(header, body)`` pairs)."""
    return HEADER_SIZE * len(items) + sum([len(body) for _, body in items])


def object_size(pkg: Package) -> int:
    """Bytes of a queued :class:`~yoton.wire.frames.Package` object, its header included."""
    return HEADER_SIZE + len(pkg.data)


def objects_size(packages: Sequence[Package]) -> int:
    """Bytes of queued :class:`~yoton.wire.frames.Package` objects, their headers included."""
    return HEADER_SIZE * len(packages) + sum([len(pkg.data) for pkg in packages])


class LinkState(Enum):
    """Where a link is in its life (see the module docstring)."""

    NEW = "NEW"
    WAITING = "WAITING"
    CONNECTED = "CONNECTED"
    RECONNECTING = "RECONNECTING"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


NEW, WAITING, CONNECTED, RECONNECTING, CLOSING, CLOSED = (
    LinkState.NEW,
    LinkState.WAITING,
    LinkState.CONNECTED,
    LinkState.RECONNECTING,
    LinkState.CLOSING,
    LinkState.CLOSED,
)
_TRANSITIONS = {
    NEW: (WAITING, CONNECTED, CLOSED),
    WAITING: (CONNECTED, CLOSED),
    CONNECTED: (RECONNECTING, CLOSING, CLOSED),
    RECONNECTING: (CONNECTED, CLOSED),
    CLOSING: (CLOSED,),
    CLOSED: (),
}


@dataclass(frozen=True)
class LinkConfig:
    """What a link needs to know of its context."""

    local_id: int  #: the context's id
    max_package_size: int  #: largest body sent or accepted
    max_queue_bytes: int  #: bound of the send queue
    discard_mode: str  #: 'old' or 'new': what a stalled link's queue drops
    auth_key: bytes | None = None  #: see Context(auth_key=...)
    pid: int = os.getpid()


class LinkOwner(_Interface):
    """What a link reports to (the context's router)."""

    config: LinkConfig

    def io_loop(self) -> IOLoop:
        """The I/O loop serving this context's links (started if needed)."""

    def link_attached(self, link: Link) -> None:
        """A link was made (bind: WAITING; connect: CONNECTED)."""

    def link_established(self, link: Link) -> None:
        """A link is CONNECTED: packages may flow (loop side)."""

    def link_closing(self, link: Link) -> None:
        """A link began closing: no more packages for it (loop side)."""

    def link_interrupted(self, link: Link) -> None:
        """A link lost its peer and re-dials; packages still queue on it (loop side)."""

    def link_resumed(self, link: Link, redialled: bool) -> None:
        """A RECONNECTING link is CONNECTED again, or a bind's link took its
        peer's re-dial (``redialled`` is True on the side that dialled; loop side)."""

    def listener_opened(self, listener: Any) -> None:
        """A bind listens (``listener.close()`` stops it, on the loop side)."""

    def listener_closed(self, listener: Any) -> None:
        """A bind stopped listening."""

    def packages_arrived(self, link: Link, packages: list) -> None:
        """Packages came in on ``link``, in order (loop side)."""

    def link_closed(self, link: Link) -> None:
        """``link`` is CLOSED (loop side, or before I/O started)."""

    def room_changed(self) -> None:
        """A send queue drained, stalled or left: senders waiting for room may look again."""

    def flushed(self) -> None:
        """A link wrote everything it had queued."""

    def wait_flushed(self, links: Sequence[Link], timeout: float) -> None:
        """Wait until ``links`` wrote what they queued (raise FlushTimeout after ``timeout`` s)."""

    def receiving_slots(self) -> dict:
        """The slots the context's channels receive on: slot number -> slot name."""

    def relays(self, link: Link) -> bool:
        """Whether packages arriving on ``link`` are forwarded to other links."""


class Link:
    """One link to one peer: state, the send queue with backpressure and
    stalls, read holds, silence detection, figures. Transports subclass it
    and provide the I/O (see :class:`~yoton.transport.stream.StreamLink`)."""

    #: Whether the send queue holds :class:`~yoton.wire.frames.Package`
    #: objects rather than ``(header, body)`` pairs: a link whose peer is in
    #: this process hands them over as they are (no header to pack and parse).
    #: The router then queues with :meth:`enqueue_objects`.
    queues_objects = False

    def __init__(self, owner: LinkOwner, handle: Connection) -> None:
        self.owner = owner
        self.config = owner.config
        self.handle = handle  # the Connection the user sees (signals are emitted with it)
        self.state = NEW
        self.peer_id = 0
        self.peer_pid = 0
        self.local_address: tuple = ("", 0)
        self.peer_address: tuple = ("", 0)
        self.close_reason: str | None = None
        self.done = threading.Event()  # set once CLOSED
        self.loop: IOLoop | None = None  # given by the owner when the link is attached
        self.is_timedout = False
        self.sendq = BoundedQueue(
            max_bytes=self.config.max_queue_bytes,
            policy=BLOCK,
            name=f"the send queue of connection {handle.name!r}",
            log_level=logging.DEBUG,  # (the stall is logged instead)
            on_room=self._on_room,
            size_of=object_size if self.queues_objects else package_size,
            sizes_of=objects_size if self.queues_objects else packages_size,
        )
        self.stalled = False  # full, and the peer took nothing for `timeout` s
        self.read_holds: set = set()  # why reading is held (loop side); empty: reading
        self.held: set = set()  # upstream links held until our send queue has room (loop side)
        self.last_send = self.last_recv = self.created = time.monotonic()
        self.bytes_out = self.bytes_in = 0
        self.packages_in = self.packages_out = 0
        self._stall_mark = 0  # bytes_out when the stall began
        self.reconnects = 0  # how often the link was connected again after a loss
        self.close_deadline = 0.0  # CLOSING: no teardown before this (see closing_overdue)
        #: The bind's :class:`~yoton.transport.acceptor.Acceptor` that admitted
        #: this link (or, for the link bind() made, the one it belongs to).
        self.acceptor: Acceptor | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.handle.name!r} {self.state.value}>"

    # -- state ----------------------------------------------------------------

    def set_state(self, new: LinkState) -> None:
        """The only place the state changes; refuses a move the rules do not allow."""
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"a link cannot go from {self.state.value} to {new.value}")
        self.state = new

    @property
    def is_connected(self) -> bool:
        """True while connected to a peer."""
        return self.state is CONNECTED

    @property
    def is_alive(self) -> bool:
        """True while waiting for a peer, connected, or re-dialling a lost one."""
        return self.state is WAITING or self.state is CONNECTED or self.state is RECONNECTING

    @property
    def takes_packages(self) -> bool:
        """Whether the router queues packages on this link: connected, or
        re-dialling (they wait in its send queue)."""
        return self.state is CONNECTED or self.state is RECONNECTING

    @property
    def timeout(self) -> float:
        """Seconds of silence before ``timedout`` (the connection's setting)."""
        return self.handle.timeout

    def statistics(self) -> dict:
        """Figures of this link (a snapshot)."""
        queue = self.sendq
        now = time.monotonic()
        return {
            "state": self.state.value,
            "peer": f"{self.peer_id:016x}",
            "age": now - self.created,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packages_in": self.packages_in,
            "packages_out": self.packages_out,
            "queued_bytes": queue.bytes + self.unwritten(),
            "queued_packages": len(queue),
            "discarded": queue.discarded,
            "stalled": self.stalled,
            "timed_out": self.is_timedout,
            "reading_held": bool(self.read_holds),
            "reconnects": self.reconnects,
        }

    # -- sending (any thread) --------------------------------------------------------

    def enqueue(self, items: list[tuple[bytes, bytes]], total: int) -> bool:
        """Queue packages (``(header, body)`` pairs of ``total`` bytes) for the
        peer, in order, and have them written. Never waits: a sender waits
        for room first (see :meth:`has_room`); a stalled link's queue
        discards by its mode (counted). Returns :meth:`queue_full` as it is
        afterwards: whether senders should now wait."""
        self.packages_out += len(items)  # (queued for the peer; a stalled queue's discards included)
        full = self.sendq.extend(items, total)
        self.kick_writer()
        return full and self.queue_full()  # (the kick may have written it all; rarely asked)

    def enqueue_objects(self, packages: list[Package], total: int) -> bool:
        """Queue :class:`~yoton.wire.frames.Package` objects (this link's own:
        the peer's router may change them) of ``total`` bytes, headers
        included, as :meth:`enqueue` does. For links that do not
        :attr:`queue objects <queues_objects>`, they are queued as pairs."""
        pairs: list = [(pkg.header(), pkg.data) for pkg in packages]
        return self.enqueue(pairs, total)

    def has_room(self, size: int) -> bool:
        """Whether a sender may queue ``size`` more bytes without waiting: the
        send queue has room, or the link is stalled (its queue discards)."""
        return self.stalled or self.sendq.has_room(size)

    def queue_full(self) -> bool:
        """Whether the send queue is full and the link not stalled (senders should wait)."""
        return self.sendq.full and not self.stalled

    def unflushed(self) -> bool:
        """Whether packages wait to be written (while the link can still write them)."""
        return (bool(self.sendq) or self.unwritten() > 0) and self.state in (WAITING, CONNECTED, RECONNECTING, CLOSING)

    # -- for transports -----------------------------------------------------------

    def interest_changed(self, settle: bool = False) -> None:
        """The context's receiving slots or its live links changed (any thread).

        A transport that subscribes per slot (NATS) looks again -- with
        ``settle`` (a channel was made), it returns once its server has the
        new subscriptions (briefly, never on the loop side); a stream, which
        carries everything, has nothing to do."""

    def kick_writer(self) -> None:
        """Packages were queued (any thread): write them, or have them written."""
        raise NotImplementedError

    def unwritten(self) -> int:
        """Bytes taken from the queue but not written yet."""
        return 0

    def partial(self) -> tuple | None:
        """The large package being received, if any: ``(slot, source_id,
        source_seq, dest_id, dest_seq, bytes received, length)``."""
        return None

    def set_reading(self, flag: bool) -> None:
        """Start or stop reading from the peer (loop side)."""
        raise NotImplementedError

    def progress(self, sent: int) -> None:
        """``sent`` bytes left for the peer (a writer)."""
        self.last_send = time.monotonic()
        self.bytes_out += sent
        # Stalled, the peer takes data again once it has taken a quarter of the
        # queue's bound (a stopped process's kernel may still take a trickle).
        if self.stalled and self.bytes_out - self._stall_mark >= self.config.max_queue_bytes // 4:
            self._unstall()

    def note_received(self, nbytes: int) -> None:
        """``nbytes`` arrived (loop side): the peer is not silent."""
        self.last_recv = time.monotonic()
        self.bytes_in += nbytes
        if self.is_timedout:
            self.is_timedout = False
            self.handle.timedout.emit(self.handle, False)

    def deliver(self, packages: list) -> None:
        """Hand packages that arrived to the owner, in order (loop side)."""
        self.packages_in += len(packages)
        self.owner.packages_arrived(self, packages)

    # -- flow control (loop side) ----------------------------------------------------

    def hold_reading(self, key: Hashable) -> None:
        """Stop reading from the peer until :meth:`release_reading` with the
        same ``key``. TCP then slows the peer down."""
        if not self.read_holds:
            self.read_holds.add(key)
            self.set_reading(False)
        else:
            self.read_holds.add(key)

    def release_reading(self, key: Hashable) -> None:
        """Drop one reason to hold reading; read again when none is left."""
        if key in self.read_holds:
            self.read_holds.discard(key)
            if not self.read_holds:
                self.last_recv = time.monotonic()  # (its silence meanwhile was ours)
                self.set_reading(True)

    def hold_upstream(self, upstream: Link) -> None:
        """A relay: packages forwarded from ``upstream`` filled our send queue;
        hold its reading until we have room."""
        if upstream not in self.held:
            self.held.add(upstream)
            upstream.hold_reading(("relay", self))
            if not self.queue_full():
                # A writer in another thread drained the queue between the
                # caller's look and the hold: its on_room found nothing to release.
                self.release_upstream()

    def release_upstream(self) -> None:
        """Let the upstream links we hold read again."""
        held, self.held = self.held, set()
        for upstream in held:
            upstream.release_reading(("relay", self))

    def _on_room(self) -> None:
        # The send queue drained (any writer thread): waiting senders and held
        # upstream links may go on.
        if self.held:
            loop = self.loop
            assert loop is not None  # (held: it was reading)
            if loop.on_loop_side():
                self.release_upstream()
            else:
                loop.call_soon(self.release_upstream)
        self.owner.room_changed()

    def _stall(self) -> None:
        self.stalled = True
        self._stall_mark = self.bytes_out
        self.sendq.policy = Policy.for_discard_mode(self.config.discard_mode)
        log.warning(
            "yoton: connection %r: the peer has taken nothing for %.1f s and the send "
            "queue is full (%d bytes): discarding the %s packages until it takes data again",
            self.handle.name,
            self.timeout,
            self.sendq.bytes,
            "oldest" if self.sendq.policy is Policy.DROP_OLD else "newest",
        )
        self.release_upstream()  # (a relay does not hold its other links for a dead peer)
        self.owner.room_changed()

    def _unstall(self) -> None:
        self.stalled = False
        self.sendq.policy = BLOCK
        log.info(
            "yoton: connection %r: the peer takes data again (%d packages discarded so far)",
            self.handle.name,
            self.sendq.discarded,
        )

    def check_silence(self, now: float) -> None:
        """Housekeeping for every transport (loop side): stalls and timeouts."""
        if not self.stalled and self.sendq.full and now - self.last_send >= self.timeout:
            self._stall()  # (full, and the peer took nothing for its timeout)
        if not self.is_timedout and not self.read_holds and now - self.last_recv > self.timeout:
            self.is_timedout = True
            self.handle.timedout.emit(self.handle, True)

    # -- closing ------------------------------------------------------------------

    def begin_close(self, reason: str) -> None:
        """Close nicely: what is queued and the close signal go first (loop side)."""
        raise NotImplementedError

    def start_closing(self, reason: str) -> None:
        """The part of a nice close every transport shares (a CONNECTED link,
        loop side): CLOSING, the owner told, the reason kept, the flush clock
        started; the transport then sends what is queued and its close signal."""
        self.set_state(CLOSING)
        self.owner.link_closing(self)
        self.close_reason = reason
        self.close_deadline = time.monotonic() + CLOSE_FLUSH_TIME

    def closing_overdue(self, now: float) -> bool:
        """Whether a CLOSING link should give up flushing and tear down: only
        after CLOSE_FLUSH_TIME without progress, so a peer that keeps reading
        gets all that was queued, however long that takes."""
        return now >= max(self.close_deadline, self.last_send + CLOSE_FLUSH_TIME)

    def teardown(self, reason: str | None) -> None:
        """Close at once and announce it (loop side, or before I/O started)."""
        raise NotImplementedError

    def stop_listening(self) -> None:
        """If this is the link a bind made, stop that bind listening (any thread)."""
        acceptor = self.acceptor
        if acceptor is not None and acceptor.first is self:
            acceptor.request_close()

    def finish(self, reason: str | None) -> None:
        """The part of teardown every transport shares: CLOSED, queue dropped
        (counted), owner told, ``closed`` emitted (once)."""
        self.set_state(CLOSED)
        self.close_reason = reason = reason or REASON_PROBLEM
        if self.acceptor is not None:
            self.acceptor.forget(self)
        self.release_upstream()
        self.sendq.discard_all()  # (never written: counted as discarded)
        log.debug("yoton: connection %r closed: %s", self.handle.name, reason)
        self.owner.link_closed(self)
        self.owner.flushed()
        self.handle.closed.emit(self.handle, reason)
        self.done.set()

    def request(self, action: Callable[[str], None], reason: str, wait: bool) -> None:
        """Run ``action(reason)`` (begin_close or teardown) on the loop side,
        from any thread; with ``wait``, until CLOSED (not from the loop side)."""
        if self.state is CLOSED:
            return
        if self.state is NEW:
            self.teardown(reason)
            return
        loop = self.loop
        if loop is None or not loop.running:
            self.teardown(reason)
            return
        loop.call_soon(action, reason)
        if wait and not loop.on_loop_side():
            self.wait_done()

    def wait_done(self) -> None:
        """Wait until CLOSED (not from the loop side): as long as bytes still go
        out, and a second longer than the loop would wait without progress."""
        mark, since = self.last_send, time.monotonic()
        while not self.done.wait(0.05):
            if self.last_send != mark:
                mark, since = self.last_send, time.monotonic()
            elif time.monotonic() - since > CLOSE_FLUSH_TIME + 1.0:
                return
