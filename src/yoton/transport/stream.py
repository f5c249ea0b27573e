"""The stream transport: links over TCP sockets (plain or inside TLS) and Unix sockets.

* :func:`open_bind` listens on an address; a :class:`Listener` accepts
  clients and runs a :class:`Handshake` for each (non-blocking, on the loop
  side); the peers whose handshake succeeds are admitted by the bind's
  :class:`~yoton.transport.acceptor.Acceptor` rules (one peer, as in yoton
  2.2, or up to ``max_connections``), the others are refused with a reason
  while the bind keeps listening.
* :func:`open_connect` dials an address and runs the same :class:`Handshake`
  driver on the loop side, waiting for it in the caller's thread (retrying
  while the peer is not listening yet, until the timeout). With a
  :class:`~yoton.transport.reconnect.ReconnectPolicy` the link re-dials the
  same :class:`DialTarget` on the loop side when it loses its peer.
* :class:`StreamLink` then moves bytes: it reads into the
  :class:`~yoton.wire.protocol.Protocol` (sans-I/O) and delivers the
  packages it cuts out, and writes the send queue with as few system calls
  as it can (see :meth:`StreamLink._write_locked`). A link can move to a
  new socket (:meth:`StreamLink.resume`): its send queue, read holds and
  figures stay.

The Unix-socket transport (:mod:`.unix`) uses all of this with AF_UNIX
sockets; only opening and naming differ.

All socket work after the handshake happens on the loop side, except one
shortcut: a thread that queues packages on an idle connection writes them
itself (:meth:`StreamLink._write_direct`; a lone small package without
passing through the queue, :meth:`StreamLink._write_lone`), at most once per
:data:`DIRECT_GAP` seconds, when nothing else is being written.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import sys
import threading
import time
import types
from itertools import chain
from typing import TYPE_CHECKING, Any, Callable

from ..errors import AuthenticationError, BindError, ConnectError, ConnectHandshakeError, TLSError
from ..wire.frames import CLOSE_BYTES, HEARTBEAT_BYTES
from ..wire.naming import parse_address
from ..wire.protocol import CONNECTION_CLOSED, HANDSHAKE, HANDSHAKE_DONE, REASON_EOF, REASON_SELF, Protocol
from .acceptor import Acceptor, check_max_connections
from .ioloop import IOLoop
from .link import CLOSED, CLOSING, CONNECTED, HEARTBEAT_INTERVAL, RECONNECTING, WAITING, Link
from .reconnect import Backoff, ReconnectPolicy

if TYPE_CHECKING:
    import ssl

    from .tls import TlsPipe

if TYPE_CHECKING:
    from .connection import Connection
    from .link import LinkConfig, LinkOwner

log = logging.getLogger("yoton")


# TLS is imported on first use: ssl and OpenSSL cost a process some 5 MB
# of memory, which a context without tls:// never needs.
def _tls() -> types.ModuleType:
    """The TLS module (imported on first use)."""
    from . import tls

    return tls


def _ssl_errors() -> tuple[type[ssl.SSLError], ...]:
    """``ssl.SSLError`` once ssl is imported; before, nothing can raise it,
    and the empty tuple an ``except`` is given then catches nothing."""
    ssl = sys.modules.get("ssl")
    return (ssl.SSLError,) if ssl is not None else ()


def describe(exc: ssl.SSLError) -> str:
    """A readable reason for an SSL error (see :func:`yoton.transport.tls.describe`)."""
    return _tls().describe(exc)


__all__ = [
    "StreamLink",
    "Listener",
    "Handshake",
    "DialTarget",
    "open_bind",
    "open_connect",
    "listen",
    "dial",
    "split_address",
    "sock_pair",
    "HANDSHAKE_DEADLINE",
    "MAX_PENDING_HANDSHAKES",
    "LISTEN_BACKLOG",
    "DIRECT_GAP",
]

HANDSHAKE_DEADLINE = 3.0  #: seconds a client gets to say hello to a bind
MAX_PENDING_HANDSHAKES = 16
#: Connection requests the kernel queues for a bind (serial connects beyond
#: a short backlog would wait for SYN retransmits, a second or more).
LISTEN_BACKLOG = 128

_IOV_MAX = 512
#: A sending thread writes to the socket itself when the queue is idle, at
#: most once per DIRECT_GAP seconds; in between, the I/O thread batches.
#: Sparse messages (requests, replies, ping-pong) skip a thread hand-off;
#: streams keep one ``sendmsg`` for many packages.
DIRECT_GAP = 50e-6
#: Buffers queued for one write are joined into one when they add up to at
#: most this many bytes (see StreamLink._send_plain).
_JOIN_LIMIT = 128 * 1024
#: A writer takes at most this many bytes of packages from the send queue at
#: a time (at least one package): what it holds is outside the queue's bound.
_TAKE_BYTES = 256 * 1024
#: Send buffer a Unix-socket link asks the kernel for (Linux doubles it and
#: caps the request at ``net.core.wmem_max``). The default, ~208 KiB, is a
#: tenth of what a loopback TCP socket grows to by itself: a stream of small
#: messages then waits for the reader every couple of thousand packages
#: (ipc:// one-way 100 B measured 640k msgs/s with it, 990k with this).
UNIX_SNDBUF = 1 << 20
_TLS_REQUIRED = b"ERROR: TLS required.\r\n"
#: connect() errors that mean "not listening yet" (or going away): try again.
#: (ENOENT: a Unix socket's file is not there yet.)
_RETRY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOENT}
#: bind() errors about the port (the next port may be free); others are about the host.
_PORT_ERRNOS = {errno.EADDRINUSE, errno.EACCES, errno.EPERM} | {
    getattr(errno, name) for name in ("WSAEADDRINUSE", "WSAEACCES") if hasattr(errno, name)
}
#: A re-dial gives up on these kinds of failure (see Handshake); it retries the others.
_FATAL_KINDS = ("auth", "tls")


def _consume(bufs: list, sent: int) -> None:
    """Drop the first ``sent`` bytes from a list of buffers (after a partial send)."""
    i, count = 0, len(bufs)
    while i < count and sent >= len(bufs[i]):
        sent -= len(bufs[i])
        i += 1
    del bufs[:i]
    if sent:
        bufs[0] = memoryview(bufs[0])[sent:]


def sock_pair(addr: Any) -> tuple:
    """``(host, port)`` of a socket address: an IP pair, or ``(path, 0)`` for a Unix socket."""
    if isinstance(addr, tuple):
        return addr[:2]
    if isinstance(addr, (bytes, bytearray)):
        addr = os.fsdecode(bytes(addr))
    return (addr or "", 0)


def split_address(address: str, ssl_context: ssl.SSLContext | None) -> tuple:
    """Parse a ``tcp://`` or ``tls://`` address and check it against ``ssl_context``:
    ``(protocol, host, port)``."""
    proto, host, port = parse_address(address)
    if proto not in ("tcp", "tls"):
        raise ValueError(f"unsupported protocol {proto!r} in address {address!r} (use tcp:// or tls://)")
    if ssl_context is not None:
        import ssl  # (a context was made with it: already imported)

        if not isinstance(ssl_context, ssl.SSLContext):
            raise ValueError(f"ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}")
        if proto != "tls":
            raise ValueError(f"an ssl_context is for tls:// addresses, not {address!r}")
    return proto, host, port


def _hostname(address: str) -> str:
    """The host as written in the address (what a TLS certificate names)."""
    return (
        address.partition("://")[2].partition(":")[0].strip() if "://" in address else address.partition(":")[0].strip()
    )


# -- opening --------------------------------------------------------------------------------


def open_bind(
    owner: LinkOwner,
    handle: Connection,
    address: str,
    max_tries: int = 1,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int | None = 1,
) -> StreamLink:
    """Listen on a ``tcp://`` or ``tls://`` ``address``; return the WAITING link (caller's thread).

    With ``max_tries`` > 1, ports after the first are tried (``port +
    int(sqrt(i + 1))`` for try i) when it is taken. Port 0 lets the system
    choose a free port. Raises :class:`~yoton.errors.BindError` when none is
    free, naming each port tried and why it failed. ``max_connections``: see
    :mod:`.acceptor`.
    """
    proto, host, port = split_address(address, ssl_context)
    if proto == "tls" and ssl_context is None:
        raise ValueError(f"binding to {address!r} needs an ssl_context with a certificate")
    max_tries = int(max_tries)
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    max_connections = check_max_connections(max_connections)
    sock = _bind_tcp(host, port, max_tries)
    link = StreamLink(owner, handle)
    link.local_address = sock.getsockname()[:2]
    return listen(owner, link, sock, ssl_context, max_connections, f"port {link.local_address[1]}")


def _bind_tcp(host: str, port: int, max_tries: int) -> socket.socket:
    """A listening TCP socket on ``host``, at ``port`` or one of the next ones (see open_bind)."""
    tried: list = []  # (port, OSError)
    for i in range(max_tries):
        if port >= 2**16:
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            tried.append((port, exc))
            log.info("yoton: cannot bind to %s port %d: %s", host, port, _why(exc))
            if exc.errno not in _PORT_ERRNOS:
                break  # (about the host, not the port: every port would fail alike)
            port += int(math.sqrt(i + 1))
    raise BindError(_bind_failure(host, tried, port >= 2**16))


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _bind_failure(host: str, tried: list, ran_out: bool) -> str:
    """The BindError message: which ports were tried and why each failed, and what to do."""
    reasons: dict = {}
    for port, exc in tried:
        reasons.setdefault(_why(exc), []).append(port)

    def ports(numbers: list) -> str:
        shown = ", ".join(map(str, numbers[:6]))
        if len(numbers) > 8:
            shown += f", ..., {numbers[-1]}"
        elif len(numbers) > 6:
            shown += ", " + ", ".join(map(str, numbers[6:]))
        return f"port {shown}" if len(numbers) == 1 else f"ports {shown} ({len(numbers)})"

    if len(tried) == 1:
        head = f"could not bind to {host} port {tried[0][0]}"
    else:
        head = f"could not bind to {host} on any of the {len(tried)} ports tried"
    detail = "; ".join(f"{ports(numbers)}: {reason}" for reason, numbers in reasons.items())
    if ran_out:
        detail += "; then ran out of ports (65535 is the last)"
    text = f"{head} ({detail})."
    if tried and all(exc.errno in _PORT_ERRNOS for _, exc in tried):
        text += " Bind to port 0 to let the system choose a free port, or use a Unix socket (ipc://PATH)."
    return text


def listen(
    owner: LinkOwner,
    link: StreamLink,
    sock: socket.socket,
    ssl_context: ssl.SSLContext | None,
    max_connections: int | None,
    where: str,
    cleanup: Callable[[], object] | None = None,
) -> StreamLink:
    """Make ``link`` (new, its local address set) the WAITING first link of a
    bind listening on ``sock`` (bound, listening, non-blocking); return it.
    ``where`` names the bind in log lines; ``cleanup()`` runs once the bind
    stops listening (after the socket is closed)."""
    link.set_state(WAITING)
    listener = Listener(link, sock, ssl_context, max_connections, where, cleanup)
    loop = owner.io_loop()
    link.loop = loop
    owner.link_attached(link)
    owner.listener_opened(listener)
    loop.call_soon(listener.start, loop)
    return link


def open_connect(
    owner: LinkOwner,
    handle: Connection,
    address: str,
    timeout: float = 1.0,
    ssl_context: ssl.SSLContext | None = None,
    reconnect: ReconnectPolicy | bool | None = None,
) -> StreamLink:
    """Connect to a bind at a ``tcp://`` or ``tls://`` ``address``; return the CONNECTED link
    (see :func:`dial`)."""
    proto, host, port = split_address(address, ssl_context)
    if proto == "tls" and ssl_context is None:
        import ssl

        ssl_context = ssl.create_default_context()
    try:
        family, sockaddr = _resolve(host, port)
    except (OSError, UnicodeError) as exc:  # (UnicodeError: a name the IDNA codec refuses)
        raise ConnectError(f"Could not connect to {host}:{port}: {exc}") from exc
    target = DialTarget(family, sockaddr, f"{host}:{port}", ssl_context, _hostname(address) if ssl_context else None)
    if sockaddr[0] != host:  # a name (an IP address comes back as written)
        target.name = (host, port)  # (looked up again before each re-dial)
    return dial(owner, StreamLink(owner, handle), target, timeout, reconnect)


def _resolve(host: str, port: int) -> tuple:
    """``(family, sockaddr)`` of the first IPv4 address of ``host`` (blocking;
    OSError, or UnicodeError for a name the IDNA codec refuses)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
    return family, sockaddr


