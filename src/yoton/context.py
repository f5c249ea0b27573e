"""The context: a node of the network that routes packages between its
connections and its channels.

Two objects: the :class:`Context` is what the user holds (bind, connect,
channels, close); its :class:`Router` does the routing and is what the
layers around it talk to -- the links below report to it (it is their
:class:`~yoton.transport.link.LinkOwner`) and the channels above send,
register and wait through it (never through the context's internals).

Routing rules (yoton 2.2's; docs/protocol.md section 6):

* Sending: number the package (``source_seq``), stamp it with our id, and
  queue it on every live link (connected, or reconnecting: it waits in that
  link's send queue for the re-dial); with none, keep it in the startup
  queue, which the next link to connect takes over. A bind still waiting
  for its peer holds nothing.
* Receiving from connection C: a package whose ``source_seq`` is not above
  the last one seen from its source is a duplicate and is dropped (this is
  what stops floods in meshes), as are our own packages coming back.
  Otherwise: broadcast (``dest_id == 0``) goes to every other live link and
  is delivered here; addressed to us is only delivered here; addressed to
  someone else is only forwarded.
* What one peer may not say in another's name: a package whose source is a
  peer connected on another link (only that link speaks for it); one that
  jumps more than :data:`MAX_SEQ_JUMP` ahead of its source's numbering
  (accepting it would silence that source); ``CLOSE_CONNECTION`` from
  anyone but the peer of that link. Refused packages are counted.
  The de-duplication map keeps the :data:`MAX_SOURCES` sources seen most
  recently.
* Delivery numbers the package locally (``recv_seq``) and hands it to the
  channel registered for its slot, or, for slot 2, handles the context
  message (``NEW_CONNECTION``: channels that asked to hear of new peers --
  state channels -- re-send their state).
* A link that re-dialled its lost peer announces this context again as a
  new connection does: the states its own channels set are re-sent, then
  ``NEW_CONNECTION``, so the peer's states come back.

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
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from itertools import islice
from operator import itemgetter
from threading import get_ident
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence

from .errors import ChannelClosedError, FlushTimeout, WouldBlock
from .queues import BoundedQueue, Policy
from .transport import connection as _links
from .transport.connection import REASON_CONTEXT, Connection, ConnectionCollection
from .transport.ioloop import IOLoop, default_spin
from .transport.link import LinkConfig, package_size, packages_size
from .transport.sigint import MAIN_IDENT, MainSending, shield_enter, shield_exit
from .transport.stream import DIRECT_GAP
from .wire.frames import CONTROL, DEFAULT_MAX_PACKAGE_SIZE, HEADER, HEADER_SIZE, SLOT_CONTEXT, Package
from .wire.naming import new_id

if TYPE_CHECKING:
    import ssl

    from .transport.link import Link
    from .transport.reconnect import ReconnectPolicy

log = logging.getLogger("yoton")

__all__ = ["Context", "Router", "DEFAULT_MAX_QUEUE_BYTES", "MAX_SOURCES", "MAX_SEQ_JUMP"]

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

#: Bodies up to this size may wait on the stage (larger ones are pumped at once).
_BODY = itemgetter(1)  # (of a staged (slot, body, dest_id, dest_seq))
_STAGE_BODY = 4096
#: The sender pumps itself when this many packages are staged (so the stage
#: holds at most 4 MiB of bodies), or fewer: the stage holds at most a
#: quarter of max_queue_bytes.
_STAGE_ITEMS = 1024


_open_contexts: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_contexts() -> None:
    """At interpreter exit, close contexts nicely so queued packages still go out."""
    for ctx in list(_open_contexts):
        try:
            Context.close(ctx)  # (the blocking close, also for yoton.asyncio's contexts)
        except Exception:
            log.exception("yoton: error closing %r at exit", ctx)


def _check_queue_params(queue_params: object) -> tuple[int, str]:
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


def _check_byte_limit(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int (bytes), not {value!r}")
    return value


def _check_spin(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"spin must be a number of seconds from 0 to 1, not {value!r}")
    return float(value)


class Context:
    """A node in a yoton network.

    Bind or connect it to other contexts (in this process, another process or
    another machine) and attach channels to it. Packages sent while the
    context has no connection wait in a startup queue and go to the first
    connection made.

    ``queue_params`` is ``(size, 'old'|'new')``: how many messages a receiving
    channel keeps, and whether the oldest or the newest is discarded when it
    is full (default ``(10000, 'old')``; a SubChannel in sync mode never
    discards). ``max_queue_bytes`` (default 256 MiB) bounds the bytes
    waiting in each queue: a receiving channel's queue (message bodies),
    each connection's send queue and the startup queue (header + body). A
    full send queue holds senders back while its peer takes data (see the
    README's "Flow control"); the cap counts message bytes, not Python's
    overhead (some 150-250 bytes per queued package). ``max_package_size``
    (bytes, default 1 GiB) is the largest message body this context sends
    (a larger one raises ``ValueError``) or accepts from a peer (a larger
    one closes that connection with a reason). Bad limits raise ``ValueError``.

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

    ``poller`` ("epoll" or "select"; default: epoll where the platform has
    it, or the environment variable ``YOTON_POLLER``) chooses how the
    context waits for its sockets: with epoll a thread waiting for a message
    serves its sockets itself; with select (the portable path) the I/O
    thread alone does.

    ``introspect`` (default False) makes the context answer the statistics
    queries of a monitor anywhere in its network (``yoton monitor``; see
    :mod:`yoton.introspect`): its id, process, connections and channels
    with their counters. Off, it answers nothing (it still forwards them).

    ``verbose`` (default 0; yoton 2.2's first argument): non-zero logs each
    connection made or made again at INFO on the ``"yoton"`` logger.
    """

    def __init__(
        self,
        verbose: int = 0,
        queue_params: tuple[int, str] | None = None,
        *,
        max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE,
        auth_key: bytes | str | None = None,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        spin: float | None = None,
        poller: str | None = None,
        introspect: bool = False,
    ) -> None:
        self._verbose = int(verbose)
        self._queue_params = _check_queue_params(queue_params)
        max_package_size = _check_byte_limit("max_package_size", max_package_size)
        max_queue_bytes = _check_byte_limit("max_queue_bytes", max_queue_bytes)
        if isinstance(auth_key, str):
            auth_key = auth_key.encode("utf-8")
        if auth_key is not None and not (isinstance(auth_key, bytes) and auth_key):
            raise ValueError(f"auth_key must be non-empty bytes or str, not {type(auth_key).__name__}")
        spin = default_spin() if spin is None else _check_spin(spin)
        if poller is not None and poller not in ("epoll", "select"):
            raise ValueError(f"poller must be 'epoll' or 'select', not {poller!r}")
        config = LinkConfig(
            local_id=new_id(),
            max_package_size=max_package_size,
            max_queue_bytes=max_queue_bytes,
            discard_mode=self._queue_params[1],
            auth_key=auth_key,
        )
        #: The routing engine: what channels and links talk to (see :class:`Router`).
        self.router = Router(self, config, self._queue_params, spin, poller)
        self._introspection = None
        if introspect:
            from .introspect import IntrospectionService  # (a service on top of this layer)

            self._introspection = IntrospectionService(self)

    def __repr__(self) -> str:
        return f"<yoton.Context {self.id:016x} with {self.connection_count} connection(s)>"

    # -- properties ---------------------------------------------------------

    @property
    def id(self) -> int:
        """The 64-bit id of this context (unique in the network)."""
        return self.router.id

    @property
    def connections(self) -> ConnectionCollection:
        """The connected connections (indexable by position or name), including
        those a bind with ``max_connections`` above 1 made for its further peers."""
        return ConnectionCollection(link.handle for link in self.router.links if link.is_connected)

    @property
    def connections_all(self) -> ConnectionCollection:
        """All connections, including binds still waiting for a peer and
        connections re-dialling a lost one."""
        return ConnectionCollection(link.handle for link in self.router.links)

    @property
    def connection_count(self) -> int:
        """The number of connected contexts (use as a bool: 'am I connected?')."""
        return sum(1 for link in self.router.links if link.is_connected)

    @property
    def queue_params(self) -> tuple:
        """``(size, discard_mode)`` used by receiving channels of this context."""
        return self._queue_params

    @property
    def max_package_size(self) -> int:
        """Largest message body (bytes) this context sends or accepts from a peer."""
        return self.router.config.max_package_size

    @property
    def max_queue_bytes(self) -> int:
        """Most bytes waiting in any one queue (a channel's receive queue, a send queue)."""
        return self.router.config.max_queue_bytes

    @property
    def introspect(self) -> bool:
        """Whether this context answers a monitor's statistics queries (``Context(introspect=True)``)."""
        return self._introspection is not None

    @property
    def spin(self) -> float:
        """Seconds a thread waiting for a message polls before it sleeps (see the class docstring)."""
        return self.router.spin

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
        Each connection has figures of its own: ``Connection.statistics()``.
        """
        return self.router.statistics()

    # -- connecting ---------------------------------------------------------

    def bind(
        self,
        address: str,
        max_tries: int = 1,
        name: str = "",
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int | None = 1,
        mode: int | None = None,
    ) -> Connection:
        """Listen on ``address`` for peer contexts; return the connection.

        Returns at once with a waiting connection; the I/O thread accepts the
        first client that completes the yoton handshake and refuses others
        (non-yoton clients get an error line). With ``max_tries`` > 1, other
        ports after ``port`` are tried when it is taken; port 0 lets the
        system choose a free one; ``port1`` (or ``port``) of the returned
        connection tells which one was bound. Raises
        :class:`~yoton.errors.BindError` when none is free (saying which
        ports were tried and why each failed).

        ``max_connections`` (default 1, as yoton 2.2) is how many peers the
        bind serves at a time; ``None``: no limit. The returned connection is
        the first peer's; each further peer gets a connection of its own,
        listed in :attr:`connections` and announced by the returned
        connection's ``accepted`` signal ``(bind_connection, connection)``
        (emitted for the first peer too). A bind with 1 stops listening once
        its peer is connected; with more it keeps listening (refusing peers
        while full) until ``close()`` is called on the returned connection or
        the context closes.

        Addresses (the README's "Transports"): ``[tcp://]host:port``;
        ``tls://host:port`` needs ``ssl_context``, an :class:`ssl.SSLContext`
        for the server side with a certificate loaded (the yoton handshake and
        all packages then travel inside TLS; clients that do not speak TLS are
        refused); ``ipc://PATH``, a Unix domain socket (Linux, macOS), whose
        file permissions decide who may connect (``mode``, e.g. ``0o600``;
        default: the umask's); ``itc://NAME``, for contexts of this process
        (no sockets).
        """
        options: dict = {}
        if max_tries != 1:
            options["max_tries"] = max_tries
        if ssl_context is not None:
            options["ssl_context"] = ssl_context
        if max_connections != 1:
            options["max_connections"] = max_connections
        if mode is not None:
            options["mode"] = mode
        conn = _links.connection_class(address)(self, name)
        _links.bind(self.router, conn, address, **options)
        return conn

    def connect(
        self,
        address: str,
        timeout: float = 1.0,
        name: str = "",
        *,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: bool | ReconnectPolicy | None = False,
        **options: Any,
    ) -> Connection:
        """Connect to a context bound at ``address``; return the connection.

        Retries until ``timeout`` seconds have passed, then raises
        :class:`~yoton.errors.ConnectError` (an ``OSError``). A peer that
        answers but is not yoton raises
        :class:`~yoton.errors.ConnectHandshakeError`; one that fails the
        auth_key check raises :class:`~yoton.errors.AuthenticationError`.

        A ``tls://host:port`` address connects with TLS, verifying the
        server's certificate for ``host`` with ``ssl_context`` (default:
        ``ssl.create_default_context()``, the system's trusted CAs); a failed
        TLS handshake raises :class:`~yoton.errors.TLSError` (a ``ConnectError``).
        ``ipc://PATH`` and ``itc://NAME`` reach binds on a Unix socket and in
        this process.

        ``reconnect`` (``tcp``, ``tls`` and ``ipc``; default False): True, or
        a :class:`yoton.ReconnectPolicy`, makes the connection re-dial when it
        loses its peer (the process died, the stream broke; not an orderly
        close): meanwhile it is ``is_reconnecting`` and sends queue on it
        within its send queue's bound; after each re-dial ``reconnected`` is
        emitted and the states of StateChannels are exchanged again;
        ``closed`` only when it gives up or is closed. The first connect must
        succeed within ``timeout`` as without it.

        A ``nats://host:port`` address (several comma-separated for a
        cluster) attaches the context to a NATS network instead (needs
        ``pip install 'yoton[nats]'``); ``options`` are for it: ``network``,
        ``keep_state``, ``lossless`` and nats-py's connect() options (see
        :mod:`yoton.transport.nats` and the README's "Scaling out with
        NATS"). An option the address's transport does not take raises
        ``ValueError``.
        """
        if ssl_context is not None:
            options["ssl_context"] = ssl_context
        if reconnect is not False and reconnect is not None:
            options["reconnect"] = reconnect
        conn = _links.connection_class(address)(self, name)
        _links.connect(self.router, conn, address, timeout, **options)
        self.router.send(SLOT_CONTEXT, _NEW_CONNECTION)
        return conn

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued package has been written to the network.

        Raises :class:`~yoton.errors.FlushTimeout` (a ``TimeoutError``) if that
        takes longer than ``timeout`` seconds.
        """
        router = self.router
        router.wait_flushed(list(router.links), timeout, startup=True)

    def close(self) -> None:
        """Close all connections (telling the peers) and all channels.

        The context can be bound or connected again afterwards. Senders
        waiting for room in a send queue get ``ChannelClosedError``.
        """
        router = self.router
        router.begin_shutdown()
        loop = router.loop
        links = list(router.links)
        if loop is not None and loop.running:
            for link in links:
                loop.call_soon(link.begin_close, REASON_CONTEXT)
            if not loop.on_loop_side():
                for link in links:  # each flushes for as long as its peer keeps reading
                    link.wait_done()
        for link in list(router.links):  # (also one a bind admitted meanwhile)
            link.teardown(REASON_CONTEXT)  # no-op for those already closed
        self.close_channels()
        router.end_shutdown()
        _open_contexts.discard(self)

    def close_channels(self) -> None:
        """Close every channel attached to this context; connections stay."""
        for channel in self.router.channels():
            channel.close()


class Router:
    """The routing engine of one context (see the module docstring).

    Its public methods are the contracts with the layers around it; users
    need none of them. For the transport below it is the
    :class:`~yoton.transport.link.LinkOwner` links report to
    (``config``, ``io_loop``, ``link_*``, ``packages_arrived``,
    ``room_changed``, ``flushed``, ``wait_flushed``). For channels above it
    offers sending (:meth:`send`), slots (:meth:`register`), waiting and
    scheduling on the context's loop (:meth:`wait_until`, :meth:`wake`,
    :meth:`call_soon`, :meth:`call_later`, :meth:`cancel`), and flow
    control on the links their packages come on (:meth:`hold_reading`,
    :meth:`release_reading`, :meth:`link_listens`).
    """

    def __init__(self, context: Context, config: LinkConfig, queue_params: tuple, spin: float, poller: str | None):
        self._context_ref = weakref.ref(context)
        self.config = config
        self.id = config.local_id
        self.queue_params = queue_params
        self.max_queue_bytes = config.max_queue_bytes
        self.max_package_size = config.max_package_size
        self.spin = spin
        self._poller = poller
        self._verbose = context._verbose
        self._lock = threading.RLock()
        self._seq = 0
        self.links: list = []  # every link: waiting, connected, reconnecting, closing
        self.listeners: set = set()  # the binds listening (their acceptors)
        self._live: tuple = ()  # the links packages go to: connected or reconnecting
        self._objects_live = False  # whether one of them queues Package objects (see _pump_objects)
        self._startup = BoundedQueue(
            max_bytes=config.max_queue_bytes,
            policy=Policy.for_discard_mode(config.discard_mode),
            name="the startup queue (no connection yet)",
            size_of=package_size,
            sizes_of=packages_size,
        )
        self._stage: deque = deque()  # (slot, body, dest_id, dest_seq) sent, not yet numbered
        self._stage_items = max(1, min(_STAGE_ITEMS, config.max_queue_bytes // (4 * _STAGE_BODY)))
        self._pump_scheduled = False  # a _pump_on_loop is queued on the loop
        self._pump_after = 0.0  # (monotonic) until then, small sends are pumped on the loop
        # Backpressure: _pressure is set when a send queue fills up; senders
        # then look for room under _room (see _wait_room). Read without a
        # lock on the fast path: a stale False lets one more package by.
        self._pressure = False
        self._room = threading.Condition(threading.Lock())
        self._room_waiters = 0
        self._room_callbacks: tuple = ()  # called by room_changed (see add_room_callback)
        self._closing = False  # in Context.close(): senders waiting for room give up
        self._discarded_closed = 0  # send-queue discards of links gone since
        self._last_seq: dict = {}  # source id -> last source_seq seen (least recently seen first)
        self._direct: dict = {}  # peer id -> its connected link (what only it may speak for)
        self._refused = 0  # packages refused by the routing rules
        self._refusals_logged: set = set()
        self._recv_seq = 0
        self._send_slots: dict = {}  # slot -> channel
        self._recv_slots: dict = {}  # slot -> channel
        self._deliver: dict = {}  # slot -> the channel's deliver(packages, link)
        self._peer_hooks: dict = {}  # channel -> WeakMethod of its peer_joined() (NEW_CONNECTION)
        self._channels: weakref.WeakSet = weakref.WeakSet()
        self.loop: IOLoop | None = None
        self._flush_cond = threading.Condition()
        self._flush_waiters = 0

    # -- the loop -----------------------------------------------------------

    def io_loop(self) -> IOLoop:
        """The loop serving this context's links (started on demand)."""
        with self._lock:
            if self.loop is None or not self.loop.running:
                self.loop = IOLoop(name=f"yoton-io-{self.id:016x}", spin=self.spin, poller=self._poller)
                self._pump_scheduled = False  # (one queued on an old loop may never have run)
                context = self._context_ref()
                if context is not None:
                    _open_contexts.add(context)
            return self.loop

    def wait_until(self, done: Callable[[], object], deadline: float | None) -> bool:
        """Wait in this thread for ``done()``, serving the loop meanwhile (see
        :meth:`IOLoop.run_until <yoton.transport.ioloop.IOLoop.run_until>`);
        False at once if this thread cannot (then wait your own way)."""
        loop = self.loop
        return loop is not None and loop.run_until(done, deadline)

    def wake(self) -> None:
        """Make a thread waiting in :meth:`wait_until` look at its condition."""
        loop = self.loop
        if loop is not None:
            loop.wake()

    def on_loop_side(self) -> bool:
        """Whether the calling thread is serving the loop right now."""
        loop = self.loop
        return loop is not None and loop.on_loop_side()

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Run ``func(*args)`` on the loop side (soon; at once if this thread is on it)."""
        loop = self.loop
        if loop is None:
            return
        if loop.on_loop_side():
            func(*args)
        else:
            loop.call_soon(func, *args)

    def call_later(self, func: Callable[..., object], delay: float, *args: Any) -> list:
        """Run ``func(*args)`` on the loop side after ``delay`` s; returns a handle for :meth:`cancel`."""
        return self.io_loop().call_later(func, delay, *args)

    @staticmethod
    def cancel(handle: list) -> None:
        """Cancel a call made with :meth:`call_later` (harmless if it ran)."""
        IOLoop.cancel(handle)

    # -- links (the transport calls these) ------------------------------------------

    def link_attached(self, link: Link) -> None:
        """A link was made (bind: waiting; connect: connected, its I/O about to start)."""
        with self._lock:
            self.links.append(link)

    def link_established(self, link: Link) -> None:
        """``link`` is connected: packages go to it from now on; the first one
        takes the startup queue (any thread; a ``connect()`` calls it before
        it returns)."""
        if self._verbose:
            log.info("yoton: %016x connected to %016x (%r)", self.id, link.peer_id, link.handle.name)
        with MainSending(), self._lock:
            self._pump()  # (what is staged goes first, into the startup queue if no one is live)
            if self._startup:
                items = self._startup.take()
                link.enqueue(items, packages_size(items))
            self._update_live()

    def link_closing(self, link: Link) -> None:
        """``link`` is closing: nothing more goes to it."""
        self._update_live()

    def link_interrupted(self, link: Link) -> None:
        """``link`` lost its peer and re-dials: packages still queue on it, but
        it no longer speaks for that peer."""
        self._update_live()

    def link_resumed(self, link: Link, redialled: bool) -> None:
        """``link`` is connected again (loop side). The side that re-dialled
        announces this context as a new connection does: the states its own
        channels set go out again, then ``NEW_CONNECTION`` (after what was
        queued meanwhile), so the peer's states come back too."""
        if self._verbose:
            log.info("yoton: %016x connected again to %016x (%r)", self.id, link.peer_id, link.handle.name)
        self._update_live()
        if not redialled:
            return
        self._tell_peer_hooks(rejoined=True)
        try:
            self.send(SLOT_CONTEXT, _NEW_CONNECTION, force=True)
        except ChannelClosedError:
            pass  # (this context is closing: nobody needs to hear from it)

    def _tell_peer_hooks(self, **kwargs: Any) -> None:
        """Have the channels that keep a state re-send it (a peer joined, or we re-joined)."""
        for hook in list(self._peer_hooks.values()):
            peer_joined = hook()
            if peer_joined is not None:
                try:
                    peer_joined(**kwargs)
                except ChannelClosedError:
                    pass  # (this context is closing: nobody needs our state from it)
                except Exception:
                    log.exception("yoton: %r failed to re-send its state", peer_joined.__self__)

    def listener_opened(self, listener: Any) -> None:
        """A bind listens (until ``listener.close()``, loop side)."""
        with self._lock:
            self.listeners.add(listener)

    def listener_closed(self, listener: Any) -> None:
        """A bind stopped listening."""
        with self._lock:
            self.listeners.discard(listener)

    def link_closed(self, link: Link) -> None:
        """``link`` is closed: forget it."""
        with self._lock:
            if link in self.links:
                self.links.remove(link)
                self._discarded_closed += link.sendq.discarded
            self._update_live()

    def _update_live(self) -> None:
        with self._lock:
            self._live = tuple(link for link in self.links if link.takes_packages)
            self._objects_live = any(link.queues_objects for link in self._live)
            self._direct = {link.peer_id: link for link in self._live if link.is_connected}
        self.room_changed()  # (senders waiting for a link that left look again)
        self._interest_changed()  # (a link that relays for others may listen to more)

    def _interest_changed(self, settle: bool = False) -> None:
        """Tell the links that the receiving slots or the live links changed
        (with ``settle``: a new channel's, wait until they follow; not under _lock)."""
        for link in list(self.links):
            link.interest_changed(settle)

    def receiving_slots(self) -> dict:
        """The slots channels here receive on: slot number -> slot name (a
        snapshot, any thread; for transports that subscribe per slot)."""
        with self._lock:
            return {slot: channel.slot_incoming for slot, channel in self._recv_slots.items()}

    def relays(self, link: Link) -> bool:
        """Whether packages arriving on ``link`` are forwarded to other live
        links (this context is a gateway for them), any thread."""
        return any(other is not link for other in self._live)

    #: In the main thread: ``on = shield_enter()`` begins a block in which a
    #: Ctrl-C waits; ``shield_exit(undo)`` (if ``on``) ends it, calling
    #: ``undo()`` first when one came, then raising it (see transport/sigint.py).
    shield_enter = staticmethod(shield_enter)
    shield_exit = staticmethod(shield_exit)

    def room_changed(self) -> None:
        """A send queue drained, stalled or left (any thread): wake waiting senders."""
        if self._room_waiters:
            with self._room:
                self._room.notify_all()
        for callback in self._room_callbacks:
            try:
                callback()
            except Exception:
                log.exception("yoton: room callback %r failed", callback)

    def add_room_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` whenever senders waiting for room should look again
        (what wakes a blocking send; for senders that cannot block a thread,
        such as yoton.asyncio's). Called in any thread, often the loop side:
        ``fn`` must be quick and never wait."""
        with self._lock:
            self._room_callbacks = self._room_callbacks + (fn,)

    def remove_room_callback(self, fn: Callable[[], object]) -> None:
        """Stop calling ``fn`` (harmless if it is not there)."""
        with self._lock:
            callbacks = list(self._room_callbacks)
            if fn in callbacks:
                callbacks.remove(fn)
                self._room_callbacks = tuple(callbacks)

    def flushed(self) -> None:
        """A link wrote everything it had (any writer thread)."""
        if self._flush_waiters:
            with self._flush_cond:
                self._flush_cond.notify_all()

    def wait_flushed(self, links: Sequence[Link], timeout: float, startup: bool = False) -> None:
        """Wait until ``links`` wrote everything (and, with ``startup``, the
        startup queue is empty while some link may take it); FlushTimeout."""
        self.pump_now()  # (what is staged counts as sent: it goes to the queues first)
        loop = self.loop
        if loop is None or loop.on_loop_side():
            return
        deadline = time.monotonic() + float(timeout)
        with self._flush_cond:
            self._flush_waiters += 1
            try:
                while True:
                    left: list[object] = [link for link in links if link.unflushed()]
                    if startup and self._startup and self.links:
                        left.append("the startup queue")  # (a waiting bind's peer would take it)
                    if not left:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise FlushTimeout(
                            f"flush timed out after {timeout} s with packages still queued on {len(left)} connection(s)"
                        )
                    self._flush_cond.wait(remaining)
            finally:
                self._flush_waiters -= 1

    def statistics(self) -> dict:
        """The context's send-side counters (see :meth:`Context.statistics`)."""
        self.pump_now()  # (staged packages are queued, or discarded, first)
        startup = self._startup
        queued, discarded = startup.bytes, startup.discarded + self._discarded_closed
        for link in list(self.links):
            queued += link.sendq.bytes + link.unwritten()
            discarded += link.sendq.discarded
        return {"queued_bytes": queued, "discarded_outgoing": discarded, "refused": self._refused}

    # -- shutting down (Context.close) --------------------------------------------------

    def begin_shutdown(self) -> None:
        """Binds stop listening; senders give up (ChannelClosedError), waiting or
        not; what is staged goes out first."""
        with self._lock:
            listeners = list(self.listeners)
        for listener in listeners:
            listener.request_close()
        self._closing = True
        self._pressure = True  # (so every send looks: see _wait_room)
        self.room_changed()
        self.pump_now()

    def end_shutdown(self) -> None:
        """Forget the loop and what never went out (counted); stop the loop."""
        with self._lock:
            loop, self.loop = self.loop, None
            self._stage.clear()
            self._startup.discard_all()  # (no peer ever took them: counted)
        if loop is not None:
            loop.stop()
        self._pump_scheduled = False  # (a pump queued on that loop may never have run)
        self._closing = False
        self._pressure = False

    # -- channels (the channel layer calls these) ----------------------------

    def register(
        self,
        channel: Any,
        slot_out: int | None,
        slot_in: int | None,
        deliver: Callable[[list, Link], object] | None = None,
        peer_joined: Callable[..., object] | None = None,
    ) -> None:
        """Attach ``channel``: it sends on ``slot_out`` and takes what arrives on
        ``slot_in`` through ``deliver(packages, link)`` (loop side, in order).
        ``peer_joined()`` is called when a context joins the network
        (``NEW_CONNECTION``), and ``peer_joined(rejoined=True)`` when a link
        of this context re-dialled its lost peer (re-send what this context
        itself set). ValueError if a slot is taken."""
        with self._lock:
            if slot_out is not None and slot_out in self._send_slots:
                raise ValueError(f"Slot not free: {channel.slot_outgoing} already has a sending channel here")
            if slot_in is not None and slot_in in self._recv_slots:
                raise ValueError(f"Slot not free: {channel.slot_incoming} already has a receiving channel here")
            if slot_out is not None:
                self._send_slots[slot_out] = channel
            if slot_in is not None:
                self._recv_slots[slot_in] = channel
                self._deliver[slot_in] = deliver
            if peer_joined is not None:
                self._peer_hooks[channel] = weakref.WeakMethod(peer_joined)
            self._channels.add(channel)
        if slot_in is not None:
            self._interest_changed(settle=True)  # (a NATS link subscribes before the channel is used)

    def unregister(self, channel: Any) -> None:
        """Detach ``channel`` from its slots."""
        with self._lock:
            for table in (self._send_slots, self._recv_slots):
                for slot, ch in list(table.items()):
                    if ch is channel:
                        del table[slot]
            for slot in [slot for slot in self._deliver if slot not in self._recv_slots]:
                del self._deliver[slot]
            self._peer_hooks.pop(channel, None)
            self._channels.discard(channel)
        self._interest_changed()

    def channels(self) -> list:
        """The channels attached now."""
        return list(self._channels)

    def hold_reading(self, link: Link, key: Hashable) -> None:
        """Stop reading from ``link`` until :meth:`release_reading` with ``key`` (loop side)."""
        link.hold_reading(key)

    def release_reading(self, link: Link, key: Hashable) -> None:
        """Let ``link`` read again as far as ``key`` is concerned (any thread)."""
        self.call_soon(link.release_reading, key)

    def receiving(self, source_id: int, dest_seq: int) -> int | None:
        """Bytes received so far of a large package from ``source_id`` with
        ``dest_seq``, addressed to this context, still on its way; None if
        none is (any thread; a snapshot)."""
        for link in self._live:
            partial = link.partial()
            if partial is not None and partial[1] == source_id and partial[3] == self.id and partial[4] == dest_seq:
                return partial[5]
        return None

    def is_direct_peer(self, peer_id: int) -> bool:
        """Whether ``peer_id`` is the context at the other end of one of our
        connected links (any thread; a snapshot)."""
        return peer_id in self._direct

    def peer_reachable(self, peer_id: int) -> bool:
        """Whether a link to ``peer_id`` still takes packages: connected, or
        re-dialling a lost connection (any thread; a snapshot)."""
        return any(link.peer_id == peer_id for link in self._live)

    @staticmethod
    def link_listens(link: Link) -> tuple[bool, float]:
        """``(listening, timeout)``: whether the peer on ``link`` can still be
        heard from (connected, not timed out), and the link's timeout."""
        return link.is_connected and not link.is_timedout, link.timeout

    def send(
        self,
        slot: int,
        body: bytes,
        dest_id: int = 0,
        dest_seq: int = 0,
        block: bool | float = True,
        force: bool = False,
    ) -> None:
        """Number a package and queue it on every live link (any thread).

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
        if size > self.max_package_size:
            raise ValueError(
                f"message too large to send: {size} bytes encoded, but max_package_size is {self.max_package_size}"
            )
        if self._pressure and not force:
            self._wait_room(HEADER_SIZE + size, block)
        stage = self._stage
        stage.append((slot, body, dest_id, dest_seq))
        if size <= _STAGE_BODY and len(stage) < self._stage_items:
            loop = self.loop
            if self._pump_scheduled and loop is not None and loop.running:
                return  # (it is cleared before the pump takes the stage: ours is in)
            running = loop is not None and loop.running
            now = time.monotonic()
            if now < self._pump_after:
                if loop is None or not running:
                    return  # no link yet: the first one to connect pumps (see link_established)
                self._pump_scheduled = True
                loop.call_soon(self._pump_on_loop)
                if loop.running:
                    return
                self._pump_scheduled = False  # (it stopped meanwhile: that call may never run)
            self._pump_after = now + DIRECT_GAP
        self.pump_now()

    def pump_now(self) -> None:
        """Number and queue what is staged, in this thread (any thread; in the
        main thread, a Ctrl-C waits for the end: it must not cut a write in half)."""
        if get_ident() == MAIN_IDENT:
            with MainSending(), self._lock:
                self._pump()
        else:
            with self._lock:
                self._pump()

    def _pump_on_loop(self) -> None:
        self._pump_scheduled = False  # (before the stage is taken; see send)
        # A stream goes on being pumped here: a send right after this one
        # does not write by itself, so the sender makes no system call (each
        # would let this thread take the GIL from it, and back, per call).
        self._pump_after = time.monotonic() + DIRECT_GAP
        with self._lock:
            self._pump()

    def _pump(self) -> None:
        """Number what is staged and queue it on every live link (under _lock)."""
        stage = self._stage
        count = len(stage)
        if not count:
            return
        if self._objects_live:
            self._pump_objects(count)
            return
        pop, pack, my_id, seq = stage.popleft, HEADER.pack, self.id, self._seq
        items: list[tuple[bytes, Any]] = []
        total = 0
        append = items.append
        for _ in range(count):
            slot, body, dest_id, dest_seq = pop()
            seq += 1
            size = len(body)
            append((pack(CONTROL, slot, my_id, seq, dest_id, dest_seq, size), body))
            total += size
        self._seq = seq
        total += HEADER_SIZE * count
        live = self._live
        if not live:
            self._startup.put_many(items, total)  # (discards by the mode when full)
            return
        for link in live:
            if link.enqueue(items, total):  # (the link's queue is full: senders wait)
                self._pressure = True

    def _pump_objects(self, count: int) -> None:
        # _pump when some live link queues Package objects (its peer is in this
        # process): each such link gets its own (the peer's router numbers
        # them), the others (header, body) pairs. Under _lock.
        pop = self._stage.popleft
        staged = [pop() for _ in range(count)]
        first = self._seq + 1
        self._seq += count
        my_id = self.id
        total = HEADER_SIZE * count + sum(map(len, map(_BODY, staged)))
        pairs = None
        for link in self._live:
            if link.queues_objects:
                full = link.enqueue_objects(
                    [
                        Package(body, slot, my_id, seq, dest_id, dest_seq)
                        for seq, (slot, body, dest_id, dest_seq) in zip(itertools.count(first), staged)
                    ],
                    total,
                )
            else:
                if pairs is None:
                    pack = HEADER.pack
                    pairs = [
                        (pack(CONTROL, slot, my_id, seq, dest_id, dest_seq, len(body)), body)
                        for seq, (slot, body, dest_id, dest_seq) in zip(itertools.count(first), staged)
                    ]
                full = link.enqueue(pairs, total)
            if full:
                self._pressure = True

    def _wait_room(self, size: int, block: bool | float) -> None:
        """Wait until every live link has room for ``size`` more bytes or is
        stalled (a sending thread; see the module docstring). ``block``:
        True waits as long as it takes, False not at all, a number at most
        that many seconds; then :class:`WouldBlock` is raised."""
        if self._closing:
            raise ChannelClosedError("the context is closing: the message was not sent")
        loop = self.loop
        if loop is not None and loop.on_loop_side():
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
                    full = [link for link in self._live if not link.has_room(size)]
                    if not full:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if block is False or (remaining is not None and remaining <= 0):
                        names = ", ".join(repr(link.handle.name) for link in full)
                        raise WouldBlock(
                            f"the send queue of connection {names} is full "
                            f"(the peer is slower than the sender)" + ("" if block is False else f"; waited {block} s")
                        )
                    self._room.wait(remaining)
            finally:
                self._room_waiters -= 1
            self._pressure = any(link.queue_full() for link in self._live)

    # -- routing (loop side: the I/O thread, or a thread in IOLoop.run_until) --

    def packages_arrived(self, link: Link, packages: list) -> None:
        """Route the packages that arrived on ``link``, in order (loop side).

        Each package follows the rules at the top of this module; the
        packages for one channel are handed to it in one call, in order, and
        those to pass on go to each other link in one call too.
        """
        last_seq, my_id, slots, direct = self._last_seq, self.id, self._deliver, self._direct
        forward = len(self._live) > 1
        passing: list = []  # (packages to forward)
        recv_seq = self._recv_seq
        batches: dict = {}  # the deliver function of a channel -> its packages
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
                    taken = source != my_id and (owner is None or owner is link)
                    if not taken:
                        # Ours coming back, or a direct peer's package relayed by another
                        # (only its own link counts: in a mesh, that is a duplicate).
                        last_now = None if source == my_id else last_seq.get(source, 0)
                        if last_now is not None and seq > last_now:
                            self._refuse(link, "spoof", source)
                        continue
                    checked = owner is not None
                    last_now = last_seq.pop(source, 0)
                elif not taken:
                    if last_now is not None and seq > last_now:
                        self._refuse(link, "spoof", source)
                    continue
                if seq <= last_now:
                    continue
                if seq - last_now > MAX_SEQ_JUMP and last_now and not checked:
                    self._refuse(link, "jump", source)  # (it would silence that source)
                    continue
                last_now = seq
                dest = pkg.dest_id
                if dest != my_id:
                    if forward:
                        passing.append(pkg)
                    if dest:
                        continue
                recv_seq += 1
                pkg.recv_seq = recv_seq
                slot = pkg.slot
                if slot != slot_now:
                    if slot == SLOT_CONTEXT:
                        self._recv_seq = recv_seq
                        self._context_message(link, pkg)
                        continue
                    slot_now, deliver = slot, slots.get(slot)
                    batch = None if deliver is None else batches.setdefault(deliver, [])
                if batch is not None:
                    batch.append(pkg)
        finally:
            if taken:
                last_seq[source_now] = last_now
            if len(last_seq) > MAX_SOURCES:
                self._forget_sources()
            if passing:  # (seen now: they must go on whatever happens)
                self._forward(link, passing)
        self._recv_seq = recv_seq
        for deliver, batch in batches.items():
            try:
                deliver(batch, link)
            except Exception:
                log.exception("yoton: channel %r failed to take packages", getattr(deliver, "__self__", deliver))

    def _forget_sources(self) -> None:
        """Keep the de-duplication map bounded: forget the sources seen least
        recently (loop side). A source forgotten and seen again starts afresh."""
        last_seq = self._last_seq
        for source in list(islice(last_seq, len(last_seq) - MAX_SOURCES * 7 // 8)):
            del last_seq[source]

    def _refuse(self, link: Link, why: str, source: int) -> None:
        """Count a package refused by the routing rules; log once per connection and reason.

        A direct peer's package that another link delivers ahead of its own
        link is refused (its own link brings it) and logged at DEBUG only: in
        a mesh that happens when the direct link is the slower path. A jump
        of 2**32 in a source's numbering never happens by itself: WARNING.
        """
        self._refused += 1
        key = (id(link), why)
        if key not in self._refusals_logged:
            self._refusals_logged.add(key)
            if why == "spoof":
                log.debug(
                    "yoton: connection %r delivered a package of %016x ahead of that peer's "
                    "own link: refused (counted in statistics()['refused'])",
                    link.handle.name,
                    source,
                )
            else:
                log.warning(
                    "yoton: connection %r sent a package that jumps implausibly far ahead in "
                    "the numbering of %016x: refused (further ones are counted in "
                    "statistics()['refused'], not logged)",
                    link.handle.name,
                    source,
                )

    def _forward(self, link: Link, packages: list) -> None:
        """Queue packages from ``link`` on every other live link, in order (loop side)."""
        pack = HEADER.pack
        items = [
            (pack(CONTROL, pkg.slot, pkg.source_id, pkg.source_seq, pkg.dest_id, pkg.dest_seq, len(pkg.data)), pkg.data)
            for pkg in packages
        ]
        size = HEADER_SIZE * len(items) + sum(map(len, map(_BODY, items)))  # (item 1 of a pair too)
        for other in self._live:
            if other is not link:
                if other.enqueue(items, size):  # (full)
                    other.hold_upstream(link)  # (TCP then slows the sender down)

    def _context_message(self, link: Link, pkg: Package) -> None:
        text = bytes(pkg.data)
        if text == _NEW_CONNECTION:
            self._tell_peer_hooks()
        elif text == _CLOSE_CONNECTION:
            if link.peer_id == pkg.source_id:  # (only the peer itself may ask)
                link.begin_close("Closed on request of the other context.")
        else:
            log.debug("yoton: ignored unknown context message %r", text[:80])
