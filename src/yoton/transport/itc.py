"""The ``itc://NAME`` transport: contexts of one process, linked without sockets.

A bind registers its name in this process; a connect finds it and the two
contexts get a pair of :class:`ItcLink` objects, one each, that feed each
other. Packages pass by reference: the sending router queues
:class:`~yoton.wire.frames.Package` objects on the link (no header is packed
or parsed) and the bodies the sender queued are the bodies the receiver's
channels get (no copy, no system call per package; only the wake-up of the
receiving context's loop when it sleeps).

The rules are those of TCP, so code does not care which it runs on:

* **Handshake**: the connect waits (up to its timeout) for the name to be
  bound, then the bind's loop checks what a yoton handshake checks: a
  context cannot reach itself ("Handshake failed (context cannot connect to
  self)."), and with an ``auth_key`` on either side both must have the same
  one (compared in constant time; else :class:`~yoton.errors.AuthenticationError`
  and the bind logs the refusal and keeps waiting). ``max_connections`` works
  as for TCP (:mod:`.acceptor`).
* **Order and flow**: each link's send queue is the same bounded queue with
  backpressure and the stall rule as over TCP; the receiving context takes
  packages from it on its own loop side, in order, in batches, and stops
  taking while its reading is held (a full sync-mode subscriber, a relay),
  which is what holds a fast sender back.
* **Limits**: a body larger than the receiver's ``max_package_size`` closes
  the link there, with the same reason as over TCP.
* **Closing**: ``close()`` lets the peer take what is queued, then the peer
  closes with "Closed from other end." and we with our reason; a peer that
  takes nothing for a second is dropped. ``close_on_problem()`` (or a link
  torn down for a reason) reaches the peer as "Other end dropped the
  connection.".
* **Silence**: an idle link tells its peer every 0.25 s that its loop is
  alive (the heartbeat's part), so ``timedout`` means what it means over TCP:
  the peer's loop has not run for ``timeout`` seconds.
* No reconnecting: a context of this process does not vanish without closing.
* A context with an itc:// link does not poll before it sleeps in a wait
  (``Context(spin=...)``): the peer that must answer is a thread of this
  process, and a polling thread takes the GIL it needs (a round trip took
  several times as long).

Bodies are passed as they were queued: a channel's encoded message (bytes)
is never changed after it was sent, so receivers share it safely.
"""

from __future__ import annotations

import logging
import threading
import time
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable

from ..errors import AuthenticationError, BindError, ConnectError, ConnectHandshakeError
from ..wire.frames import HEADER, Package
from ..wire.protocol import REASON_EOF, REASON_PEER_CLOSED, REASON_SELF
from .acceptor import Acceptor, check_max_connections
from .link import (
    CLOSED,
    CLOSING,
    CONNECTED,
    HEARTBEAT_INTERVAL,
    WAITING,
    Link,
    LinkOwner,
)

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("yoton")

__all__ = ["ItcLink", "ItcBind", "open_bind", "open_connect", "itc_name"]

#: A pull takes at most this many packages, or bytes (at least one package), at a time.
_TAKE_COUNT = 4096
_TAKE_BYTES = 1 << 20

_data = attrgetter("data")

_binds: dict = {}  # name -> ItcBind, for this process
_binds_lock = threading.Lock()


def itc_name(address: str) -> str:
    """The name of an ``itc://NAME`` address; ValueError if it has none."""
    if not isinstance(address, str):
        raise ValueError(f"Address should be a string, not {type(address).__name__}.")
    name = address.partition("://")[2]
    if not name:
        raise ValueError(f"an itc:// address needs a name, like itc://kernel (got {address!r})")
    return name


# -- opening ------------------------------------------------------------------------------