class DialTarget:
    """Where a connect dials, and how (TLS or not): kept by a link that re-dials."""

    def __init__(
        self,
        family: int,
        sockaddr: Any,
        display: str,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.family = family
        self.sockaddr = sockaddr
        self.display = display  # for messages: "host:port" or the socket's path
        #: ``(host, port)`` when the host is a name, looked up again before
        #: each re-dial (it may have moved); None for an IP address or a path.
        self.name: tuple | None = None
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname

    def __repr__(self) -> str:
        return f"<DialTarget {self.display}>"

    def attempt(
        self,
        loop: IOLoop,
        config: LinkConfig,
        deadline: float,
        done: Callable[[Handshake], object],
        failed: Callable[[Handshake, str, str], object],
    ) -> Handshake:
        """A new socket and :class:`Handshake` to dial once (not started). Raises
        :class:`ssl.SSLError` when the TLS context refuses to start."""
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            tls = _tls().TlsPipe(self.ssl_context, False, self.server_hostname) if self.ssl_context else None
        except _ssl_errors():
            sock.close()
            raise
        protocol = Protocol("connect", config.local_id, config.pid, config.max_package_size, auth_key=config.auth_key)
        return Handshake(loop, sock, protocol, tls, deadline, done, failed, connect_to=self.sockaddr)


def dial(
    owner: LinkOwner,
    link: StreamLink,
    target: DialTarget,
    timeout: float,
    reconnect: ReconnectPolicy | bool | None = None,
) -> StreamLink:
    """Connect ``link`` (new) to ``target``; return it CONNECTED (caller's thread).

    The connect and the handshake run on the loop side (the same
    :class:`Handshake` a bind runs); this thread waits for them, trying
    again while the peer is not listening, until ``timeout`` seconds have
    passed. Raises :class:`~yoton.errors.ConnectError` (nothing answered in
    time), :class:`~yoton.errors.ConnectHandshakeError` (a peer answered but
    refused us; :class:`~yoton.errors.AuthenticationError` when the auth
    proofs failed) or :class:`~yoton.errors.TLSError`. ``reconnect``: a
    :class:`~yoton.transport.reconnect.ReconnectPolicy` (or True), to re-dial
    when the peer is lost later.
    """
    policy = ReconnectPolicy.from_option(reconnect)
    where = target.display
    timeout = float(timeout)
    deadline = time.monotonic() + timeout
    loop = owner.io_loop()
    config = owner.config
    problem = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectError(f"Could not connect to {where} within {timeout:g} s ({problem}).")
        outcome = _Outcome()
        try:
            handshake = target.attempt(loop, config, deadline, outcome.done, outcome.failed)
        except _ssl_errors() as exc:
            raise TLSError(f"Could not connect to {where}: {describe(exc)}.") from exc
        except OSError as exc:
            raise ConnectError(f"Could not connect to {where}: {exc}") from exc
        loop.call_soon(handshake.start)
        outcome.wait(deadline)
        if outcome.result is None:  # (past the deadline, still in progress)
            loop.call_soon(handshake.drop, "connect timed out")
            raise ConnectError(f"Could not connect to {where}: handshake timed out.")
        kind, detail = outcome.result
        if kind == "ok":
            break
        if kind == "retry":  # not listening yet, or went away: again, shortly
            problem = detail
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            continue
        if kind == "tls":
            raise TLSError(f"Could not connect to {where}: TLS handshake failed ({detail}).")
        if kind == "auth":
            raise AuthenticationError(f"Could not connect: {detail}.")
        if kind == "timeout":
            raise ConnectError(f"Could not connect to {where}: handshake timed out.")
        if kind == "unreachable":
            raise ConnectError(f"Could not connect to {where}: {detail}.")
        raise ConnectHandshakeError(f"Could not connect: {detail}")
    link.target = target
    link.policy = policy
    link.adopt(handshake)
    link.loop = loop
    owner.link_attached(link)
    owner.link_established(link)  # (before connect() returns: what is sent next goes to it)
    loop.call_soon(link.start_io)
    return link


class _Outcome:
    """How a connect's handshake ended, told by the loop side to the waiting caller."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: tuple[str, Any] | None = None  # ("ok", None) or (kind, detail)

    def done(self, handshake: Handshake) -> None:
        self.result = ("ok", None)
        self.event.set()

    def failed(self, handshake: Handshake, kind: str, detail: str) -> None:
        self.result = (kind, detail)
        self.event.set()

    def wait(self, deadline: float) -> None:
        # (the main thread waits in slices: a Ctrl-C is not held up by the wait)
        while not self.event.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                return


# -- the handshake driver -------------------------------------------------------------------


class Handshake:
    """The TLS (if any) and yoton handshakes of one socket, non-blocking, on
    the loop side -- for a bind's client and for a connect alike.

    ``done(handshake)`` is called when the yoton handshake succeeded (the
    socket and protocol are then the caller's), ``failed(handshake, kind,
    detail)`` otherwise, ``kind`` being "retry" (refused, reset, or closed
    before it said anything: the peer is not there yet), "unreachable" (the
    dial failed otherwise: no route, permission denied, ...), "tls", "auth",
    "timeout" or "refused" (it answered, but not as a yoton peer that takes
    us). ``connect_to``: dial that address first (connect side).
    ``vet(peer_id)`` (bind side): called once the client's hello is read,
    before it is answered; a reason it returns refuses the client with an
    ``ERROR:`` line (e.g. a bind that is full).
    """

    def __init__(
        self,
        loop: IOLoop,
        sock: socket.socket,
        protocol: Protocol,
        tls: TlsPipe | None,
        deadline: float,
        done: Callable[[Handshake], object],
        failed: Callable[[Handshake, str, str], object],
        connect_to: Any = None,
        peer: tuple | None = None,
        vet: Callable[[int], str | None] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.tls = tls
        self.deadline = deadline
        self._done, self._failed = done, failed
        self._connect_to = connect_to
        self.peer = peer  # (host, port) of the other end
        self.server = protocol.side == "bind"
        self._vet = vet
        self._first = True
        self._heard = False  # the peer sent something
        self.over = False

    def start(self) -> None:
        """Begin (loop side): dial, or wait for the client's first bytes."""
        if self._connect_to is not None:
            try:
                self.sock.connect(self._connect_to)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._fail("retry" if exc.errno in _RETRY_ERRNOS else "unreachable", _why(exc))
                return
            self.loop.register(self.sock, self, write=True)
        else:
            self.loop.register(self.sock, self)
        self.loop.housekeepers.add(self)

    def _on_writable(self) -> None:
        # (connect side only) The dial completed, one way or the other.
        if self.over:
            return
        error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._fail("retry" if error in _RETRY_ERRNOS else "unreachable", _why(OSError(error, os.strerror(error))))
            return
        self.loop.set_interest(self.sock, self, True, False)
        try:
            self.peer = sock_pair(self.sock.getpeername())
        except OSError as exc:
            self._fail("retry", str(exc))
            return
        tls = self.tls
        if tls is not None:
            try:
                tls.do_handshake()
            except _ssl_errors() as exc:
                self._tls_failed(exc)
                return
            self._send(tls.take())  # (the ClientHello)
        else:
            self._send(self.protocol.data_to_send())  # (our hello)

    def _on_readable(self) -> None:
        if self.over:
            return
        protocol, tls = self.protocol, self.tls
        data: bytes | None
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # (refused, reset: not there, or going away; a bind waits for the next)
            self._fail("retry", f"connection error during handshake: {exc}")
            return
        if data:
            self._heard = True
        if tls is not None:
            if not data and not tls.handshake_done:
                self._fail(
                    "tls",
                    "TLS handshake failed: the other end closed the connection"
                    if self.server
                    else "the other end closed the connection (is it a tls:// bind?)",
                )
                return
            if data:
                if self.server and self._first and not _tls().looks_like_tls(data):
                    self._send(_TLS_REQUIRED)
                    self._fail("tls", "not a TLS client (plaintext on a tls:// bind)")
                    return
                self._first = False
                try:
                    tls.feed(data)
                    if not tls.handshake_done:
                        if not tls.do_handshake():
                            self._send(tls.take())
                            return
                        self._send(tls.take())
                        if not self.server:  # TLS is up: now our hello, inside it
                            tls.write(protocol.data_to_send())
                            self._send(tls.take())
                    data = tls.read() or (b"" if tls.eof else None)
                except _ssl_errors() as exc:
                    self._tls_failed(exc)
                    return
                self._send(tls.take())
                if data is None:
                    return
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
        answer = protocol.data_to_send()
        vet = self._vet
        if vet is not None and protocol.peer_id:
            self._vet = None
            reason = vet(protocol.peer_id)
            if reason is not None:  # (our hello is not sent: the client learns why instead)
                answer = b"ERROR: " + reason.encode("ascii", "replace") + b".\r\n"
                if tls is not None:
                    tls.write(answer)
                    answer = tls.take()
                self._send(answer)
                self._fail("refused", reason)
                return
        if answer:
            if tls is not None:
                tls.write(answer)
                answer = tls.take()
            self._send(answer)
        if protocol.handshake_done:
            # Done even if bytes after the hello already ended the stream
            # (packages + close signal, or a bad header, in the same read):
            # the link delivers those packages and then closes.
            self._finish()
        elif protocol.state is not HANDSHAKE:
            self._fail("auth" if protocol.auth_failed else "refused", protocol.close_reason or "closed")

    def _tls_failed(self, exc: ssl.SSLError) -> None:
        assert self.tls is not None
        self._send(self.tls.take())  # (the alert, if any)
        self._fail("tls", f"TLS handshake failed: {describe(exc)}" if self.server else describe(exc))

    def _send(self, data: bytes) -> None:
        # Handshake bytes are small and the socket buffer is empty: they fit.
        # A peer that does not read fails its handshake anyway.
        if data:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def _housekeeping(self, now: float) -> None:
        if now >= self.deadline and not self.over:
            if self.protocol.awaiting_proof:
                self._fail("auth", f"authentication failed (no proof within {HANDSHAKE_DEADLINE:g} s)")
            else:
                self._fail("timeout", f"no handshake within {HANDSHAKE_DEADLINE:g} s")

    def _release(self) -> None:
        self.over = True
        self.loop.unregister(self.sock)
        self.loop.housekeepers.discard(self)

    def _finish(self) -> None:
        self._release()
        self._done(self)

    def _fail(self, kind: str, detail: str) -> None:
        if self.over:
            return
        self._release()
        try:
            self._failed(self, kind, detail)  # (before the close: the peer sees EOF after it)
        finally:
            self.sock.close()

    def drop(self, detail: str) -> None:
        """Give up on this handshake (loop side)."""
        self._fail("refused", detail)


# -- a bind's listening socket ----------------------------------------------------------------


class Listener(Acceptor):
    """The listening socket of a bind and its pending handshakes (the peers
    it admits follow the :class:`~yoton.transport.acceptor.Acceptor` rules)."""

    resumable = True

    def __init__(
        self,
        link: StreamLink,
        sock: socket.socket,
        ssl_context: ssl.SSLContext | None,
        max_connections: int | None,
        where: str,
        cleanup: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(link, max_connections)
        self.sock = sock
        self.ssl_context = ssl_context
        self.where = where  # "port N" or the socket's path (log lines)
        self._cleanup = cleanup
        self.pending: dict = {}  # socket -> Handshake
        self.loop: IOLoop | None = None

    def start(self, loop: IOLoop) -> None:
        """Watch the socket (loop side)."""
        if self.closed:
            return
        self.loop = loop
        loop.register(self.sock, self)

    def _on_readable(self) -> None:
        config = self.owner.config
        while not self.closed:
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("yoton: accept failed on %s: %s", self.where, exc)
                return
            if len(self.pending) >= MAX_PENDING_HANDSHAKES:
                oldest = next(iter(self.pending.values()))
                oldest.drop("too many pending handshakes")
            sock.setblocking(False)
            protocol = Protocol("bind", config.local_id, config.pid, config.max_package_size, auth_key=config.auth_key)
            tls = _tls().TlsPipe(self.ssl_context, True) if self.ssl_context is not None else None
            assert self.loop is not None  # (started: it watches the socket)
            handshake = Handshake(
                self.loop,
                sock,
                protocol,
                tls,
                time.monotonic() + HANDSHAKE_DEADLINE,
                self._accept,
                self._refuse,
                peer=sock_pair(addr),
                vet=self.refusal,
            )
            self.pending[sock] = handshake
            handshake.start()

    def _accept(self, handshake: Handshake) -> None:
        del self.pending[handshake.sock]
        try:
            # Asked once, here: a reset arriving later must not stop adopt()
            # half-way (that left the bind WAITING with no listener).
            handshake.peer = sock_pair(handshake.sock.getpeername())
        except OSError as exc:  # reset right after its hello: keep waiting
            handshake.sock.close()
            self._refuse(handshake, "retry", f"connection lost during handshake: {exc}")
            return
        first = self.first
        assert isinstance(first, StreamLink)
        kind, link = self.admit(handshake.protocol.peer_id, lambda handle: StreamLink(self.owner, handle))
        if kind == "refused":  # (it became full since its hello was vetted)
            handshake.sock.close()
            self._refuse(handshake, kind, link)
            return
        if kind == "resume":
            link.resume(handshake, redialled=False)
            return
        if kind == "new":
            link.local_address = first.local_address
            link.unix_path = first.unix_path
            link.loop = self.loop
            self.owner.link_attached(link)
        link.adopt(handshake)
        self.owner.link_established(link)
        link.start_io()
        self.admitted(link)

    def _refuse(self, handshake: Handshake, kind: str, detail: str) -> None:
        self.pending.pop(handshake.sock, None)
        if kind == "timeout":
            detail = f"no handshake within {HANDSHAKE_DEADLINE:g} s"
        log.info("yoton: refused client %s on %s: %s", handshake.peer, self.where, detail)

    def stop(self) -> None:
        """Close the socket; drop the pending handshakes (loop side, or before it started)."""
        for handshake in list(self.pending.values()):
            handshake.drop("bind closed")
        if self.loop is not None:
            self.loop.unregister(self.sock)
        self.sock.close()
        if self._cleanup is not None:
            self._cleanup()


# -- the link ---------------------------------------------------------------------------------


class StreamLink(Link):
    """A :class:`~yoton.transport.link.Link` over a stream socket: TCP (plain
    or TLS) or a Unix socket."""

    def __init__(self, owner: LinkOwner, handle: Connection) -> None:
        super().__init__(owner, handle)
        self.sock: socket.socket | None = None
        self.protocol: Protocol | None = None
        self.tls: TlsPipe | None = None
        self.unix_path: str | None = None  # a Unix socket's path (both ends name it)
        # Re-dialling (connect side, with a reconnect policy):
        self.target: DialTarget | None = None
        self.policy: ReconnectPolicy | None = None
        self._backoff: Backoff | None = None
        self._redial_timer = None  # the IOLoop timer of the next attempt
        self._lookup: object | None = None  # the host name lookup under way (a token)
        self._dialing: Handshake | None = None  # the attempt in progress
        self._lost_reason = ""
        self._wbufs: list = []
        self._wbytes = 0  # bytes in _wbufs (kept by every change to it: a writer never sums them)
        self._write_scheduled = False
        self._want_write = False
        self._close_sent = False  # CLOSING: the close signal is in _wbufs
        self._write_shut = False
        # One writer at a time: the loop side or a direct send. Reentrant: a
        # writer that finds the socket broken tears the link down, and
        # teardown takes it to empty the buffers.
        self._wlock = threading.RLock()
        self._direct_after = 0.0
        self._backlog: bytes | memoryview = b""  # TLS: ciphertext the kernel has not taken yet
        self._send: Callable[[list, int], int] = None  # type: ignore[assignment]  # (set by adopt(), before any send)

    # -- setting up --------------------------------------------------------------------

    def adopt(self, handshake: Handshake) -> None:
        """Take over a socket whose handshake succeeded (before its I/O starts)."""
        self._take_socket(handshake)
        self.set_state(CONNECTED)

    def _take_socket(self, handshake: Handshake) -> None:
        sock = handshake.sock
        if sock.family != getattr(socket, "AF_UNIX", None):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local_address = sock.getsockname()[:2]
            self.peer_address = handshake.peer or sock.getpeername()[:2]
        else:
            self.local_address = self.peer_address = (self.unix_path or "", 0)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < UNIX_SNDBUF:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)
                except OSError:  # (a platform that refuses it keeps its default)
                    pass
        # (Under the writer's lock: a sending thread that found no TLS while the
        # link moved must see the new socket and its TLS together; see _write_lone.)
        with self._wlock:
            self.sock, self.protocol, self.tls = sock, handshake.protocol, handshake.tls
        self._send = self._send_plain if self.tls is None else self._send_tls
        self.peer_id, self.peer_pid = self.protocol.peer_id, self.protocol.peer_pid
        self.last_send = self.last_recv = time.monotonic()

    def start_io(self) -> None:
        """Serve the socket once CONNECTED and established with the owner (loop
        side): packages that came with the handshake are delivered, what is
        queued is written."""
        loop, sock, protocol = self.loop, self.sock, self.protocol
        assert loop is not None and sock is not None and protocol is not None, "start_io before adopt"
        # (a write before now may wait for 'writable' already: its interest could
        # not be set on a socket the loop did not watch yet)
        loop.register(sock, self, write=self._want_write)
        if self.read_holds:  # (a link that moved to a new socket keeps its holds)
            self._update_interest()
        loop.housekeepers.add(self)
        events = protocol.events_received()
        if events:
            self._handle_events(events)
        self._write_now()

    # -- reading (loop side) ---------------------------------------------------------------

    def _on_readable(self) -> None:
        protocol, sock = self.protocol, self.sock
        assert protocol is not None and sock is not None  # (registered only once adopted)
        try:
            if self.tls is None:
                nbytes = sock.recv_into(protocol.get_buffer())
            else:
                nbytes = self._read_tls()
        except (BlockingIOError, InterruptedError):
            return
        except _ssl_errors() as exc:
            self.lost(f"TLS error: {describe(exc)}.")
            return
        except OSError as exc:
            self.lost(f"Connection broken: {exc}.")
            return
        if nbytes:
            if self.tls is None:
                protocol.buffer_updated(nbytes)
            # (note_received, inline: this is the path of every read)
            self.last_recv = time.monotonic()
            self.bytes_in += nbytes
            if self.is_timedout:
                self.note_received(0)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        if events:
            if events[0] is not HANDSHAKE_DONE and events[-1] is not CONNECTION_CLOSED:
                self.packages_in += len(events)  # (deliver, inline: packages only)
                self.owner.packages_arrived(self, events)
            else:
                self._handle_events(events)

    def _read_tls(self) -> int:
        """Read ciphertext, feed the plaintext to the protocol; return the bytes read."""
        sock, tls, protocol, loop = self.sock, self.tls, self.protocol, self.loop
        assert sock is not None and tls is not None and protocol is not None and loop is not None
        data = sock.recv(_tls().CHUNK)
        if data:
            tls.feed(data)
            plain = tls.read()
            if plain:
                protocol.receive_data(plain)
            if tls.eof:
                protocol.receive_eof()
            if tls.pending_out:  # TLS itself wants to answer (e.g. a key update)
                self._backlog = memoryview(bytes(self._backlog) + tls.take())
                if not self._write_scheduled:
                    self._write_scheduled = True
                    loop.schedule_write(self)
        return len(data)

    def _handle_events(self, events: list) -> None:
        # Packages, maybe after HANDSHAKE_DONE and before CONNECTION_CLOSED
        # (the protocol emits nothing after that).
        closed = events[-1] is CONNECTION_CLOSED
        start, stop = int(events[0] is HANDSHAKE_DONE), len(events) - closed
        if stop > start:
            self.deliver(events[start:stop] if start or closed else events)
        if closed:
            protocol = self.protocol
            assert protocol is not None
            reason = protocol.close_reason
            if self.state is CLOSING:
                self.teardown(self.close_reason)
            elif reason == REASON_EOF:  # (ended without the close signal: the peer is gone)
                self.lost(reason)
            else:
                self.teardown(reason)

    def set_reading(self, flag: bool) -> None:
        self._update_interest()

    def _update_interest(self) -> None:
        if self.sock is not None and self.loop is not None:
            self.loop.set_interest(self.sock, self, not self.read_holds, self._want_write)

    # -- writing -----------------------------------------------------------------------

    def enqueue(self, items: list[tuple[bytes, bytes]], total: int) -> bool:
        """See :meth:`Link.enqueue`. On an idle link (nothing queued or being
        written, at most once per :data:`DIRECT_GAP`) small packages skip the
        queue and are written at once: a lone one from a sending thread, or
        what the loop side passes on (a relay forwards a read's packages in
        one call). What a round trip (a request, a ping, through relays or
        not) costs most of the time; a stream of them still goes in batches."""
        if (
            total <= _JOIN_LIMIT
            and not self._wbufs
            and not self._write_scheduled
            and self.state is CONNECTED
            and self.tls is None
            and not self.stalled
            and not self.sendq
            and self.loop is not None
        ):
            now = time.monotonic()
            # (a thread is on the loop side or not for good: only it can change that)
            if (
                now >= self._direct_after
                and (len(items) == 1 or self.loop.on_loop_side())
                and self._wlock.acquire(False)
            ):
                try:
                    done = self._write_lone(items, total, now)
                finally:
                    self._wlock.release()
                if done:
                    return False
        return super().enqueue(items, total)

    def _write_lone(self, items: list[tuple[bytes, bytes]], total: int, now: float) -> bool:
        """(holding _wlock) :meth:`enqueue`'s short way; False if the packages
        must take the queue after all (nothing was written)."""
        sock, loop = self.sock, self.loop
        if sock is None or loop is None or self._wbufs or self._want_write or self.sendq or self.state is not CONNECTED:
            return False
        if self.tls is not None:  # (enqueue saw none, but a bind's link took a re-dial since: TLS again)
            return False
        self._direct_after = now + DIRECT_GAP
        # Into the write buffers before the send, as every writer does: a send
        # that re-enters this thread meanwhile (from a signal handler) then
        # finds the link busy and queues behind the rest of this package
        # instead of writing into the middle of it.
        bufs = self._wbufs
        if len(items) == 1:
            bufs.append(items[0][0] + items[0][1])
        else:
            bufs.append(b"".join(chain.from_iterable(items)))
        self._wbytes = total
        try:
            self._send_buffers(now)
        except OSError:  # would block, or broken: the queue and the loop side deal with it
            if not self.sendq:  # (nothing re-entered: the package takes the queue, in order)
                bufs.clear()
                self._wbytes = 0
                return False
            # (a re-entered send queued behind it: it goes first, from the buffers)
        self.packages_out += len(items)
        if bufs:  # (the kernel took part of it: the rest goes first, from the loop side)
            self._write_scheduled = True
            loop.schedule_write(self)
            return True
        self.owner.flushed()
        return True

    def kick_writer(self) -> None:
        if self._write_scheduled or self.state is not CONNECTED:
            return
        now = time.monotonic()
        if now >= self._direct_after and self.tls is None and self._wlock.acquire(False):
            self._direct_after = now + DIRECT_GAP
            try:
                if self._write_direct(now):
                    return
            finally:
                self._wlock.release()
        self._write_scheduled = True
        assert self.loop is not None  # (CONNECTED: adopted, and the owner gave it its loop)
        self.loop.schedule_write(self)

    def unwritten(self) -> int:
        return self._wbytes + len(self._backlog)

    def partial(self) -> tuple | None:
        protocol = self.protocol
        return None if protocol is None else protocol.partial()

    def _on_writable(self) -> None:
        self._write_now()

    def _write_now(self) -> None:
        with self._wlock:
            self._write_locked()

    def _take(self) -> None:
        """Move queued packages into the write buffers, up to about _IOV_MAX
        buffers (a writer, holding _wlock)."""
        # Into the buffers before they leave the queue (under its lock):
        # flush() must never see both empty while packages are on their way.
        self.sendq.take(max(1, (_IOV_MAX - len(self._wbufs)) // 2), self._into_wbufs, _TAKE_BYTES)

    def _into_wbufs(self, items: list, nbytes: int) -> None:
        self._wbufs.extend(chain.from_iterable(items))
        self._wbytes += nbytes

    def _write_locked(self) -> None:
        self._write_scheduled = False
        if self.sock is None or self.state not in (CONNECTED, CLOSING):
            return
        bufs, sendq = self._wbufs, self.sendq
        while True:
            # While the kernel is full (_want_write), leftovers go first: topping
            # them up at every send would let _wbufs grow past max_queue_bytes.
            if sendq and len(bufs) < _IOV_MAX and not (bufs and self._want_write):
                self._take()
            if not bufs and not self._backlog:
                if self.state is not CLOSING or self._close_sent:
                    break
                self._close_sent = True  # all queued packages went: the close signal last
                bufs.append(CLOSE_BYTES)
                self._wbytes += len(CLOSE_BYTES)
            try:
                sent = self._send(bufs, self._wbytes)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.lost(f"Connection broken: {exc}.")
                return
            if sent:
                self.progress(sent)
            if sent == self._wbytes:
                bufs.clear()
                self._wbytes = 0
            else:
                _consume(bufs, sent)
                self._wbytes -= sent
            if bufs or self._backlog:  # the kernel is full: wait until writable
                if not self._want_write:
                    self._want_write = True
                    self._update_interest()
                return
        if self._want_write:
            self._want_write = False
            self._update_interest()
        self.owner.flushed()
        if self.state is CLOSING and not self._write_shut:
            # All sent, close signal last. Half-close and wait for the peer's
            # EOF: closing now, with unread bytes in our receive buffer, would
            # make the kernel send a reset that can destroy data in flight.
            self._write_shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.teardown(self.close_reason)

    def _write_direct(self, now: float) -> bool:
        """Write the idle queue from the sending thread; True if all of it went.

        Anything else (a partial write, a full kernel buffer, an error) is
        left for the loop side, which also owns every state change.
        """
        bufs, sendq, loop = self._wbufs, self.sendq, self.loop
        if bufs or self._want_write or self.state is not CONNECTED or loop is None or loop.on_loop_side():
            return False
        if self.sock is None or self.tls is not None:  # (lost or moving to a new stream: see _write_lone)
            return False
        self._take()
        try:
            self._send_buffers(now)
        except OSError:  # would block, or broken: the loop side finds out
            return False
        if bufs or sendq:
            return False
        self.owner.flushed()
        return True

    def _send_buffers(self, now: float) -> None:
        """(a direct writer -- a sending thread, or the loop side's short way --
        holding _wlock) Send what the write buffers hold, as far as the kernel
        takes it; what it does not take stays in them. OSError as from the
        socket (nothing then went)."""
        bufs = self._wbufs
        sock = self.sock
        assert sock is not None  # (checked under _wlock by the caller)
        sent = sock.send(bufs[0]) if len(bufs) == 1 else self._send_plain(bufs, self._wbytes)
        self.last_send = now
        self.bytes_out += sent
        if sent == self._wbytes:
            bufs.clear()
            self._wbytes = 0
        else:
            _consume(bufs, sent)
            self._wbytes -= sent

    def _send_plain(self, bufs: list, nbytes: int) -> int:
        """``sendmsg`` for plain TCP (``bufs`` hold ``nbytes``); many small buffers are joined first.

        The kernel's cost grows with the number of buffers (for 256 packages
        of 100 bytes, a single joined buffer went out twice as fast as 512
        header and body buffers); a copy of up to :data:`_JOIN_LIMIT` bytes
        is cheaper. Large bodies still go straight from their own buffer.
        """
        sock = self.sock
        assert sock is not None
        if len(bufs) == 1:
            return sock.send(bufs[0])
        if len(bufs) > 2 and nbytes <= _JOIN_LIMIT:
            return sock.send(b"".join(bufs))
        return sock.sendmsg(bufs)

    def _send_tls(self, bufs: list, nbytes: int) -> int:
        """``sendmsg`` for TLS: encrypt up to CHUNK bytes of ``bufs``; return how many were taken."""
        tls, sock = self.tls, self.sock
        assert tls is not None and sock is not None
        taken, chunk = 0, _tls().CHUNK
        if not self._backlog:
            for buf in bufs:
                tls.write(buf)
                taken += len(buf)
                if taken >= chunk:
                    break
            self._backlog = memoryview(tls.take())
        try:
            sent = sock.send(self._backlog)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self._backlog = self._backlog[sent:] if sent < len(self._backlog) else b""
        return taken

    # -- time (loop side) --------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        if self.state is CLOSING:
            if self.closing_overdue(now):
                self.teardown(self.close_reason)
            return
        if self.state is RECONNECTING:
            self.check_silence(now)  # (the stall rule: senders do not wait for ever)
            return
        if self.state is not CONNECTED:
            return
        policy = self.policy
        if policy is not None and policy.dead_after is not None and not self.read_holds:
            if now - self.last_recv > policy.dead_after:
                self.lost(f"Nothing from the peer for {policy.dead_after:g} s.")
                return
        if now - self.last_send >= HEARTBEAT_INTERVAL and not self.sendq and not self._wbufs:
            with self._wlock:
                if not self._wbufs:
                    self._wbufs.append(HEARTBEAT_BYTES)
                    self._wbytes += len(HEARTBEAT_BYTES)
                self._write_locked()
        self.check_silence(now)

    # -- closing -----------------------------------------------------------------------

    def begin_close(self, reason: str) -> None:
        """Queue the close signal and finish once it is written (loop side)."""
        if self.state is WAITING or self.state is RECONNECTING:
            self.teardown(reason)  # (no peer to flush to)
        elif self.state is CONNECTED:
            self.start_closing(reason)
            self._write_now()  # (queued packages first, then the close signal)

    def teardown(self, reason: str | None) -> None:
        """Close the socket and announce the end (loop side, or before I/O starts)."""
        if self.state is CLOSED:
            return
        loop = self.loop
        if self.state is WAITING:
            self.stop_listening()  # (a waiting bind closed: it stops waiting)
        self._stop_redialling()
        if loop is not None:
            loop.housekeepers.discard(self)
        # (Under the writer's lock: a direct send in another thread may be
        # half-way through these buffers, and must never write to a closed
        # socket's number, which the next socket opened may reuse.)
        with self._wlock:
            sock, self.sock = self.sock, None
            self._wbufs.clear()
            self._wbytes = 0
            self._backlog = b""
        if sock is not None:
            if loop is not None:
                loop.unregister(sock)
            sock.close()
        self.finish(reason)

    # -- losing the peer, re-dialling and moving to a new socket (loop side) -----------

    def lost(self, reason: str) -> None:
        """The stream broke or ended without the close signal: re-dial if this
        link has a reconnect policy (and was connected), else close."""
        if self.policy is None or self.state is not CONNECTED or self.target is None:
            self.teardown(reason)
            return
        lost = self._drop_socket()
        self.set_state(RECONNECTING)
        self.owner.link_interrupted(self)
        now = time.monotonic()
        if self._backoff is None:
            self._backoff = Backoff(self.policy)
        delay = self._backoff.lost(now)
        log.warning(
            "yoton: connection %r lost (%s); re-dialling %s%s",
            self.handle.name,
            reason.rstrip("."),
            self.target.display,
            f" ({lost} bytes already taken for writing were lost with it)" if lost else "",
        )
        self._lost_reason = reason
        self._schedule_attempt(delay)

    def _drop_socket(self) -> int:
        """Forget the socket (its buffers too); return the bytes that had been taken
        from the queue for it and are lost with it."""
        with self._wlock:  # (a direct send in another thread may be using them)
            sock, self.sock = self.sock, None
            lost = self._wbytes + len(self._backlog)
            self._wbufs.clear()
            self._wbytes = 0
            self._backlog = b""
        if sock is not None:
            loop = self.loop
            assert loop is not None  # (a socket is had only once the owner gave the link its loop)
            loop.unregister(sock)
            sock.close()
        self._want_write = False
        self.protocol = self.tls = None
        return lost

    def _redialling(self) -> tuple:
        """``(loop, target, policy, backoff)`` of a link that re-dials (loop side)."""
        loop, target, policy, backoff = self.loop, self.target, self.policy, self._backoff
        assert loop is not None and target is not None and policy is not None and backoff is not None
        return loop, target, policy, backoff

    def _schedule_attempt(self, delay: float) -> None:
        loop = self._redialling()[0]
        self._redial_timer = loop.call_later(self._attempt, delay)

    def _attempt(self) -> None:
        self._redial_timer = None
        if self.state is not RECONNECTING:
            return
        loop, target, policy, _ = self._redialling()
        if target.name is not None:
            # The host may have moved: look it up again, in a thread of its own
            # (a lookup can take seconds; the loop side never waits). A lookup
            # that fails, or takes longer than an attempt may, or a thread that
            # cannot start, leaves the address found last to dial.
            token = self._lookup = object()
            try:
                threading.Thread(
                    target=self._look_up, args=(token, *target.name), daemon=True, name="yoton-lookup"
                ).start()
            except RuntimeError:  # (no thread to be had)
                self._lookup = None
            else:
                self._redial_timer = loop.call_later(self._looked_up, policy.attempt_timeout, token, None)
                return
        self._dial()

    def _look_up(self, token: object, host: str, port: int) -> None:
        """(a thread of its own) Look ``host`` up; hand the address to the loop side."""
        try:
            found: tuple | None = _resolve(host, port)
        except Exception:  # (OSError; UnicodeError for a malformed name)
            found = None
        loop = self.loop
        if loop is not None and loop.running:
            loop.call_soon(self._looked_up, token, found)

    def _looked_up(self, token: object, found: tuple | None) -> None:
        """The lookup ended (``found``), or its time ran out (None): dial (loop side)."""
        if token is not self._lookup:
            return  # (the other one came first, or the link stopped re-dialling)
        self._lookup = None
        timer, self._redial_timer = self._redial_timer, None
        if timer is not None:
            IOLoop.cancel(timer)
        self._dial(found)

    def _dial(self, found: tuple | None = None) -> None:
        """One re-dial attempt, to ``found`` (``(family, sockaddr)``) if given (loop side)."""
        if self.state is not RECONNECTING:
            return  # (closed while the name was looked up)
        loop, target, policy, _ = self._redialling()
        if found is not None and found != (target.family, target.sockaddr):
            log.info("yoton: connection %r: %s is now at %s", self.handle.name, target.display, found[1][0])
            target.family, target.sockaddr = found
        deadline = time.monotonic() + policy.attempt_timeout
        try:
            handshake = target.attempt(loop, self.config, deadline, self._redialled, self._redial_failed)
        except _ssl_errors() as exc:
            self.teardown(f"Gave up reconnecting: {describe(exc)}.")
            return
        except OSError as exc:  # (no socket: out of file descriptors, ...)
            self._retry(f"{exc}")
            return
        self._dialing = handshake
        handshake.start()

    def _redialled(self, handshake: Handshake) -> None:
        if handshake is not self._dialing or self.state is not RECONNECTING:
            handshake.sock.close()  # (closed meanwhile)
            return
        self._dialing = None
        self._redialling()[3].succeeded(time.monotonic())
        self.resume(handshake, redialled=True)

    def _redial_failed(self, handshake: Handshake, kind: str, detail: str) -> None:
        if handshake is not self._dialing or self.state is not RECONNECTING:
            return  # (closed meanwhile)
        self._dialing = None
        if kind in _FATAL_KINDS or detail == REASON_SELF:
            target = self._redialling()[1]
            self.teardown(f"Gave up reconnecting to {target.display}: {detail.rstrip('.')}.")
            return
        self._retry(detail)

    def _retry(self, detail: str) -> None:
        loop, _, _, backoff = self._redialling()
        delay = backoff.next_delay()
        now = time.monotonic()
        if backoff.give_up(now, delay):  # (the next attempt would come too late: end when the time is up)
            self._redial_timer = loop.call_later(self._give_up, max(0.0, backoff.deadline() - now), detail)
            return
        log.debug("yoton: connection %r: re-dial failed (%s); next in %.2f s", self.handle.name, detail, delay)
        self._schedule_attempt(delay)

    def _give_up(self, detail: str) -> None:
        self._redial_timer = None
        if self.state is RECONNECTING:
            _, target, _, backoff = self._redialling()
            self.teardown(
                f"Gave up reconnecting to {target.display} after {time.monotonic() - backoff.lost_at:.1f} s "
                f"({backoff.attempt - 1} attempts; the last: {detail.rstrip('.')}); lost because: "
                f"{self._lost_reason.rstrip('.')}."
            )

    def _stop_redialling(self) -> None:
        self._lookup = None
        timer, self._redial_timer = self._redial_timer, None
        if timer is not None:
            IOLoop.cancel(timer)
        handshake, self._dialing = self._dialing, None
        if handshake is not None:
            handshake.drop("connection closed")

    def resume(self, handshake: Handshake, redialled: bool) -> None:
        """Move to the socket of a new handshake with the same peer context (or,
        re-dialled, with whoever is at the address now): the send queue, read
        holds and figures stay; what the old socket held is dropped."""
        lost = self._drop_socket()
        if lost:
            log.info(
                "yoton: connection %r: %d bytes taken for writing to the old stream were lost with it",
                self.handle.name,
                lost,
            )
        self._take_socket(handshake)
        if self.state is RECONNECTING:
            self.set_state(CONNECTED)
        self.reconnects += 1
        log.info("yoton: connection %r connected again (to %016x)", self.handle.name, self.peer_id)
        self.owner.link_resumed(self, redialled)
        self.start_io()
        self.handle.reconnected.emit(self.handle)
