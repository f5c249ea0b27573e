"""The NATS transport: a context attached to a NATS network (``yoton[nats]``).

``ctx.connect("nats://host:4222")`` (several servers comma-separated for a
cluster) makes a :class:`NatsLink`: one :class:`~yoton.transport.link.Link`
that stands for every context on that NATS network. The context's router
routes, de-duplicates and applies flow control exactly as for a TCP peer;
this module maps packages onto NATS subjects and back. It imports nats-py
(the maintained asyncio client), which the core never does: only a
``nats://`` address loads this module.

Subjects (``<network>`` is ``connect(..., network="default")``; slots and
ids are 16 lower-case hex digits; :func:`slot_subject` names a slot's)::

    yoton.<network>.all.<slot>   a broadcast package on <slot> (dest_id 0)
    yoton.<network>.any.<slot>   a request's first announcement: to ONE replier (queue group "yoton")
    yoton.<network>.to.<id>      a package addressed to the context <id>

``nats sub 'yoton.default.>'`` shows all of a network's traffic.

* **Payload**: a NATS message carries one or more whole yoton frames (the
  56-byte header and the body, docs/protocol.md section 4): consecutive
  packages for one subject travel together, up to the server's
  ``max_payload``. A package larger than that goes as a first message
  (header ``Yoton-Part: start``: its frame's beginning) and continuations
  (``Yoton-Part: <source id>.<seq>.<offset>``: the next bytes of its body),
  published back to back; the receiver puts it together (at most
  :data:`MAX_PARTIALS` at a time, whose bytes count against the receive
  bound, ``max_queue_bytes``: beyond it the oldest unfinished one is dropped
  and counted in ``discarded_incoming``; one cut short by a disconnect is
  dropped; a first piece longer than its header says is refused).
* **Subscriptions**: a context subscribes to ``all.<slot>`` for each slot
  its channels receive on (and slot 2, context messages), to ``to.<its
  id>``, and, for each RepChannel's slot, to ``any.<slot>`` in the queue
  group "yoton". A context that also has other links (a gateway to a TCP
  mesh) subscribes to ``yoton.<network>.>`` instead: it forwards what its
  other peers might want, whatever their slots. ``connect()`` returns once
  the existing channels are subscribed; a channel made later is subscribed
  before its constructor returns (at most :data:`SETTLE_TIME` seconds; not
  while the link is down), so what is published after that reaches it. A
  closed channel's subscriptions are dropped.
* **Order**: the router drops a package numbered below one it has seen from
  the same source, so packages must reach it in their publisher's order
  across all subscriptions. nats-py hands each subscription's messages to a
  task of its own (which would reorder them); this link takes them from
  the client as it reads them instead (:class:`_Client`), in the order the
  server sent them. NATS keeps one publisher's order for a subscriber.
* **Request/reply**: yoton's exchange runs unchanged (docs/protocol.md
  section 9): the requester announces (``req?``), a free replier
  acknowledges, the body goes to that replier only, the others are told to
  forget it. NATS queue groups spread the first announcement of a request:
  it goes to one replier context chosen by the server (``any.<slot>``), so
  a request costs one delivery however many repliers there are. A replier
  that is busy keeps it and acknowledges once free; the requester's
  re-announcement 0.5 s later goes to every replier (``all.<slot>``), so
  the first free one anywhere takes it. Exactly one replier serves a
  request: the acknowledgement protocol decides, as over TCP. Timeouts,
  remote errors and cancelling are the channels' and behave as over TCP.
* **State**: when the server runs JetStream, the key-value bucket
  ``yoton-<network>`` keeps the last broadcast frame of each state slot
  (key: the slot in hex), written by every context with a StateChannel on
  that slot (the first such context makes the bucket; ``keep_state=False``
  leaves it alone). A context that subscribes to a state slot reads it
  first, so it learns the state even when the context that set it is gone. Without
  JetStream the state travels as over TCP (re-sent to newcomers by the
  contexts that hold it). A state set by a peer behind a gateway is kept
  only if the gateway itself has a StateChannel on that slot.
* **Guarantees**: core NATS is at-most-once. Between a publisher and a
  subscriber that stay connected, messages arrive, in order; what is in
  flight when a server dies or a client is cut off is lost, and a server
  drops a subscriber that cannot keep up ("slow consumer"). Sync mode's
  ``full``/``ok`` messages slow publishers down end to end as over TCP;
  what a held link receives meanwhile waits in its receive buffer (at most
  ``max_queue_bytes``; beyond that it is dropped and counted in
  ``statistics()['discarded_incoming']``).
* **Lossless mode** (``connect(..., lossless=True)``; needs JetStream): the
  network's packages go through the stream ``yoton-<network>`` (subjects
  ``yoton.<network>.>``, kept ``lossless_max_age`` seconds, default an
  hour). A publisher sends its next message only once the stream stored
  the last one (retried, in order, after a failure); while the server is
  unreachable, sends wait in the send queue and the link never stalls:
  senders wait (or get ``WouldBlock``), nothing is discarded. Each context
  reads the stream through a durable pull consumer of its own
  (``yoton-<context id>``), asking for more only while its receive buffer
  has room (a held link, e.g. a full sync-mode subscriber, holds the
  consumer, not memory), and after a reconnect resumes after the last
  message it got. So every package reaches every lossless context of the
  network, in order, once (JetStream delivers at least once; the router
  drops repeats), as long as the stream keeps it. The price: a round trip
  to the stream per message, and every context reads all of the network's
  traffic (no per-slot subscriptions, no queue group: a request's
  announcements go to every replier). Packages of contexts in the core
  mode on that network are kept in the stream too.
* **Faults**: no server reachable within ``timeout``: ``ConnectError``
  naming the servers. A server that dies: nats-py reconnects to the others
  (``reconnect_time_wait``, ``max_reconnect_attempts``: nats-py's options).
  While the link is down nothing is taken from its send queue (what the
  writer had taken waits and goes first after the reconnect): sends wait
  there (``max_queue_bytes``; when full, senders wait, and after the
  connection's ``timeout`` it is *stalled*: it discards by the discard mode,
  counted and logged, as for TCP). The link pings the server when nothing
  else arrives; ``timedout(conn, True)`` after ``timeout`` seconds without
  an answer, ``False`` once it answers again. ``closed`` is emitted when
  the link is closed or nats-py gives up reconnecting.

One asyncio loop per link runs the nats-py client, in a thread of its own;
packages it receives are handed to the router on the context's loop side
(:meth:`NatsLink._deliver_inbox`), and what the router queues is published
by a writer task that takes from the send queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any, Callable, Coroutine, Iterator

from ..errors import ConnectError
from ..wire.frames import CONTROL, HEADER, HEADER_SIZE, SLOT_CONTEXT, Package, split_frames
from ..wire.naming import slot_hash
from . import schemes
from .connection import Connection
from .link import CLOSE_FLUSH_TIME, CLOSED, CLOSING, CONNECTED, HEARTBEAT_INTERVAL, NEW, Link, LinkOwner

if TYPE_CHECKING:
    import ssl

    from ..context import Context

try:
    from nats import errors as nats_errors
    from nats.aio.client import Client as _NatsClient
except ImportError as _exc:  # (the extra is not installed; connect() says so)
    _NatsClient = None  # type: ignore[assignment,misc]
    nats_errors = None  # type: ignore[assignment]
    _MISSING: ImportError | None = _exc
else:
    _MISSING = None

log = logging.getLogger("yoton")

__all__ = [
    "NatsConnection",
    "NatsLink",
    "open_connection",
    "open_connect",
    "open_bind",
    "is_nats_address",
    "split_servers",
    "slot_subject",
    "DEFAULT_NETWORK",
    "QUEUE_GROUP",
    "MAX_PARTIALS",
    "SETTLE_TIME",
]

DEFAULT_NETWORK = "default"
#: Seconds the lossless mode's stream keeps packages by default.
DEFAULT_MAX_AGE = 3600.0
#: Lossless mode: messages fetched at a time, and how long a fetch waits.
FETCH_BATCH = 64
FETCH_WAIT = 1.0
QUEUE_GROUP = "yoton"
#: Large packages being put together at a time (the oldest is dropped beyond).
MAX_PARTIALS = 16
#: Seconds a new channel's constructor waits at most for its subscription.
SETTLE_TIME = 2.0
#: First announcements remembered (later ones of the same request go to all repliers).
MAX_ANNOUNCED = 4096
PART_HEADER = "Yoton-Part"
# Request announcements (docs/protocol.md section 9.1): dest_seq REF + n, body b"req?".
_REF = 1 << 63
_PRE_REQUEST = b"req?"
_NETWORK_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_PART_RE = re.compile(rb"(?im)^Yoton-Part:[ \t]*([^\r\n]*?)[ \t]*\r?$")
#: A writer takes at most this much from the send queue at a time.
_TAKE_ITEMS = 4096
_TAKE_BYTES = 4 << 20
#: Room kept for the NATS headers of a large package's pieces.
_PART_MARGIN = 256
#: Options of nats-py's connect() that the link sets itself.
_RESERVED = {
    "servers",
    "no_echo",
    "error_cb",
    "disconnected_cb",
    "closed_cb",
    "reconnected_cb",
    "discovered_server_cb",
    "lame_duck_mode_cb",
    "tls",
}


def split_servers(address: str) -> list:
    """The server URLs of a ``nats://`` address: comma-separated, each
    ``nats://host:port`` (the scheme may be left out after the first).
    ValueError for an empty or malformed list."""
    servers = []
    for part in address.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty server in NATS address {address!r}")
        if "://" not in part:
            part = "nats://" + part
        scheme, _, rest = part.partition("://")
        if scheme.lower() != "nats":
            raise ValueError(f"a NATS address lists nats:// servers, not {part!r}")
        if not rest or "/" in rest or any(c.isspace() for c in rest):
            raise ValueError(f"malformed NATS server {part!r} in {address!r}")
        servers.append("nats://" + rest)
    return servers


def slot_subject(slot_name: str, network: str = DEFAULT_NETWORK) -> str:
    """The NATS subject of broadcasts on the slot named ``slot_name`` (a
    channel's ``slot_outgoing`` or ``slot_incoming``), in ``network``:

    >>> import yoton
    >>> ctx = yoton.Context()
    >>> pub = yoton.PubChannel(ctx, "news")  # (TEXT messages)
    >>> pub.slot_outgoing
    'news.txt.pub-sub'
    >>> slot_subject(pub.slot_outgoing, "lab")
    'yoton.lab.all.00001068f4300755'
    >>> ctx.close()
    """
    return f"yoton.{_check_network(network)}.all.{slot_hash(slot_name.strip().lower()):016x}"


def _check_network(network: object) -> str:
    if not isinstance(network, str) or not _NETWORK_RE.match(network):
        raise ValueError(f"a NATS network name is 1-64 letters, digits, '_' or '-', not {network!r}")
    return network


if _NatsClient is not None:

    class _Client(_NatsClient):
        """nats-py's client with one change: messages on yoton's subjects go
        to the link as the client reads them, in the order the server sent
        them (nats-py would hand each subscription's to a task of its own)."""

        yoton_prefix = b"\0"
        yoton_handler: Any = None

        async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            handler = self.yoton_handler
            if handler is not None and subject.startswith(self.yoton_prefix):
                self.stats["in_msgs"] += 1
                self.stats["in_bytes"] += len(data)
                handler(data, headers, reply)
                return
            await super()._process_msg(sid, subject, reply, data, headers)


def _check_client() -> None:
    """Raise ConnectError if nats-py is missing or not one this module can drive."""
    if _MISSING is not None:
        raise ConnectError(
            f"nats:// addresses need the nats-py package: pip install 'yoton[nats]' ({_MISSING})"
        ) from _MISSING
    # _Client overrides nats-py's private message hook: make sure it is still the one
    # this module was written for (pyproject pins nats-py below its next major).
    hook = getattr(_NatsClient, "_process_msg", None)
    if hook is None:
        why = "its client has no _process_msg"
    elif not inspect.iscoroutinefunction(hook):
        why = "its client's _process_msg is no longer a coroutine"
    else:
        try:
            names = list(inspect.signature(hook).parameters)
        except (TypeError, ValueError) as exc:
            names = [f"? ({exc})"]
        why = f"its client's _process_msg takes {names}"
        if names == ["self", "sid", "subject", "reply", "data", "headers"]:
            return
    try:
        from importlib.metadata import version

        installed = version("nats-py")
    except Exception:  # (not installed as a distribution)
        installed = "?"
    raise ConnectError(
        f"nats-py {installed} is not supported by yoton's NATS transport "
        f"({why}; yoton[nats] installs a supported version)"
    )


def _nats_option_names() -> set:
    return set(inspect.signature(_NatsClient.connect).parameters) - {"self"}


class _AioThread:
    """An asyncio loop in a daemon thread of its own (one per NATS link)."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        finally:
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coro`` on the loop (any thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Run ``func(*args)`` on the loop (any thread); nothing once it stopped."""
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # (closed)
            pass

    def on_thread(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return threading.current_thread() is self.thread

    def stop(self) -> None:
        """Stop the loop once what is scheduled has run (any thread)."""
        self.call_soon(self.loop.stop)


class NatsConnection(Connection):
    """A :class:`~yoton.Connection` to a NATS network (``nats://`` addresses).

    It stands for every context on the network: ``id2`` and ``pid2`` are 0,
    ``hostname2``/``port2`` name the NATS server connected now. Signals,
    ``timeout``, ``close()`` and ``flush()`` behave as for TCP (see
    :mod:`yoton.transport.nats` for what each means over NATS).
    """

    def __repr__(self) -> str:
        link = self._link
        network = link.network if isinstance(link, NatsLink) else "?"
        return f"<NatsConnection {self.name!r} {self._state.value} network {network!r} via {self.server or '-'}>"

    @property
    def network(self) -> str:
        """The NATS network name (the second token of the subjects)."""
        link = self._link
        return link.network if isinstance(link, NatsLink) else ""

    @property
    def servers(self) -> list:
        """The server URLs given to ``connect()``."""
        link = self._link
        return list(link.servers) if isinstance(link, NatsLink) else []

    @property
    def server(self) -> str:
        """The URL of the server connected now ('' while reconnecting or closed)."""
        link = self._link
        return link.server_url() if isinstance(link, NatsLink) else ""


def is_nats_address(address: object) -> bool:
    """Whether ``address`` names NATS servers (``nats://...``)."""
    return isinstance(address, str) and address.lstrip().lower().startswith("nats://")


def open_connect(
    owner: LinkOwner,
    handle: Connection,
    address: str,
    timeout: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> NatsLink:
    """The ``nats`` scheme's connect (see :mod:`yoton.transport.schemes`):
    attach ``handle`` (a new :class:`NatsConnection`) to the NATS network at
    ``address``; return its link once the context's channels are subscribed.

    ``options``: ``network`` (default ``"default"``), ``keep_state`` (default
    True: keep states in the server's JetStream key-value bucket when it has
    JetStream), ``lossless`` (default False: see the module docstring) with
    ``lossless_max_age`` (seconds the stream keeps packages, default one
    hour), ``replicas`` (copies a cluster keeps of the state bucket and the
    lossless stream when this context makes them; default 1, use 3 in a
    cluster), and nats-py's connect() options (``user``, ``password``,
    ``token``, ``user_credentials``, ``nkeys_seed``, ``tls_hostname``,
    ``reconnect_time_wait``, ``max_reconnect_attempts``, ...).
    ``ssl_context`` makes the client use TLS. Raises
    :class:`~yoton.errors.ConnectError` when no server answers within
    ``timeout`` seconds (or nats-py is missing), ValueError for bad
    arguments and for options it does not take (``reconnect``: NATS
    reconnects by itself, see nats-py's ``max_reconnect_attempts``).
    """
    if not isinstance(address, str):
        raise ValueError(f"Address should be a string, not {type(address).__name__}.")
    servers = split_servers(address)
    network = _check_network(options.pop("network", DEFAULT_NETWORK))
    keep_state = bool(options.pop("keep_state", True))
    lossless = bool(options.pop("lossless", False))
    max_age = float(options.pop("lossless_max_age", DEFAULT_MAX_AGE))
    if not max_age > 0:
        raise ValueError(f"lossless_max_age must be a positive number of seconds, not {max_age!r}")
    replicas = options.pop("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
        raise ValueError(f"replicas must be an int from 1 to 5, not {replicas!r}")
    timeout = float(timeout)
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    _check_client()
    _check_options(options)
    link = NatsLink(owner, handle, servers, network, keep_state, lossless, max_age, replicas)
    handle._link = link
    link.open(timeout, ssl_context, options)
    return link


def _check_options(options: dict[str, Any]) -> None:
    """ValueError for an option the link does not take (as the scheme registry says)."""
    if "reconnect" in options:
        raise ValueError(
            "reconnect does not apply to nats:// addresses: NATS reconnects by itself "
            "(nats-py's max_reconnect_attempts=, reconnect_time_wait=)"
        )
    reserved = sorted(set(options) & _RESERVED)
    if reserved:
        raise ValueError(f"{', '.join(reserved)}: set by yoton's NATS transport, not an option of connect()")
    unknown = sorted(set(options) - _nats_option_names())
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an option of connect() to nats:// addresses, nor of nats-py's")


def open_bind(owner: LinkOwner, handle: Connection, address: str, **options: Any) -> NatsLink:
    """The ``nats`` scheme's bind: there is none (ValueError); contexts meet at the server."""
    raise ValueError(
        f"cannot bind to {address!r}: a NATS network is joined with connect('nats://...'); "
        "the NATS server is where contexts meet"
    )


def open_connection(
    context: Context,
    address: str,
    timeout: float = 1.0,
    name: str = "",
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> NatsConnection:
    """Attach ``context`` to the NATS network at ``address`` and return the
    :class:`NatsConnection` (what ``context.connect(address, ...)`` does;
    the options are :func:`open_connect`'s)."""
    conn = NatsConnection(context, name)
    open_connect(context.router, conn, address, timeout, ssl_context, **options)
    return conn


class NatsLink(Link):
    """A :class:`~yoton.transport.link.Link` to a NATS network (see the module docstring)."""

    def __init__(
        self,
        owner: LinkOwner,
        handle: Connection,
        servers: list,
        network: str,
        keep_state: bool = True,
        lossless: bool = False,
        max_age: float = 3600.0,
        replicas: int = 1,
    ) -> None:
        super().__init__(owner, handle)
        self.servers = tuple(servers)
        self.network = network
        self.keep_state = keep_state
        self.lossless = lossless
        self.max_age = max_age
        self.replicas = replicas
        self.stream = f"yoton-{network}"  # (lossless: the stream of the network's packages)
        self._js: Any = None
        self._pull: Any = None  # (lossless: the subscription to our pull requests' inbox)
        self._pull_inbox = ""
        self._pull_subject = ""
        self._pull_left = 0
        self._pull_ack: bytes | None = None  # (the ack subject of the last message delivered)
        self._pull_done: Any = None
        self._durable = ""
        self._last_sseq = 0  # (the stream sequence of the last message our consumer delivered)
        self._reset_wanted = False
        self._fetcher: Any = None
        self._room: Any = None  # (lossless: an asyncio.Event, set when the inbox has room)
        self._unsent: deque = deque()  # (subject, payload, headers) taken, not yet published
        prefix = f"yoton.{network}."
        self._prefix = prefix
        self._all = prefix + "all."
        self._any = prefix + "any."
        self._to = prefix + "to."
        self.bucket = f"yoton-{network}"
        self.aio: _AioThread | None = None
        self.nc: Any = None
        self._kv: Any = None
        self._kv_tried = False
        self.last_error = ""
        self.reconnects = 0
        # -- receiving (the inbox: filled on the asyncio thread, emptied on the loop side)
        self._inbox: deque = deque()  # (packages, bytes) per NATS message
        # (bytes in the inbox: added on the asyncio thread, taken on the loop side)
        self._in_added = self._in_taken = 0
        self._deliver_scheduled = False
        self._started = False  # established with the owner: deliveries may go
        self.discarded_incoming = 0
        self._dropping_in = False
        self._malformed = 0
        self._take_failed = False  # (a message made _on_message fail: logged once)
        self._partials: OrderedDict = OrderedDict()  # (source, seq) -> [fields, bytearray, length]
        self._partial_now: tuple | None = None
        self._dropping_parts = False  # (unfinished ones dropped over the receive bound: logged once)
        # -- subscriptions (asyncio thread)
        self._subs: dict = {}  # (subject, queue) -> nats Subscription
        self._state_slots: frozenset = frozenset()
        self._resub_task: Any = None
        self._resub_again = False
        # -- sending
        self._write_scheduled = False
        self._kicked = False
        self._writer: Any = None
        self._in_hand = 0  # bytes taken from the send queue, not yet published
        self._published = 0  # bytes published so far ...
        self._confirmed = 0  # ... of which the server confirmed (a PONG came after them)
        self._pinging = False
        self._announced: OrderedDict = OrderedDict()
        self._subjects: dict = {}  # (kind, number) -> subject (a cache)
        self._stored_too_large = False
        self._closing_nats = False

    # -- opening (the caller's thread) -------------------------------------------------

    def open(self, timeout: float, ssl_context: ssl.SSLContext | None, options: dict) -> None:
        """Connect to the servers, subscribe, read the kept states; then CONNECTED
        and established with the owner. Raises ConnectError (after cleaning up)."""
        owner = self.owner
        self.loop = owner.io_loop()
        self.aio = aio = _AioThread(f"yoton-nats-{self.config.local_id:016x}")
        future = aio.submit(self._open(timeout, ssl_context, options))
        try:
            future.result(timeout + 5.0)  # (the coroutine keeps the deadline; this is a safety net)
        except BaseException as exc:
            future.cancel()
            self._abandon()
            if isinstance(exc, concurrent.futures.TimeoutError):
                raise ConnectError(self._no_server(timeout)) from None
            raise
        self.set_state(CONNECTED)
        self.last_send = self.last_recv = time.monotonic()
        owner.link_attached(self)
        owner.link_established(self)  # (before connect() returns: what is sent next goes to it)
        self.loop.call_soon(self._start_io)

    def _no_server(self, timeout: float) -> str:
        why = self.last_error or "no answer"
        return f"Could not connect to NATS at {', '.join(self.servers)} within {timeout:g} s ({why})."

    async def _open(self, timeout: float, ssl_context: ssl.SSLContext | None, options: dict) -> None:
        aloop = asyncio.get_running_loop()
        deadline = aloop.time() + timeout
        nc = _Client()
        nc.yoton_prefix = self._prefix.encode()
        nc.yoton_handler = self._on_message
        self.nc = nc
        kwargs: dict[str, Any] = dict(
            name=f"yoton {self.config.local_id:016x} {self.handle.name}".rstrip(),
            connect_timeout=max(0.1, min(2.0, timeout)),
        )
        kwargs.update(options)
        if ssl_context is not None:
            kwargs["tls"] = ssl_context
        try:
            await asyncio.wait_for(
                nc.connect(
                    list(self.servers),
                    no_echo=True,  # (our own packages do not come back)
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    **kwargs,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectError(self._no_server(timeout)) from None
        except (OSError, nats_errors.Error) as exc:
            self.last_error = self.last_error or _describe(exc)
            raise ConnectError(self._no_server(timeout)) from exc
        self._update_peer()
        if self.lossless:
            await self._open_stream(max(0.05, deadline - aloop.time()))
        try:
            await asyncio.wait_for(self._resubscribe(), max(0.05, deadline - aloop.time()))
        except asyncio.TimeoutError:
            self.last_error = "subscribing timed out"
            raise ConnectError(self._no_server(timeout)) from None
        except (OSError, nats_errors.Error) as exc:  # (e.g. the server refused a subscription)
            self.last_error = _describe(exc)
            raise ConnectError(f"Could not subscribe at NATS {', '.join(self.servers)}: {self.last_error}.") from exc

    async def _open_state(self, timeout: float) -> None:
        """Find or make the key-value bucket that keeps states (JetStream), once:
        when the context first has a state channel."""
        self._kv_tried = True
        from nats.js.errors import BucketNotFoundError

        js = self.nc.jetstream(timeout=timeout)
        try:
            try:
                self._kv = await js.key_value(self.bucket)
            except BucketNotFoundError:
                self._kv = await js.create_key_value(bucket=self.bucket, history=1, replicas=self.replicas)
        except (asyncio.TimeoutError, nats_errors.Error) as exc:
            log.info("yoton: NATS %s: states are not kept by the server (%s)", self.network, _describe(exc))
            self._kv = None

    async def _open_stream(self, timeout: float) -> None:
        """Lossless mode: find or make the network's stream, and our pull consumer on it."""
        from nats.js import api
        from nats.js.errors import NotFoundError

        js = self._js = self.nc.jetstream(timeout=max(timeout, 2.0))
        try:
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                try:
                    await js.add_stream(
                        name=self.stream,
                        subjects=[self._prefix + ">"],
                        max_age=self.max_age,
                        storage=api.StorageType.FILE,
                        discard=api.DiscardPolicy.OLD,
                        num_replicas=self.replicas,
                    )
                except nats_errors.Error:
                    await js.stream_info(self.stream)  # (made by another context meanwhile)
            durable = self._durable = f"yoton-{self.config.local_id:016x}"
            info = await js.add_consumer(self.stream, self._consumer_config(api.DeliverPolicy.NEW))
            self._last_sseq = info.delivered.stream_seq  # (the stream's end: we start after it)
            self._pull_inbox = self.nc.new_inbox()
            self._pull = await self.nc.subscribe(self._pull_inbox, cb=self._on_pull_status)
            self._pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}"
        except (asyncio.TimeoutError, nats_errors.Error) as exc:
            self.last_error = f"lossless mode needs JetStream on the server: {_describe(exc)}"
            raise ConnectError(f"Could not attach to NATS at {', '.join(self.servers)}: {self.last_error}.") from exc
        self._room = asyncio.Event()
        self._pull_done = asyncio.Event()
        self._fetcher = asyncio.get_running_loop().create_task(self._fetch_loop())

    def _consumer_config(self, policy: Any, start: int | None = None) -> Any:
        from nats.js import api

        return api.ConsumerConfig(
            durable_name=self._durable,
            deliver_policy=policy,
            opt_start_seq=start,
            ack_policy=api.AckPolicy.ALL,
            inactive_threshold=max(60.0, 4 * self.timeout),
        )

    async def _reset_consumer(self) -> None:
        """After a reconnect: what the server sent to a pull request of the
        lost connection would come again only after the ack wait (30 s), so
        make the consumer anew, starting after the last message we got."""
        from nats.js import api

        js = self._js
        try:
            await js.delete_consumer(self.stream, self._durable)
        except (asyncio.TimeoutError, nats_errors.Error) as exc:
            log.debug("yoton: NATS %s: deleting the consumer: %s", self.network, _describe(exc))
        config = self._consumer_config(api.DeliverPolicy.BY_START_SEQUENCE, self._last_sseq + 1)
        await js.add_consumer(self.stream, config)
        self._pull_ack = None

    async def _fetch_loop(self) -> None:
        """Lossless mode: keep one pull request for FETCH_BATCH messages open on
        our consumer while the inbox has room (asyncio thread). The server
        sends each message as soon as it is stored; the client hands it to
        :meth:`_on_message` as it reads it (like the core subscriptions)."""
        nc, room, done = self.nc, self._room, self._pull_done
        request = json.dumps({"batch": FETCH_BATCH, "expires": int(FETCH_WAIT * 1e9)}).encode()
        while self.state in (NEW, CONNECTED):
            if not self._has_room_in() or not nc.is_connected:
                room.clear()
                if not self._has_room_in() or not nc.is_connected:
                    await room.wait()  # (set on the loop side after delivering, and when reconnected)
                continue
            if self._reset_wanted:
                try:
                    await self._reset_consumer()
                except (asyncio.TimeoutError, nats_errors.Error, OSError) as exc:
                    self.last_error = _describe(exc)
                    await asyncio.sleep(0.1)  # (JetStream not ready yet: again shortly)
                    continue
                self._reset_wanted = False
            await self._ack_taken()
            done.clear()
            self._pull_left = FETCH_BATCH
            try:
                await nc.publish(self._pull_subject, request, reply=self._pull_inbox)
                await asyncio.wait_for(done.wait(), FETCH_WAIT + 1.0)
            except (asyncio.TimeoutError, nats_errors.Error, OSError) as exc:
                if not isinstance(exc, asyncio.TimeoutError):
                    self.last_error = _describe(exc)

    def _on_delivered(self, reply: bytes) -> None:
        """A message of our pull request arrived (asyncio thread)."""
        self._pull_ack = reply
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>
        # (9 tokens; 12 or more with a domain and an account hash in front of the stream)
        tokens = reply.split(b".")
        if len(tokens) >= 9:
            try:
                self._last_sseq = int(tokens[5 if len(tokens) == 9 else 7])
            except ValueError:
                pass
        self._pull_left -= 1
        if self._pull_left <= 0:
            self._pull_done.set()

    async def _on_pull_status(self, msg: Any) -> None:
        """A status for our pull request: it ended (no messages, expired, ...)
        unless it is a heartbeat."""
        if (msg.headers or {}).get("Status") != "100":
            self._pull_done.set()

    async def _ack_taken(self) -> None:
        """Acknowledge every message delivered so far (AckAll: the last one)."""
        reply, self._pull_ack = self._pull_ack, None
        if reply:
            try:
                await self.nc.publish(reply.decode(), b"+ACK")
            except (nats_errors.Error, OSError):
                pass  # (redelivered later; the router drops what it has seen)

    def _has_room_in(self) -> bool:
        return not self.read_holds and self._in_added - self._in_taken < self.config.max_queue_bytes // 2

    def _abandon(self) -> None:
        """A failed open: close the client and stop the thread (the caller's thread)."""
        aio = self.aio
        if aio is None:
            return
        done = aio.submit(self._close_nats())
        try:
            done.result(2.0)
        except BaseException:
            pass
        aio.stop()
        self.aio = None
        if self.state is NEW:
            self.set_state(CLOSED)
            self.close_reason = "could not connect"
            self.done.set()

    def _start_io(self) -> None:
        """Established (loop side): deliver what came meanwhile, write what is queued."""
        loop = self.loop
        assert loop is not None
        if self.state is not CONNECTED:
            return
        self._started = True
        loop.housekeepers.add(self)
        self._deliver_inbox()
        self.kick_writer()
        self.interest_changed()  # (channels made while connecting)

    # -- nats-py's callbacks (asyncio thread) ----------------------------------------

    async def _on_error(self, exc: BaseException) -> None:
        self.last_error = _describe(exc)
        log.debug("yoton: NATS %s: %s", self.network, self.last_error)

    async def _on_disconnected(self) -> None:
        if self.state in (CONNECTED, CLOSING) and not self._closing_nats:
            log.info("yoton: connection %r: disconnected from NATS (%s)", self.handle.name, self.last_error)
        self._drop_partials("disconnected from the server")

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self._update_peer()
        log.info("yoton: connection %r: reconnected to NATS at %s", self.handle.name, self.server_url())
        self._start_writer()
        if self._room is not None:
            self._reset_wanted = True
            self._pull_done.set()  # (a pull request open when the link went down is gone)
            self._room.set()

    async def _on_closed(self) -> None:
        loop = self.loop
        if self.state in (CONNECTED, CLOSING) and not self._closing_nats and loop is not None:
            reason = f"NATS connection closed ({self.last_error or 'gave up reconnecting'})."
            loop.call_soon(self.teardown, reason)

    def _update_peer(self) -> None:
        url = self.nc.connected_url if self.nc is not None else None
        if url is not None:
            self.peer_address = (url.hostname or "", url.port or 0)

    def server_url(self) -> str:
        """The URL of the server connected now ('' if none)."""
        nc = self.nc
        url = nc.connected_url if nc is not None else None
        return "" if url is None else f"nats://{url.hostname}:{url.port}"

    # -- subscriptions (asyncio thread) ----------------------------------------------

    def interest_changed(self, settle: bool = False) -> None:
        """Subscribe to what the channels receive now (see the module docstring);
        with ``settle``, wait until the server has the subscriptions."""
        aio, loop = self.aio, self.loop
        if aio is None or self.state not in (NEW, CONNECTED):
            return
        if (
            settle
            and self.state is CONNECTED
            and self.nc is not None
            and self.nc.is_connected
            and not aio.on_thread()
            and not (loop is not None and loop.on_loop_side())
        ):
            try:
                aio.submit(self._settle()).result(SETTLE_TIME)
            except Exception as exc:  # (closed meanwhile, or slow: the subscription follows)
                log.debug("yoton: NATS %s: subscribing took long: %s", self.network, _describe(exc))
            return
        aio.call_soon(self._schedule_resubscribe)

    async def _settle(self) -> None:
        self._schedule_resubscribe()
        await asyncio.shield(self._resub_task)

    def _schedule_resubscribe(self) -> None:
        self._resub_again = True
        if self._resub_task is None or self._resub_task.done():
            self._resub_task = asyncio.get_running_loop().create_task(self._resubscribe_loop())

    async def _resubscribe_loop(self) -> None:
        try:
            while self._resub_again and self.state is CONNECTED:
                await self._resubscribe()
        except Exception as exc:  # (closed meanwhile; the next change tries again)
            log.debug("yoton: NATS %s: resubscribing failed: %s", self.network, _describe(exc))

    def _wanted(self) -> tuple:
        """``({(subject, queue)}, {state slots})`` for the channels here."""
        slots = self.owner.receiving_slots()
        state = frozenset(slot for slot, name in slots.items() if name.strip().lower().endswith(".state"))
        if self.lossless:
            return set(), state  # (everything comes through the stream's consumer)
        if self.owner.relays(self):
            return {(self._prefix + ">", "")}, state  # a gateway hears everything
        want = {(self._all_subject(SLOT_CONTEXT), ""), (self._to_subject(self.config.local_id), "")}
        for slot, name in slots.items():
            want.add((self._all_subject(slot), ""))
            if name.strip().lower().endswith(".req-rep"):
                want.add((self._any + f"{slot:016x}", QUEUE_GROUP))
        return want, state

    async def _resubscribe(self) -> None:
        """Make the subscriptions match the channels; read the states of new state slots."""
        self._resub_again = False
        nc = self.nc
        want, state = self._wanted()
        removed = [key for key in self._subs if key not in want]
        added = [key for key in want if key not in self._subs]
        for key in removed:
            sub = self._subs.pop(key)
            await sub.unsubscribe()
        for key in added:
            subject, queue = key
            self._subs[key] = await nc.subscribe(subject, queue=queue)
        changed = bool(removed or added)
        new_state = state - self._state_slots
        if new_state and self.keep_state and not self._kv_tried:
            await self._open_state(5.0)
        self._state_slots = state
        if changed:
            await nc.flush(timeout=5)
        for slot in sorted(new_state):
            await self._read_state(slot)

    async def _read_state(self, slot: int) -> None:
        """Deliver the frame the server keeps for a state slot, if any."""
        kv = self._kv
        if kv is None:
            return
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await kv.get(f"{slot:016x}")
        except KeyNotFoundError:
            return
        except (asyncio.TimeoutError, nats_errors.Error) as exc:
            log.info("yoton: NATS %s: could not read the kept state of slot %016x: %s", self.network, slot, exc)
            return
        if entry.value:
            self._on_message(entry.value, None)

    # -- receiving ------------------------------------------------------------------

    def _on_message(self, data: bytes, headers: dict | bytes | None, reply: bytes = b"") -> None:
        """A message on one of our subjects (asyncio thread, in the server's order);
        ``reply``: in lossless mode, the ack subject of one our consumer delivered
        (in the core mode a reply subject is another client's and means nothing here).

        Called inside nats-py's read loop, which stops reading for good if an
        exception reaches it: whatever fails here drops the message, counted
        in ``statistics()['malformed']`` (the first failure is logged)."""
        try:
            self._take_message(data, headers, reply)
        except Exception:
            self._malformed += 1
            if not self._take_failed:
                self._take_failed = True
                log.exception(
                    "yoton: connection %r: a NATS message could not be taken: dropped "
                    "(further ones are counted in statistics()['malformed'])",
                    self.handle.name,
                )

    def _take_message(self, data: bytes, headers: dict | bytes | None, reply: bytes) -> None:
        if reply and self.lossless:
            self._on_delivered(reply)
        if headers:
            self._on_part(data, headers)
            return
        packages, error = split_frames(data, self.config.max_package_size)
        if error is not None:
            self._refuse_message(error)
        if packages:
            self._arrived(packages, len(data))

    def _refuse_message(self, error: str) -> None:
        self._malformed += 1
        if self._malformed == 1:
            log.warning(
                "yoton: connection %r: a NATS message on yoton's subjects was not whole yoton packages (%s): "
                "the rest of it was dropped (further ones are counted in statistics()['malformed'])",
                self.handle.name,
                error,
            )

    def _arrived(self, packages: list, nbytes: int) -> None:
        """Packages for the router (asyncio thread): into the inbox, bounded."""
        if not self.lossless and self._in_added - self._in_taken >= self.config.max_queue_bytes:
            self.discarded_incoming += len(packages)
            if not self._dropping_in:
                self._dropping_in = True
                log.warning(
                    "yoton: connection %r: the receive buffer is full (%d bytes, reading held: %s): "
                    "dropping what NATS delivers until it has room (counted in statistics()['discarded_incoming'])",
                    self.handle.name,
                    self._in_added - self._in_taken,
                    sorted(map(str, self.read_holds)),
                )
            return
        self._inbox.append((packages, nbytes))
        self._in_added += nbytes
        if not self._deliver_scheduled:
            self._deliver_scheduled = True
            loop = self.loop
            if loop is not None:
                loop.call_soon(self._deliver_inbox)

    def _deliver_inbox(self) -> None:
        """Hand what arrived to the owner, in order, unless reading is held (loop side)."""
        self._deliver_scheduled = False
        if not self._started or self.state is not CONNECTED:
            return  # (closing: nothing more comes in)
        inbox = self._inbox
        while inbox and not self.read_holds:
            batch: list = []
            nbytes = 0
            while inbox and len(batch) < 4096:
                packages, size = inbox.popleft()
                batch += packages
                nbytes += size
            self._in_taken += nbytes
            self._dropping_in = False
            self.last_recv = time.monotonic()
            self.bytes_in += nbytes
            if self.is_timedout:
                self.note_received(0)
            self.deliver(batch)
        if self._room is not None and self._has_room_in() and self.aio is not None:
            self.aio.call_soon(self._room.set)

    def set_reading(self, flag: bool) -> None:
        """Reading resumes: deliver what waited (held, messages wait in the inbox)."""
        if flag and self.loop is not None:
            self.loop.call_soon(self._deliver_inbox)

    def _on_part(self, data: bytes, headers: dict | bytes) -> None:
        """A piece of a large package (asyncio thread)."""
        if isinstance(headers, dict):
            value = str(headers.get(PART_HEADER, "")).strip()
        else:
            found = _PART_RE.search(bytes(headers))
            value = "" if found is None else found.group(1).decode("ascii", "replace")
        if not value:
            self._refuse_message("a message with headers that is not a piece of a large package")
            return
        partials = self._partials
        if value == "start":
            if len(data) < HEADER_SIZE:
                self._refuse_message("a large package's first piece without a whole header")
                return
            control, slot, sid, sseq, did, dseq, length = HEADER.unpack_from(data)
            if control != CONTROL or length > self.config.max_package_size:
                self._refuse_message("a large package's first piece with a bad header")
                return
            key = (sid, sseq)
            if len(data) - HEADER_SIZE > length:
                self._forget_partial(key)
                self._refuse_message("a large package's first piece longer than its header says")
                return
            body = bytearray(data[HEADER_SIZE:])
            partials[key] = [(slot, sid, sseq, did, dseq), body, length]
            partials.move_to_end(key)
            while len(partials) > MAX_PARTIALS:
                old, _ = partials.popitem(last=False)
                self.discarded_incoming += 1
                log.warning("yoton: connection %r: dropped an unfinished large package %r", self.handle.name, old)
            self._bound_partials(key)
            self._part_progress(key)
            return
        try:
            sid_text, seq_text, offset_text = value.split(".")
            key = (int(sid_text, 16), int(seq_text))
            offset = int(offset_text)
        except ValueError:
            self._refuse_message(f"a bad {PART_HEADER} header: {value[:80]!r}")
            return
        entry = partials.get(key)
        if entry is None:
            return  # (its beginning was lost, or it was dropped: nothing to add to)
        fields, body, length = entry
        if offset != len(body) or len(body) + len(data) > length:
            self._forget_partial(key)
            log.warning("yoton: connection %r: a large package %r arrived out of order: dropped", self.handle.name, key)
            return
        body += data
        self._bound_partials(key)
        self._part_progress(key)

    def _bound_partials(self, key: tuple) -> None:
        """The packages being put together count against the receive bound
        (``max_queue_bytes``) with the inbox: while over it, drop the oldest
        of them, counted in ``discarded_incoming``, but not ``key``, the one
        that grew (so one package larger than the bound still gets through,
        as over TCP)."""
        partials = self._partials
        held = self._in_added - self._in_taken + sum(len(entry[1]) for entry in partials.values())
        bound = self.config.max_queue_bytes
        if held <= bound:
            return
        for old in list(partials):
            if held <= bound:
                break
            if old == key:
                continue
            held -= len(partials[old][1])
            self._forget_partial(old)
            self.discarded_incoming += 1
            if not self._dropping_parts:
                self._dropping_parts = True
                log.warning(
                    "yoton: connection %r: large packages being put together hold more than the receive bound "
                    "(%d bytes): dropped the oldest unfinished one %r (further ones are counted in "
                    "statistics()['discarded_incoming'])",
                    self.handle.name,
                    bound,
                    old,
                )

    def _forget_partial(self, key: tuple) -> None:
        if self._partials.pop(key, None) is not None:
            now = self._partial_now
            if now is not None and now[1:3] == key:
                self._partial_now = None

    def _part_progress(self, key: tuple) -> None:
        fields, body, length = self._partials[key]
        if len(body) < length:
            self._partial_now = fields + (len(body), length)
            return
        del self._partials[key]
        self._partial_now = None
        self._arrived([Package(body, *fields)], HEADER_SIZE + length)

    def _drop_partials(self, why: str) -> None:
        if self._partials:
            log.warning(
                "yoton: connection %r: %d unfinished large package(s) dropped (%s)",
                self.handle.name,
                len(self._partials),
                why,
            )
            self._partials.clear()
        self._partial_now = None

    def partial(self) -> tuple | None:
        """The large package being put together last, if any (see Link.partial)."""
        return self._partial_now

    # -- sending ----------------------------------------------------------------------

    def kick_writer(self) -> None:
        """Have the writer task on the asyncio thread publish what was queued."""
        if self._write_scheduled or self.state is not CONNECTED or not self._started:
            return
        self._write_scheduled = True
        aio = self.aio
        if aio is not None:
            aio.call_soon(self._start_writer)

    def _start_writer(self) -> None:
        """(asyncio thread) Make sure the writer task runs and looks at the queue."""
        self._kicked = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def unwritten(self) -> int:
        """Bytes taken from the queue and not yet confirmed by the server."""
        return self._in_hand + self._published - self._confirmed

    def unflushed(self) -> bool:
        """Whether packages wait; someone asks (a flush): ping the server to confirm."""
        waiting = super().unflushed()
        if waiting and not self.sendq and not self._in_hand and self.aio is not None:
            self.aio.call_soon(self._start_ping)  # (someone waits for the server to confirm)
        return waiting

    def _hand(self, items: list, nbytes: int) -> None:
        # (under the queue's lock: a flush never sees the packages in neither place)
        self._in_hand = nbytes

    async def _write(self) -> None:
        """Publish what the send queue holds while connected (asyncio thread)."""
        nc = self.nc
        try:
            while self._kicked:
                self._kicked = False
                self._write_scheduled = False  # (a sender may schedule us again from here on)
                while self.state in (CONNECTED, CLOSING) and nc.is_connected:
                    if self._unsent and not await self._publish_unsent():
                        break
                    items = self.sendq.take(_TAKE_ITEMS, self._hand, _TAKE_BYTES)
                    if not items:
                        break
                    self._unsent = deque(self._messages(items))
                    if not await self._publish_unsent():
                        break
            if not self.sendq and not self._unsent:
                self.owner.flushed()
                if self.state is CLOSING:
                    await self._finish_closing()
        except Exception:
            log.exception("yoton: connection %r: the NATS writer failed", self.handle.name)

    async def _publish_unsent(self) -> bool:
        """Publish the messages made of the packages taken, in order; True when
        all went. In lossless mode each goes once the stream stored the one
        before. When the connection is down (or, lossless, the stream did not
        answer) the rest stays, still counted as unwritten, and goes on after
        the reconnect (or shortly); it is not handed to nats-py's buffer."""
        nc, js, unsent = self.nc, self._js, self._unsent
        lossless = self.lossless
        while unsent:
            if not nc.is_connected:
                return False
            subject, payload, headers = unsent[0]
            try:
                if lossless and not subject.startswith("$KV."):
                    await js.publish(subject, payload, timeout=max(1.0, self.timeout), headers=headers)
                else:
                    await nc.publish(subject, payload, headers=headers)
            except (asyncio.TimeoutError, OSError, nats_errors.Error) as exc:
                self.last_error = _describe(exc)
                log.debug("yoton: connection %r: publishing failed (again soon): %s", self.handle.name, self.last_error)
                if nc.is_connected:
                    asyncio.get_running_loop().call_later(0.1, self._start_writer)
                return False
            unsent.popleft()
        size, self._in_hand = self._in_hand, 0
        self._published += size
        if lossless:
            self._confirmed = self._published  # (stored: the server has them)
        self.progress(size)
        return True

    def _messages(self, items: list) -> Iterator[tuple[str | None, bytes, dict | None]]:
        """``(subject, payload, headers)`` for queued packages: runs for one
        subject joined up to the server's max_payload, large ones in pieces."""
        limit = self.nc.max_payload
        subject_now = None
        parts: list = []
        size = 0
        unpack, state_slots = HEADER.unpack, self._state_slots
        for header, body in items:
            _, slot, source, seq, dest, dest_seq, length = unpack(header)
            subject = self._subject_of(slot, source, dest, dest_seq, body)
            frame = HEADER_SIZE + length
            if subject_now is not None and (subject != subject_now or size + frame > limit):
                yield subject_now, b"".join(parts), None
                parts, size = [], 0
            if frame > limit:
                yield from self._pieces(subject, header, body, source, seq, limit)
                subject_now = None
                if not dest and slot in state_slots and self._kv is not None and not self._stored_too_large:
                    self._stored_too_large = True
                    log.warning(
                        "yoton: connection %r: a state of %d bytes is larger than the server's max_payload "
                        "(%d): the server does not keep it (it still reaches the contexts there are)",
                        self.handle.name,
                        length,
                        limit,
                    )
                continue
            if subject.startswith(self._any):  # (alone: the server picks a replier per message)
                yield subject, header + bytes(body), None
                subject_now = None
                continue
            subject_now = subject
            parts += (header, body)
            size += frame
            if not dest and slot in state_slots and self._kv is not None:
                yield f"$KV.{self.bucket}.{slot:016x}", header + bytes(body), None  # (the server keeps it)
        if parts:
            yield subject_now, b"".join(parts), None

    def _pieces(
        self, subject: str, header: bytes, body: bytes | memoryview, source: int, seq: int, limit: int
    ) -> Iterator[tuple[str | None, bytes, dict | None]]:
        step = max(1024, limit - _PART_MARGIN)
        view = memoryview(body).cast("B")
        first = step - HEADER_SIZE
        yield subject, header + bytes(view[:first]), {PART_HEADER: "start"}
        for offset in range(first, len(view), step):
            yield subject, bytes(view[offset : offset + step]), {PART_HEADER: f"{source:x}.{seq}.{offset}"}

    def _subject_of(self, slot: int, source: int, dest: int, dest_seq: int, body: bytes | memoryview) -> str:
        if dest:
            return self._to_subject(dest)
        if dest_seq >= _REF and not self.lossless and len(body) == 4 and bytes(body) == _PRE_REQUEST:
            key = (source, slot, dest_seq)
            announced = self._announced
            if key not in announced:  # the first announcement: to one replier
                announced[key] = None
                if len(announced) > MAX_ANNOUNCED:
                    announced.popitem(last=False)
                return self._any + f"{slot:016x}"
        return self._all_subject(slot)

    def _all_subject(self, slot: int) -> str:
        subjects = self._subjects
        subject = subjects.get(slot)
        if subject is None:
            if len(subjects) > 4096:
                subjects.clear()
            subject = subjects[slot] = self._all + f"{slot:016x}"
        return subject

    def _to_subject(self, dest: int) -> str:
        subjects = self._subjects
        key = -dest - 1  # (ids and slots share the cache)
        subject = subjects.get(key)
        if subject is None:
            if len(subjects) > 4096:
                subjects.clear()
            subject = subjects[key] = self._to + f"{dest:016x}"
        return subject

    # -- pings: silence and confirmation (asyncio thread, started from the loop side) --------

    def _start_ping(self) -> None:
        if not self._pinging and self.nc is not None and self.nc.is_connected:
            self._pinging = True
            asyncio.get_running_loop().create_task(self._ping())

    async def _ping(self) -> None:
        """PING the server; its PONG says it is there and has all we published before."""
        mark = self._published
        try:
            await self.nc.flush(timeout=max(1.0, self.timeout))
        except (asyncio.TimeoutError, OSError, nats_errors.Error):
            return
        finally:
            self._pinging = False
        self._confirmed = max(self._confirmed, mark)
        loop = self.loop
        if loop is not None:
            loop.call_soon(self._heard)
        self.owner.flushed()

    def _heard(self) -> None:
        """The server answered (loop side)."""
        self.last_recv = time.monotonic()
        if self.is_timedout:
            self.note_received(0)

    def check_silence(self, now: float) -> None:
        """Stalls and timeouts as for every link; in lossless mode, no stall."""
        if not self.lossless:
            super().check_silence(now)
            return
        # Lossless: never stalled (nothing is discarded; senders wait for the
        # server as long as it takes); timedout as usual.
        if not self.is_timedout and not self.read_holds and now - self.last_recv > self.timeout:
            self.is_timedout = True
            self.handle.timedout.emit(self.handle, True)

    def _housekeeping(self, now: float) -> None:
        if self.state is CLOSING:
            if self.closing_overdue(now):
                self.teardown(self.close_reason)
            return
        if self.state is not CONNECTED:
            return
        if now - self.last_recv >= HEARTBEAT_INTERVAL and not self._pinging and self.aio is not None:
            self.aio.call_soon(self._start_ping)
        self.check_silence(now)

    # -- closing --------------------------------------------------------------------

    def begin_close(self, reason: str) -> None:
        """Publish what is queued, then close (loop side)."""
        if self.state is CONNECTED:
            self.start_closing(reason)
            if self.aio is not None:
                self.aio.call_soon(self._start_writer)

    async def _finish_closing(self) -> None:
        """All queued packages went (asyncio thread): wait for the server's PONG, then close."""
        try:
            await self.nc.flush(timeout=CLOSE_FLUSH_TIME)
            self._confirmed = self._published
        except (asyncio.TimeoutError, OSError, nats_errors.Error):
            pass
        loop = self.loop
        if loop is not None:
            loop.call_soon(self.teardown, self.close_reason)

    async def _close_nats(self) -> None:
        self._closing_nats = True
        nc = self.nc
        if self._fetcher is not None:
            self._fetcher.cancel()
        if self._pull is not None and nc is not None and nc.is_connected:
            try:  # (our consumer goes with us; else the server drops it once inactive)
                await self._js.delete_consumer(self.stream, self._durable)
            except Exception as exc:
                log.debug("yoton: NATS %s: deleting the consumer: %s", self.network, _describe(exc))
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), 2.0)
            except Exception as exc:
                log.debug("yoton: NATS %s: close: %s", self.network, _describe(exc))

    def teardown(self, reason: str | None) -> None:
        """Close the NATS client and announce the end (loop side, or any thread once the loop stopped)."""
        if self.state is CLOSED:
            return
        loop = self.loop
        if loop is not None:
            loop.housekeepers.discard(self)
        self._started = False
        aio, self.aio = self.aio, None
        if aio is not None:
            try:
                aio.submit(self._close_nats()).add_done_callback(lambda _: aio.stop())
            except RuntimeError:  # (its loop is gone already)
                pass
        self._inbox.clear()
        self.finish(reason)

    # -- figures --------------------------------------------------------------------

    def statistics(self) -> dict:
        """Figures of the link (see Connection.statistics) and NATS's own:
        ``network``, ``server``, ``reconnects``, ``subscriptions``,
        ``discarded_incoming`` (dropped: receive buffer full, or an unfinished
        large package beyond the bound), ``malformed``
        (NATS messages on yoton's subjects that were not yoton packages)."""
        stats = super().statistics()
        stats.update(
            network=self.network,
            server=self.server_url(),
            reconnects=self.reconnects,
            subscriptions=len(self._subs),
            discarded_incoming=self.discarded_incoming,
            malformed=self._malformed,
        )
        return stats


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text and name not in text else (text or name)


schemes.register(
    schemes.Scheme("nats", open_bind, open_connect, NatsConnection, frozenset(), None, "a NATS network, yoton[nats]")
)