def open_bind(owner: LinkOwner, handle: Connection, address: str, max_connections: int | None = 1) -> ItcLink:
    """Register ``itc://NAME`` in this process; return the WAITING link. BindError
    if another bind of this process has the name."""
    name = itc_name(address)
    max_connections = check_max_connections(max_connections)
    link = ItcLink(owner, handle, name)
    link.set_state(WAITING)
    bind = ItcBind(link, name, max_connections)
    with _binds_lock:
        other = _binds.get(name)
        if other is not None and not other.closed:
            raise BindError(f"could not bind to itc://{name}: another bind of this process has that name")
        _binds[name] = bind
    link.loop = owner.io_loop()
    owner.link_attached(link)
    owner.listener_opened(bind)
    return link


class _Offer:
    """A connect's request to a bind, answered on the bind's loop side."""

    def __init__(self, link: ItcLink):
        self.link = link
        self.event = threading.Event()
        self.result: tuple = ("", None)  # (kind, detail), once answered
        self._lock = threading.Lock()
        self._state = "new"  # -> "taken" (the bind handles it) or "cancelled" (the caller gave up)

    def take(self) -> bool:
        with self._lock:
            if self._state != "new":
                return False
            self._state = "taken"
            return True

    def cancel(self) -> bool:
        with self._lock:
            if self._state != "new":
                return False
            self._state = "cancelled"
            return True

    def answer(self, kind: str, detail: str | None = None) -> None:
        self.result = (kind, detail)
        self.event.set()


def open_connect(owner: LinkOwner, handle: Connection, address: str, timeout: float = 1.0) -> ItcLink:
    """Connect to the bind of ``itc://NAME`` in this process (waiting up to
    ``timeout`` s for the name to be bound); return the CONNECTED link.
    Raises :class:`~yoton.errors.ConnectError` (nobody bound it in time),
    :class:`~yoton.errors.ConnectHandshakeError` (refused: self-connect, a
    full bind) or :class:`~yoton.errors.AuthenticationError`."""
    name = itc_name(address)
    timeout = float(timeout)
    deadline = time.monotonic() + timeout
    link = ItcLink(owner, handle, name)
    link.loop = owner.io_loop()
    while True:
        with _binds_lock:
            bind = _binds.get(name)
        loop = None if bind is None or bind.closed else bind.first.loop
        if bind is None or loop is None or not loop.running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectError(f"Could not connect to itc://{name} within {timeout:g} s (nothing bound to it).")
            time.sleep(min(0.01, remaining))
            continue
        offer = _Offer(link)
        loop.call_soon(bind.offer, offer)
        while not offer.event.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline and offer.cancel():
                raise ConnectError(f"Could not connect to itc://{name}: the bind did not answer within {timeout:g} s.")
        kind, detail = offer.result
        if kind == "ok":
            break
        if kind == "retry":  # (it closed meanwhile)
            continue
        if kind == "auth":
            raise AuthenticationError(f"Could not connect: {detail}.")
        raise ConnectHandshakeError(f"Could not connect: {detail}")
    owner.link_attached(link)
    owner.link_established(link)  # (before connect() returns: what is sent next goes to it)
    link.loop.call_soon(link.start_io)
    return link


# -- the bind -------------------------------------------------------------------------------


