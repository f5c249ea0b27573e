"""The context: a node of the network that routes packages between its
connections and its channels.

Routing rules (yoton 2.2, PROTOCOL.md section 6):

* Sending: number the package (``source_seq``), stamp it with our id, and
  queue it on every live connection; with none, keep it in the startup queue,
  which the next connection made (bind or connect) takes over.
* Receiving from connection C: a package whose ``source_seq`` is not above
  the last one seen from its source is a duplicate and is dropped (this is
  what stops floods in meshes), as are our own packages coming back.
  Otherwise: broadcast (``dest_id == 0``) goes to every other live connection
  and is delivered here; addressed to us is only delivered here; addressed to
  someone else is only forwarded.
* Delivery numbers the package locally (``recv_seq``) and hands it to the
  channel registered for its slot, or, for slot 2, handles the context
  message (``NEW_CONNECTION``: state channels re-send their state).

Limits and flow control (the README's "Flow control" section has the table):

* A package body larger than ``max_package_size`` is refused on send
  (``ValueError``) and closes the connection it arrives on.
* Each connection's send queue holds at most ``max_queue_bytes`` (header +
  body; one package is always accepted into an empty queue). It applies
  backpressure: a sender waits for room (or, with ``block=False``, gets
  :class:`~yoton.errors.WouldBlock`) while the peer keeps taking data. A
  connection whose queue is full and whose peer has taken nothing for its
  ``timeout`` is *stalled*: senders no longer wait for it and its queue
  discards by the discard mode of ``queue_params`` (counted in
  ``statistics()['discarded_outgoing']``, logged once per episode) until
  the peer takes data again. The loop side never waits (it is what drains
  the queues): what it sends itself (protocol messages, forwarded packages)
  overshoots a full queue instead.
* The startup queue (no connection yet) is bounded the same way but has no
  peer to wait for: when full it discards by the discard mode (counted and
  logged), so a context whose peer never comes cannot hang its senders.
* A relay never drops for speed: forwarding into a full send queue stops
  reading from the connection the packages came from until it has room, so
  TCP's own flow control reaches the original sender.

Sending appends to one stage (a deque: atomic, in order, no lock); numbering
and queueing what is staged (the pump) happen under one lock, so packages
leave in the order of their sequence numbers even when many threads send at
once.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from itertools import islice

from .errors import ChannelClosedError, FlushTimeout, WouldBlock
from .queues import BoundedQueue, Policy
from .transport.connection import DIRECT_GAP, REASON_CONTEXT, ConnectionCollection, TcpConnection
from .transport.ioloop import IOLoop, MainSending, default_spin
from .wire.frames import CONTROL, DEFAULT_MAX_PACKAGE_SIZE, HEADER, HEADER_SIZE, SLOT_CONTEXT
from .wire.naming import new_id

log = logging.getLogger("yoton")

__all__ = ["Context", "DEFAULT_MAX_QUEUE_BYTES"]

DEFAULT_QUEUE_PARAMS = (10000, "old")
DEFAULT_MAX_QUEUE_BYTES = 256 << 20  #: 256 MiB per queue
#: The de-duplication map remembers this many sources (the least recently
#: seen are forgotten first): a peer inventing ids cannot grow it for ever.
MAX_SOURCES = 65536
#: A package from a known source (not a direct peer) more than this far ahead
#: of the last one seen is refused: accepting it would drop that source's
#: next packages as duplicates. (Real gaps come from discards: far fewer.)
MAX_SEQ_JUMP = 1 << 32
_NEW_CONNECTION = b"NEW_CONNECTION"
_CLOSE_CONNECTION = b"CLOSE_CONNECTION"


_open_contexts: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _close_open_contexts() -> None:
    """At interpreter exit, close contexts nicely so queued packages still go out."""
    for ctx in list(_open_contexts):
        try:
            ctx.close()
        except Exception:
            log.exception("yoton: error closing %r at exit", ctx)


def _check_queue_params(queue_params):
    if queue_params is None:
        return DEFAULT_QUEUE_PARAMS
    if not isinstance(queue_params, (tuple, list)) or len(queue_params) != 2:
        raise ValueError(f"queue_params must be a (size, 'old'|'new') tuple, not {queue_params!r}")
    size, mode = queue_params
    if isinstance(mode, str):
        mode = mode.lower()  # yoton 2.2 accepted 'OLD' / 'New'
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"queue_params size must be a positive int, not {size!r}")
    if mode not in ("old", "new"):
        raise ValueError(f"queue_params discard mode must be 'old' or 'new', not {mode!r}")
    return (size, mode)


def _check_byte_limit(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (bytes), not {value!r}")
    return value


def _check_spin(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"spin must be a number of seconds from 0 to 1, not {value!r}")
    return float(value)


_MAIN_THREAD = threading.main_thread()

#: Bodies up to this size may wait on the stage (larger ones are pumped at once).
_STAGE_BODY = 4096
#: The sender pumps itself when this many packages are staged (so the stage
#: holds at most 4 MiB of bodies), or fewer: the stage holds at most a
#: quarter of max_queue_bytes.
_STAGE_ITEMS = 1024


class Context:
    """A node in a yoton network.

    Bind or connect it to other contexts (in this process, another process or
    another machine) and attach channels to it. Packages sent while the
    context has no connection wait in a startup queue and go to the first
    connection made.

    ``queue_params`` is ``(size, 'old'|'new')``: how many messages a receiving
    channel keeps, and whether the oldest or the newest is discarded when a
    queue is full (default ``(10000, 'old')``). ``max_queue_bytes`` (default
    256 MiB) caps the bytes waiting in each queue: a receiving channel's
    queue (message bodies) and each send queue (one per connection, and the
    startup queue; header + body). A full queue discards by the same mode;
    channels count their discards in ``statistics()['discarded']``, the
    context counts those of its send queues in
    ``statistics()['discarded_outgoing']``. The cap counts message bytes,
    not Python's overhead (some 150-250 bytes per queued package).
    ``max_package_size`` (bytes, default 1 GiB) is the largest message body
    this context sends (a larger one raises ``ValueError``) or accepts from
    a peer (a larger one closes that connection with a reason).
    Bad limits raise ``ValueError``.

    ``auth_key`` (bytes or str; default None) makes every connection of this
    context prove, right after the yoton handshake, that both ends know the
    same key (mutual HMAC-SHA256 challenge-response with fresh nonces). A peer
    without it — including yoton 2.2 — is refused with the reason
    "authentication failed" and nothing it sent is delivered. Both ends must
    be given the key. It authenticates peers; it does not encrypt: combine it
    with ``tls://`` addresses for that.

    ``spin`` (seconds, default 200 µs on a machine with more than one CPU,
    else 0) is how long a thread waiting for a message (``recv``,
    ``Future.result``, a replier's worker) keeps polling the sockets before
    it goes to sleep. An answer that comes within that time is taken without
    the thread being put to sleep and woken, which on a loopback costs more
    than the answer itself: a round trip takes about half as long. The price
    is up to ``spin`` seconds of CPU per wait. 0 turns polling off.
    """

    def __init__(self, verbose=0, queue_params=None, *, max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE,
                 auth_key=None, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES, spin: float | None = None):
        self._verbose = int(verbose)
        self._queue_params = _check_queue_params(queue_params)
        self._max_package_size = _check_byte_limit("max_package_size", max_package_size)
        self._max_queue_bytes = _check_byte_limit("max_queue_bytes", max_queue_bytes)
        if isinstance(auth_key, str):
            auth_key = auth_key.encode("utf-8")
        if auth_key is not None and not (isinstance(auth_key, bytes) and auth_key):
            raise ValueError(f"auth_key must be non-empty bytes or str, not {type(auth_key).__name__}")
        self._auth_key = auth_key
        self._spin = default_spin() if spin is None else _check_spin(spin)
        self._id = new_id()
        self._lock = threading.RLock()
        self._seq = 0
        self._connections: list = []
        self._live: tuple = ()  # the CONNECTED connections: where packages go
        self._startup = BoundedQueue(max_bytes=self._max_queue_bytes,
                                     policy=Policy.for_discard_mode(self._queue_params[1]),
                                     name="the startup queue (no connection yet)")
        self._stage: deque = deque()  # (slot, body, dest_id, dest_seq) sent, not yet numbered
        self._stage_items = max(1, min(_STAGE_ITEMS, self._max_queue_bytes // (4 * _STAGE_BODY)))
        self._pump_scheduled = False  # a _pump_on_loop is queued on the loop
        self._pump_after = 0.0  # (monotonic) until then, small sends are pumped on the loop
        # Backpressure: _pressure is set when a send queue fills up; senders
        # then look for room under _room (see _wait_room). Read without a
        # lock on the fast path: a stale False lets one more package by.
        self._pressure = False
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self._closing = False  # in close(): senders waiting for room give up
        self._discarded_closed = 0  # send-queue discards of connections gone since
        self._last_seq: dict = {}  # source id -> last source_seq seen (least recently seen first)
        self._direct: dict = {}  # peer id -> its connected connection (what only it may speak for)
        self._refused = 0  # packages refused by the routing rules
        self._refusals_logged: set = set()
        self._recv_seq = 0
        self._send_slots: dict = {}
        self._recv_slots: dict = {}
        self._channels: "weakref.WeakSet" = weakref.WeakSet()
        self._loop: IOLoop | None = None
        self._flush_cond = threading.Condition()
        self._flush_waiters = 0

    def __repr__(self):
        return f"<yoton.Context {self._id:016x} with {self.connection_count} connection(s)>"

    # -- properties ---------------------------------------------------------

    @property
    def id(self) -> int:
        """The 64-bit id of this context (unique in the network)."""
        return self._id

    @property
    def connections(self) -> ConnectionCollection:
        """The connected connections (indexable by position or name)."""
        return ConnectionCollection(c for c in self._connections if c.is_connected)

    @property
    def connections_all(self) -> ConnectionCollection:
        """All connections, including binds still waiting for a peer."""
        return ConnectionCollection(self._connections)

    @property
    def connection_count(self) -> int:
        """The number of connected contexts (use as a bool: 'am I connected?')."""
        return sum(1 for c in self._connections if c.is_connected)

    @property
    def queue_params(self) -> tuple:
        """``(size, discard_mode)`` used by receiving channels of this context."""
        return self._queue_params

    @property
    def max_package_size(self) -> int:
        """Largest message body (bytes) this context sends or accepts from a peer."""
        return self._max_package_size

    @property
    def max_queue_bytes(self) -> int:
        """Most bytes waiting in any one queue (a channel's receive queue, a send queue)."""
        return self._max_queue_bytes

    def statistics(self) -> dict:
        """Counters of the send side.

        ``queued_bytes``: bytes accepted for sending and not yet written to
        the network (all connections and the startup queue; a snapshot).
        ``discarded_outgoing``: packages dropped, counted once per
        connection: by a stalled connection's queue, by the startup queue
        when full, and those still queued when a connection broke.
        ``refused``: packages from peers refused by the routing rules (one
        claiming the id of a peer connected on another link, or jumping
        implausibly far ahead in its source's numbering).
        """
        self._pump_now()  # (staged packages are queued, or discarded, first)
        startup = self._startup
        queued, discarded = startup.bytes, startup.discarded + self._discarded_closed
        for conn in list(self._connections):
            queued += conn._sendq.bytes + sum(map(len, list(conn._wbufs)))
            discarded += conn._sendq.discarded
        return {"queued_bytes": queued, "discarded_outgoing": discarded, "refused": self._refused}

    # -- connecting ---------------------------------------------------------

    def bind(self, address: str, max_tries: int = 1, name: str = "", *, ssl_context=None) -> TcpConnection:
        """Listen on ``address`` ('host:port') for one peer context; return the connection.

        Returns at once with a waiting connection; the I/O thread accepts the
        first client that completes the yoton handshake and refuses others
        (non-yoton clients get an error line). With ``max_tries`` > 1, other
        ports after ``port`` are tried when it is taken; ``port1`` of the
        returned connection tells which one was bound.

        A ``tls://host:port`` address needs ``ssl_context``, an
        :class:`ssl.SSLContext` for the server side with a certificate
        loaded; the yoton handshake and all packages then travel inside TLS.
        Clients that do not speak TLS are refused.
        """
        conn = TcpConnection(self, name)
        conn._bind(address, max_tries, ssl_context)
        return conn

    def connect(self, address: str, timeout: float = 1.0, name: str = "", *, ssl_context=None) -> TcpConnection:
        """Connect to a context bound at ``address``; return the connection.

        Retries until ``timeout`` seconds have passed, then raises
        :class:`~yoton.errors.ConnectError` (an ``OSError``). A peer that
        answers but is not yoton raises
        :class:`~yoton.errors.HandshakeError`; one that fails the auth_key
        check raises :class:`~yoton.errors.AuthenticationError`.

        A ``tls://host:port`` address connects with TLS, verifying the
        server's certificate for ``host`` with ``ssl_context`` (default:
        ``ssl.create_default_context()``, the system's trusted CAs); a failed
        TLS handshake raises :class:`~yoton.errors.TLSError` (a ``ConnectError``).
        """
        conn = TcpConnection(self, name)
        conn._connect(address, timeout, ssl_context)
        self._send(SLOT_CONTEXT, _NEW_CONNECTION)
        return conn

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued package has been written to the network.

        Raises :class:`~yoton.errors.FlushTimeout` (a ``TimeoutError``) if that
        takes longer than ``timeout`` seconds.
        """
        self._wait_flushed(list(self._connections), timeout, startup=True)

    def close(self) -> None:
        """Close all connections (telling the peers) and all channels.

        The context can be bound or connected again afterwards. Senders
        waiting for room in a send queue get ``ChannelClosedError``.
        """
        self._closing = True
        self._room_changed()
        self._pump_now()  # (what was sent goes out before the close signal)
        loop = self._loop
        conns = list(self._connections)
        if loop is not None and loop.running:
            for conn in conns:
                loop.call_soon(conn._begin_close, REASON_CONTEXT)
            if not loop.in_io_thread():
                for conn in conns:  # each flushes for as long as its peer keeps reading
                    conn._wait_done()
        for conn in conns:
            conn._teardown(REASON_CONTEXT)  # no-op for those already closed
        self.close_channels()
        with self._lock:
            self._loop = None
            self._stage.clear()
            self._startup.discard_all()  # (no peer ever took them: counted)
        _open_contexts.discard(self)
        if loop is not None:
            loop.stop()
        self._pump_scheduled = False  # (a pump queued on that loop may never have run)
        self._closing = False

    def close_channels(self) -> None:
        """Close every channel attached to this context; connections stay."""
        for channel in list(self._channels):
            channel.close()

    # -- connection bookkeeping (transport calls these) -----------------------

    def _ensure_loop(self) -> IOLoop:
        with self._lock:
            if self._loop is None or not self._loop.running:
                self._loop = IOLoop(name=f"yoton-io-{self._id:016x}", spin=self._spin)
                self._pump_scheduled = False  # (one queued on an old loop may never have run)
                _open_contexts.add(self)
            return self._loop

    def _attach_connection(self, conn) -> IOLoop:
        loop = self._ensure_loop()
        conn._loop = loop
        with MainSending(), self._lock:
            self._connections.append(conn)
            if conn.is_connected:
                self._go_live(conn)
        if conn.is_connected:
            loop.call_soon(conn._start_io, loop)
        return loop

    def _go_live(self, conn) -> None:
        """``conn`` is connected: packages go to it from now on; the first one
        takes the startup queue (under _lock)."""
        self._pump()  # (what is staged goes first, into the startup queue if no one is live)
        if self._startup:
            items = self._startup.take()
            sizes = [HEADER_SIZE + len(body) for _, body in items]
            conn._enqueue_many(items, sizes, sum(sizes))
        self._update_live()

    def _connection_established(self, conn) -> None:
        log.log(logging.INFO if self._verbose else logging.DEBUG,
                "yoton: %016x accepted %016x on port %d", self._id, conn.id2, conn.port1)
        with self._lock:
            self._go_live(conn)

    def _detach_connection(self, conn) -> None:
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
                self._discarded_closed += conn._sendq.discarded
            self._update_live()

    def _update_live(self) -> None:
        with self._lock:
            self._live = live = tuple(c for c in self._connections if c.is_connected)
            self._direct = {c.id2: c for c in live}
        self._room_changed()  # (senders waiting for a connection that left look again)

    def _room_changed(self) -> None:
        """A send queue drained, stalled or left (any thread): wake waiting senders."""
        if self._room_waiters:
            with self._room:
                self._room.notify_all()

    def _wait_room(self, size: int, block) -> None:
        """Wait until every live connection has room for ``size`` more bytes or
        is stalled (a sending thread; see the module docstring). ``block``:
        True waits as long as it takes, False not at all, a number at most
        that many seconds; then :class:`WouldBlock` is raised."""
        loop = self._loop
        if loop is not None and loop.in_io_thread():
            return  # (the loop side drains the queues: it must never wait for them)
        deadline = None
        if block is not True:
            if isinstance(block, bool) or not isinstance(block, (int, float)):
                if block is not False:
                    raise ValueError(f"block must be True, False or a number of seconds, not {block!r}")
            else:
                deadline = time.monotonic() + block
        with self._room:
            self._room_waiters += 1
            try:
                while True:
                    if self._closing:
                        raise ChannelClosedError("the context is closing: the message was not sent")
                    full = [c for c in self._live if not c._has_room(size)]
                    if not full:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if block is False or (remaining is not None and remaining <= 0):
                        names = ", ".join(repr(c.name) for c in full)
                        raise WouldBlock(f"the send queue of connection {names} is full "
                                         f"(the peer is slower than the sender)"
                                         + ("" if block is False else f"; waited {block} s"))
                    self._room.wait(remaining)
            finally:
                self._room_waiters -= 1
            self._pressure = any(c._sendq.full and not c._stalled for c in self._live)

    def _notify_flushed(self) -> None:
        if self._flush_waiters:
            with self._flush_cond:
                self._flush_cond.notify_all()

    def _wait_flushed(self, conns: list, timeout: float, startup: bool = False) -> None:
        self._pump_now()  # (what is staged counts as sent: it goes to the queues first)
        loop = self._loop
        if loop is None or loop.in_io_thread():
            return
        deadline = time.monotonic() + float(timeout)
        with self._flush_cond:
            self._flush_waiters += 1
            try:
                while True:
                    left = [c for c in conns if c._unflushed()]
                    if startup and self._startup and self._connections:
                        left.append("the startup queue")  # (a waiting bind's peer would take it)
                    if not left:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FlushTimeout(
                            f"flush timed out after {timeout} s with packages still queued "
                            f"on {len(left)} connection(s)")
                    self._flush_cond.wait(remaining)
            finally:
                self._flush_waiters -= 1

    # -- channels (the channel layer calls these) ----------------------------

    def _register_channel(self, channel, slot_out: int | None, slot_in: int | None) -> None:
        with self._lock:
            if slot_out is not None and slot_out in self._send_slots:
                raise ValueError(f"Slot not free: {channel.slot_outgoing} already has a sending channel here")
            if slot_in is not None and slot_in in self._recv_slots:
                raise ValueError(f"Slot not free: {channel.slot_incoming} already has a receiving channel here")
            if slot_out is not None:
                self._send_slots[slot_out] = channel
            if slot_in is not None:
                self._recv_slots[slot_in] = channel
            self._channels.add(channel)

    def _unregister_channel(self, channel) -> None:
        with self._lock:
            for table in (self._send_slots, self._recv_slots):
                for slot, ch in list(table.items()):
                    if ch is channel:
                        del table[slot]
            self._channels.discard(channel)

    def _send(self, slot: int, body, dest_id: int = 0, dest_seq: int = 0, block=True,
              force: bool = False) -> None:
        """Number a package and queue it on every live connection (any thread).

        Raises ``ValueError`` for a body over ``max_package_size``. While a
        send queue is full, waits for room as ``block`` says (see
        :meth:`_wait_room`; :class:`WouldBlock` when it cannot); ``force``
        (protocol messages) never waits and is never refused.

        The package goes on the stage first (one atomic append, no lock);
        :meth:`_pump` numbers and queues what is staged, in order. The
        sending thread pumps itself when sends are sparse (at most once per
        ``DIRECT_GAP``), when the stage is full and for large bodies; in
        between, a stream of small sends is pumped in batches on the loop
        side, one lock and one write for many packages.
        """
        size = len(body)
        if size > self._max_package_size:
            raise ValueError(f"message too large to send: {size} bytes encoded, "
                             f"but max_package_size is {self._max_package_size}")
        if self._pressure and not force:
            self._wait_room(HEADER_SIZE + size, block)
        stage = self._stage
        stage.append((slot, body, dest_id, dest_seq))
        if size <= _STAGE_BODY and len(stage) < self._stage_items:
            loop = self._loop
            running = loop is not None and loop._running
            if self._pump_scheduled and running:
                return  # (it is cleared before the pump takes the stage: ours is in)
            now = time.monotonic()
            if now < self._pump_after:
                if not running:
                    return  # no connection yet: the next one made pumps (see _attach_connection)
                self._pump_scheduled = True
                loop.call_soon(self._pump_on_loop)
                if loop._running:
                    return
                self._pump_scheduled = False  # (it stopped meanwhile: that call may never run)
            self._pump_after = now + DIRECT_GAP
        self._pump_now()

    def _pump_now(self) -> None:
        """Pump in this thread (any thread; in the main thread, a Ctrl-C waits
        for the end: it must not cut a write in half)."""
        if threading.current_thread() is _MAIN_THREAD:
            with MainSending(), self._lock:
                self._pump()
        else:
            with self._lock:
                self._pump()

    def _pump_on_loop(self) -> None:
        self._pump_scheduled = False  # (before the stage is taken; see _send)
        # A stream goes on being pumped here: a send right after this one
        # does not write by itself, so the sender makes no system call (each
        # would let this thread take the GIL from it, and back, per call).
        self._pump_after = time.monotonic() + DIRECT_GAP
        with self._lock:
            self._pump()

    def _pump(self) -> None:
        """Number what is staged and queue it on every live connection (under _lock)."""
        stage = self._stage
        count = len(stage)
        if not count:
            return
        pop, pack, my_id, seq = stage.popleft, HEADER.pack, self._id, self._seq
        items, sizes, total = [], [], 0
        for _ in range(count):
            slot, body, dest_id, dest_seq = pop()
            seq += 1
            size = len(body)
            items.append((pack(CONTROL, slot, my_id, seq, dest_id, dest_seq, size), body))
            sizes.append(HEADER_SIZE + size)
            total += size
        self._seq = seq
        total += HEADER_SIZE * count
        live = self._live
        if not live:
            self._startup.put_many(items, sizes, total)  # (discards by the mode when full)
            return
        for conn in live:
            conn._enqueue_many(items, sizes, total)
            if not self._pressure and conn._sendq.full and not conn._stalled:
                self._pressure = True

    # -- routing (loop side: the I/O thread, or a thread in IOLoop.run_until) --

    def _route(self, conn, packages: list) -> None:
        """Route the packages that arrived on ``conn``, in order (loop side).

        Each package follows the rules at the top of this module; the
        packages for one channel are handed to it in one call, in order.
        """
        last_seq, my_id, slots, direct = self._last_seq, self._id, self._recv_slots, self._direct
        forward = len(self._live) > 1
        recv_seq = self._recv_seq
        batches: dict = {}  # channel -> its packages
        slot_now = batch = None  # (runs of packages for one slot skip the lookups)
        # Runs of packages from one source look the source up once. Its entry
        # leaves the map during the run and goes back in at the end: the map
        # is kept in least-recently-seen order for _forget_sources.
        source_now = last_now = None
        taken = False  # whether packages of the current source are taken at all
        checked = False  # whether the current source is a direct peer (on this connection)
        try:
            for pkg in packages:
                source, seq = pkg.source_id, pkg.source_seq
                if source != source_now:
                    if taken:
                        last_seq[source_now] = last_now
                    source_now = source
                    owner = direct.get(source)
                    taken = source != my_id and (owner is None or owner is conn)
                    if not taken:
                        # Ours coming back, or a direct peer's package relayed by another
                        # (only its own link counts: in a mesh, that is a duplicate).
                        last_now = None if source == my_id else last_seq.get(source, 0)
                        if last_now is not None and seq > last_now:
                            self._refuse(conn, "spoof", source)
                        continue
                    checked = owner is not None
                    last_now = last_seq.pop(source, 0)
                elif not taken:
                    if last_now is not None and seq > last_now:
                        self._refuse(conn, "spoof", source)
                    continue
                if seq <= last_now:
                    continue
                if seq - last_now > MAX_SEQ_JUMP and last_now and not checked:
                    self._refuse(conn, "jump", source)  # (it would silence that source)
                    continue
                last_now = seq
                dest = pkg.dest_id
                if dest != my_id:
                    if forward:
                        self._forward(conn, pkg)
                    if dest:
                        continue
                recv_seq += 1
                pkg.recv_seq = recv_seq
                slot = pkg.slot
                if slot != slot_now:
                    if slot == SLOT_CONTEXT:
                        self._recv_seq = recv_seq
                        self._context_message(conn, pkg)
                        continue
                    slot_now, channel = slot, slots.get(slot)
                    batch = None if channel is None else batches.setdefault(channel, [])
                if batch is not None:
                    batch.append(pkg)
        finally:
            if taken:
                last_seq[source_now] = last_now
            if len(last_seq) > MAX_SOURCES:
                self._forget_sources()
        self._recv_seq = recv_seq
        for channel, batch in batches.items():
            try:
                channel._receive_many(batch, conn)
            except Exception:
                log.exception("yoton: channel %r failed to take packages", channel)

    def _forget_sources(self) -> None:
        """Keep the de-duplication map bounded: forget the sources seen least
        recently (loop side). A source forgotten and seen again starts afresh."""
        last_seq = self._last_seq
        for source in list(islice(last_seq, len(last_seq) - MAX_SOURCES * 7 // 8)):
            del last_seq[source]

    def _refuse(self, conn, why: str, source: int) -> None:
        """Count a package refused by the routing rules; log once per connection and reason.

        A direct peer's package that another link delivers ahead of its own
        link is refused (its own link brings it) and logged at DEBUG only: in
        a mesh that happens when the direct link is the slower path. A jump
        of 2**32 in a source's numbering never happens by itself: WARNING.
        """
        self._refused += 1
        key = (id(conn), why)
        if key not in self._refusals_logged:
            self._refusals_logged.add(key)
            if why == "spoof":
                log.debug("yoton: connection %r delivered a package of %016x ahead of that peer's "
                          "own link: refused (counted in statistics()['refused'])", conn.name, source)
            else:
                log.warning("yoton: connection %r sent a package that jumps implausibly far ahead in "
                            "the numbering of %016x: refused (further ones are counted in "
                            "statistics()['refused'], not logged)", conn.name, source)

    def _forward(self, conn, pkg) -> None:
        """Queue a package from ``conn`` on every other live connection (loop side)."""
        item = (pkg.header(), pkg.data)
        size = HEADER_SIZE + len(pkg.data)
        for other in self._live:
            if other is not conn:
                other._enqueue_many((item,), (size,), size)
                if other._sendq.full and not other._stalled:
                    other._hold_upstream(conn)  # (TCP then slows the sender down)

    def _context_message(self, conn, pkg) -> None:
        text = bytes(pkg.data)
        if text == _NEW_CONNECTION:
            for channel in list(self._channels):
                hook = getattr(channel, "_on_new_connection", None)
                if hook is not None:
                    try:
                        hook()
                    except Exception:
                        log.exception("yoton: %r failed to re-send its state", channel)
        elif text == _CLOSE_CONNECTION:
            if conn.id2 == pkg.source_id:  # (only the peer itself may ask)
                conn._begin_close("Closed on request of the other context.")
        else:
            log.debug("yoton: ignored unknown context message %r", text[:80])