class ItcBind(Acceptor):
    """A name bound in this process and the links it admitted."""

    def __init__(self, first: ItcLink, name: str, max_connections: int | None) -> None:
        super().__init__(first, max_connections)
        self.name = name

    def offer(self, offer: _Offer) -> None:
        """A connect came (loop side): check it as a handshake would, pair the links."""
        if not offer.take():
            return  # (the caller gave up)
        if self.closed:
            offer.answer("retry")
            return
        other = offer.link
        mine, theirs = self.owner.config, other.config
        if mine.local_id == theirs.local_id:
            self._refuse(offer, "refused", REASON_SELF)
            return
        if mine.auth_key or theirs.auth_key:
            from hmac import compare_digest  # (on first use: see wire.protocol.auth_proof)

            if not (mine.auth_key and theirs.auth_key and compare_digest(mine.auth_key, theirs.auth_key)):
                if mine.auth_key and theirs.auth_key:
                    detail = "wrong key"
                elif mine.auth_key:
                    detail = "the other end did not authenticate; has it the key?"
                else:
                    detail = "the other end requires an auth key"
                self._refuse(offer, "auth", f"authentication failed ({detail})")
                return
        kind, link = self.admit(theirs.local_id, lambda handle: ItcLink(self.owner, handle, self.name))
        if kind == "refused":
            self._refuse(offer, "refused", f"Handshake failed: the other end answered 'ERROR: {link}.'")
            return
        if kind == "new":
            link.loop = self.first.loop
            self.owner.link_attached(link)
        link.pair(other)
        other.pair(link)
        link.set_state(CONNECTED)
        other.set_state(CONNECTED)
        self.owner.link_established(link)
        link.start_io()
        self.admitted(link)
        offer.answer("ok")

    def _refuse(self, offer: _Offer, kind: str, detail: str) -> None:
        log.info("yoton: refused a context of this process on itc://%s: %s", self.name, detail)
        offer.answer(kind, detail)

    def stop(self) -> None:
        """Free the name."""
        with _binds_lock:
            if _binds.get(self.name) is self:
                del _binds[self.name]


# -- the link -------------------------------------------------------------------------------


class ItcLink(Link):
    """One end of a pair of in-process links (see the module docstring).

    The receiving end moves packages: :meth:`_pull`, on its own loop side,
    takes a batch from the peer's send queue and delivers it to its owner.
    """

    def __init__(self, owner: LinkOwner, handle: Connection, name: str) -> None:
        super().__init__(owner, handle)
        self.name = name
        self.local_address = self.peer_address = (name, 0)
        self.peer: ItcLink | None = None
        self._reading = False  # (loop side) started: we take what the peer queued
        self._pull_scheduled = False
        self._inflight = 0  # bytes taken from our queue, not yet delivered to the peer
        self._no_spin = False  # we keep the loop's readers from polling

    def pair(self, peer: ItcLink) -> None:
        """Make ``peer`` the other end (before the link is CONNECTED)."""
        self.peer = peer
        self.peer_id = peer.config.local_id
        self.peer_pid = peer.config.pid
        self.last_send = self.last_recv = time.monotonic()

    def start_io(self) -> None:
        """Start taking what the peer queued, and let it take ours (loop side)."""
        if self.state is not CONNECTED:
            return
        loop = self.loop
        assert loop is not None  # (the owner gave it its loop before it was paired)
        self._reading = True
        self._no_spin = True
        loop.no_spin += 1  # (our peer needs the GIL a polling reader of ours would take)
        loop.housekeepers.add(self)
        self._schedule_pull()
        self.kick_writer()

    # -- moving packages ---------------------------------------------------------------

    queues_objects = True  # (the peer takes our Package objects: no header is packed or parsed)

    def enqueue(self, items: list[tuple[bytes, bytes]], total: int) -> bool:
        """Queue ``(header, body)`` pairs (the startup queue, packages relayed
        from another link) as Package objects; see :meth:`Link.enqueue`."""
        unpack = HEADER.unpack
        packages = []
        for header, body in items:
            _, slot, source_id, source_seq, dest_id, dest_seq, _ = unpack(header)
            packages.append(Package(body, slot, source_id, source_seq, dest_id, dest_seq))
        return self.enqueue_objects(packages, total)

    def enqueue_objects(self, packages: list[Package], total: int) -> bool:
        """Queue Package objects for the peer, which takes them as they are."""
        self.packages_out += len(packages)  # (queued for the peer; a stalled queue's discards included)
        full = self.sendq.extend(packages, total)
        self.kick_writer()
        return full and self.queue_full()

    def kick_writer(self) -> None:
        peer = self.peer
        if peer is not None:
            peer._schedule_pull()

    def unwritten(self) -> int:
        return self._inflight

    def set_reading(self, flag: bool) -> None:
        if flag:
            self._schedule_pull()

    def _schedule_pull(self) -> None:
        # (any thread) Have our loop take what the peer queued.
        if not self._pull_scheduled:
            self._pull_scheduled = True
            loop = self.loop
            if loop is not None and loop.running:
                loop.call_soon(self._pull)
            else:
                self._pull_scheduled = False

    def _into_flight(self, items: list, nbytes: int) -> None:
        # (the sender's queue lock is held) What leaves the queue is in flight until delivered.
        self._inflight = nbytes

    def _pull(self) -> None:
        """Take a batch from the peer's send queue and deliver it (loop side)."""
        self._pull_scheduled = False  # (first: a package queued from now on schedules another pull)
        src = self.peer
        if src is None or not self._reading or self.read_holds or self.state not in (CONNECTED, CLOSING):
            return
        items = src.sendq.take(_TAKE_COUNT, src._into_flight, _TAKE_BYTES)
        if items:
            nbytes = src._inflight
            limit = self.config.max_package_size
            packages = items
            sizes = list(map(len, map(_data, items)))
            if max(sizes) > limit:
                length = next(size for size in sizes if size > limit)
                src._inflight = 0
                self.teardown(f"Package too large ({length} bytes; the limit is {limit}).")
                return
            if 0 in sizes:  # (an empty package carries nothing: dropped, as by the frame decoder)
                packages = [pkg for pkg, size in zip(items, sizes) if size]
            src.progress(nbytes)
            self.last_recv = time.monotonic()
            self.bytes_in += nbytes
            if self.is_timedout:
                self.note_received(0)
            try:
                if packages:
                    self.deliver(packages)
            finally:
                src._inflight = 0
                src.owner.flushed()
            if src.sendq:
                self._schedule_pull()  # (the rest in the next pass: other work gets its turn)
                return
        if src.state is CLOSING and not src.sendq and not src._inflight:
            # The peer is closing and we took all it had: its close signal.
            self.teardown(self.close_reason if self.state is CLOSING else REASON_PEER_CLOSED)

    # -- time (loop side) ------------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        if self.state is CLOSING:
            if self.closing_overdue(now):
                self.teardown(self.close_reason)
            return
        if self.state is not CONNECTED:
            return
        peer = self.peer
        if peer is not None and now - self.last_send >= HEARTBEAT_INTERVAL and not self.sendq:
            self.last_send = now
            peer._on_its_side(peer.note_received, 0)  # (our loop runs: the peer hears from us)
        self.check_silence(now)

    def _on_its_side(self, func: Callable[..., object], *args: Any) -> None:
        # Run func on this link's loop side (from the other end's).
        loop = self.loop
        if loop is not None and loop.running:
            loop.call_soon(func, *args)
        else:
            func(*args)

    # -- closing -----------------------------------------------------------------------

    def begin_close(self, reason: str) -> None:
        """Let the peer take what is queued, then close (loop side)."""
        if self.state is WAITING:
            self.teardown(reason)
        elif self.state is CONNECTED:
            self.start_closing(reason)
            peer = self.peer
            if peer is not None:
                peer._schedule_pull()  # (it takes the rest, then sees that we close)

    def teardown(self, reason: str | None) -> None:
        """Close at once; the peer learns it (loop side, or before I/O started)."""
        if self.state is CLOSED:
            return
        if self.state is WAITING:
            self.stop_listening()
        if self.loop is not None:
            self.loop.housekeepers.discard(self)
            if self._no_spin:
                self._no_spin = False
                self.loop.no_spin -= 1
        self._reading = False
        peer, self.peer = self.peer, None
        self._inflight = 0
        self.finish(reason)
        if peer is not None:
            peer._on_its_side(peer._peer_gone)

    def _peer_gone(self) -> None:
        # (loop side) The other end closed: after our close request, that ends ours;
        # otherwise the peer dropped us.
        if self.state is CLOSED:
            return
        self.teardown(self.close_reason if self.state is CLOSING else REASON_EOF)
