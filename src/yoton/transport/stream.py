"""The stream transport: links over TCP sockets, plain or inside TLS.

* :func:`open_bind` listens on an address; a :class:`Listener` accepts
  clients and runs a :class:`Handshake` for each (non-blocking, on the loop
  side); the first one that succeeds is adopted by the bind's link, the
  others are refused with a reason while the bind keeps waiting.
* :func:`open_connect` dials an address and runs the same :class:`Handshake`
  driver on the loop side, waiting for it in the caller's thread (retrying
  while the peer is not listening yet, until the timeout).
* :class:`StreamLink` then moves bytes: it reads into the
  :class:`~yoton.wire.protocol.Protocol` (sans-I/O) and delivers the
  packages it cuts out, and writes the send queue with as few system calls
  as it can (see :meth:`StreamLink._write_locked`).

All socket work after the handshake happens on the loop side, except one
shortcut: a thread that queues packages on an idle connection writes them
itself (:meth:`StreamLink._write_direct`), at most once per
:data:`DIRECT_GAP` seconds, when nothing else is being written.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
import threading
import time
from itertools import chain

from ..errors import AuthenticationError, BindError, ConnectError, ConnectHandshakeError, TLSError
from ..wire.frames import CLOSE_BYTES, HEARTBEAT_BYTES
from ..wire.naming import parse_address
from ..wire.protocol import CONNECTION_CLOSED, HANDSHAKE, HANDSHAKE_DONE, Protocol
from .link import CLOSE_FLUSH_TIME, CLOSED, CLOSING, CONNECTED, HEARTBEAT_INTERVAL, WAITING, Link
from .tls import CHUNK, TlsPipe, describe, looks_like_tls

log = logging.getLogger("yoton")

__all__ = [
    "StreamLink",
    "Listener",
    "Handshake",
    "open_bind",
    "open_connect",
    "split_address",
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
_TLS_REQUIRED = b"ERROR: TLS required.\r\n"
#: connect() errors that mean "not listening yet" (or going away): try again.
_RETRY_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}


def _consume(bufs: list, sent: int) -> None:
    """Drop the first ``sent`` bytes from a list of buffers (after a partial send)."""
    i, count = 0, len(bufs)
    while i < count and sent >= len(bufs[i]):
        sent -= len(bufs[i])
        i += 1
    del bufs[:i]
    if sent:
        bufs[0] = memoryview(bufs[0])[sent:]


def split_address(address, ssl_context) -> tuple:
    """Parse a ``tcp://`` or ``tls://`` address and check it against ``ssl_context``:
    ``(protocol, host, port)``."""
    proto, host, port = parse_address(address)
    if proto not in ("tcp", "tls"):
        raise ValueError(f"unsupported protocol {proto!r} in address {address!r} (use tcp:// or tls://)")
    if ssl_context is not None:
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


def open_bind(owner, handle, address: str, max_tries: int = 1, ssl_context=None) -> StreamLink:
    """Listen on ``address`` for one peer; return the WAITING link (caller's thread).

    With ``max_tries`` > 1, ports after the first are tried (``port +
    int(sqrt(i + 1))`` for try i) when it is taken. Raises
    :class:`~yoton.errors.BindError` when none is free.
    """
    proto, host, port = split_address(address, ssl_context)
    if proto == "tls" and ssl_context is None:
        raise ValueError(f"binding to {address!r} needs an ssl_context with a certificate")
    max_tries = int(max_tries)
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    error = None
    for i in range(max_tries):
        if port >= 2**16:
            break
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
            break
        except OSError as exc:
            sock.close()
            error = exc
            port += int(math.sqrt(i + 1))
    else:
        raise BindError(f"could not bind to {host} on any of {max_tries} port(s) tried: {error}")
    if port >= 2**16:
        raise BindError(f"could not bind to {host}: ran out of ports ({error})")
    sock.setblocking(False)
    link = StreamLink(owner, handle)
    link.local_address = sock.getsockname()[:2]
    link.set_state(WAITING)
    link.listener = Listener(link, sock, ssl_context)
    loop = owner.io_loop()
    link.loop = loop
    owner.link_attached(link)
    loop.call_soon(link.listener.start, loop)
    return link


def open_connect(owner, handle, address: str, timeout: float = 1.0, ssl_context=None) -> StreamLink:
    """Connect to a bind at ``address``; return the CONNECTED link (caller's thread).

    The TCP connect and the handshake run on the loop side (the same
    :class:`Handshake` a bind runs); this thread waits for them, trying
    again while the peer is not listening, until ``timeout`` seconds have
    passed. Raises :class:`~yoton.errors.ConnectError` (nothing answered in
    time), :class:`~yoton.errors.ConnectHandshakeError` (a peer answered but
    refused us; :class:`~yoton.errors.AuthenticationError` when the auth
    proofs failed) or :class:`~yoton.errors.TLSError`.
    """
    proto, host, port = split_address(address, ssl_context)
    if proto == "tls" and ssl_context is None:
        ssl_context = ssl.create_default_context()
    timeout = float(timeout)
    deadline = time.monotonic() + timeout
    loop = owner.io_loop()
    config = owner.config
    problem = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectError(f"Could not connect to {host}:{port} within {timeout:g} s ({problem}).")
        try:
            infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
            family, kind, proto_, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto_)
        except OSError as exc:
            raise ConnectError(f"Could not connect to {host}:{port}: {exc}") from exc
        sock.setblocking(False)
        try:
            tls = TlsPipe(ssl_context, False, _hostname(address)) if ssl_context else None
        except ssl.SSLError as exc:
            sock.close()
            raise TLSError(f"Could not connect to {host}:{port}: {describe(exc)}.") from exc
        protocol = Protocol("connect", config.local_id, config.pid, config.max_package_size, auth_key=config.auth_key)
        outcome = _Outcome()
        handshake = Handshake(loop, sock, protocol, tls, deadline, outcome.done, outcome.failed, connect_to=sockaddr)
        loop.call_soon(handshake.start)
        outcome.wait(deadline)
        if outcome.result is None:  # (past the deadline, still in progress)
            loop.call_soon(handshake.drop, "connect timed out")
            raise ConnectError(f"Could not connect to {host}:{port}: handshake timed out.")
        kind, detail = outcome.result
        if kind == "ok":
            break
        if kind == "retry":  # not listening yet, or went away: again, shortly
            problem = detail
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            continue
        if kind == "tls":
            raise TLSError(f"Could not connect to {host}:{port}: TLS handshake failed ({detail}).")
        if kind == "auth":
            raise AuthenticationError(f"Could not connect: {detail}.")
        if kind == "timeout":
            raise ConnectError(f"Could not connect to {host}:{port}: handshake timed out.")
        raise ConnectHandshakeError(f"Could not connect: {detail}")
    link = StreamLink(owner, handle)
    link.adopt(handshake)
    link.loop = loop
    owner.link_attached(link)
    owner.link_established(link)  # (before connect() returns: what is sent next goes to it)
    loop.call_soon(link.start_io)
    return link


class _Outcome:
    """How a connect's handshake ended, told by the loop side to the waiting caller."""

    def __init__(self):
        self.event = threading.Event()
        self.result = None  # ("ok", None) or (kind, detail)

    def done(self, handshake) -> None:
        self.result = ("ok", None)
        self.event.set()

    def failed(self, handshake, kind: str, detail: str) -> None:
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
    before it said anything: the peer is not there yet), "tls", "auth",
    "timeout" or "refused" (it answered, but not as a yoton peer that takes
    us). ``connect_to``: dial that address first (connect side).
    """

    def __init__(
        self,
        loop,
        sock: socket.socket,
        protocol: Protocol,
        tls: TlsPipe | None,
        deadline: float,
        done,
        failed,
        connect_to=None,
        peer=None,
    ):
        self.loop = loop
        self.sock = sock
        self.protocol = protocol
        self.tls = tls
        self.deadline = deadline
        self._done, self._failed = done, failed
        self._connect_to = connect_to
        self.peer = peer  # (host, port) of the other end
        self.server = protocol.side == "bind"
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
                self._fail("retry" if exc.errno in _RETRY_ERRNOS else "refused", str(exc))
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
            self._fail("retry" if error in _RETRY_ERRNOS else "refused", os.strerror(error))
            return
        self.loop.set_interest(self.sock, self, True, False)
        try:
            self.peer = self.sock.getpeername()[:2]
        except OSError as exc:
            self._fail("retry", str(exc))
            return
        tls = self.tls
        if tls is not None:
            try:
                tls.do_handshake()
            except ssl.SSLError as exc:
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
                if self.server and self._first and not looks_like_tls(data):
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
                except ssl.SSLError as exc:
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


class Listener:
    """The listening socket of a waiting bind and its pending handshakes."""

    def __init__(self, link: StreamLink, sock: socket.socket, ssl_context=None):
        self.link = link
        self.sock = sock
        self.ssl_context = ssl_context
        self.pending: dict = {}  # socket -> Handshake
        self.loop = None

    def start(self, loop) -> None:
        """Watch the socket (loop side)."""
        if self.link.state is not WAITING:
            self.sock.close()
            return
        self.loop = loop
        loop.register(self.sock, self)

    def _on_readable(self) -> None:
        link = self.link
        config = link.config
        while True:
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("yoton: accept failed on port %d: %s", link.local_address[1], exc)
                return
            if len(self.pending) >= MAX_PENDING_HANDSHAKES:
                oldest = next(iter(self.pending.values()))
                oldest.drop("too many pending handshakes")
            sock.setblocking(False)
            protocol = Protocol("bind", config.local_id, config.pid, config.max_package_size, auth_key=config.auth_key)
            tls = TlsPipe(self.ssl_context, True) if self.ssl_context is not None else None
            handshake = Handshake(
                self.loop,
                sock,
                protocol,
                tls,
                time.monotonic() + HANDSHAKE_DEADLINE,
                self._accept,
                self._refuse,
                peer=addr[:2],
            )
            self.pending[sock] = handshake
            handshake.start()

    def _accept(self, handshake: Handshake) -> None:
        del self.pending[handshake.sock]
        link = self.link
        try:
            # Asked once, here: a reset arriving later must not stop adopt()
            # half-way (that left the bind WAITING with no listener).
            handshake.peer = handshake.sock.getpeername()[:2]
        except OSError as exc:  # reset right after its hello: keep waiting
            handshake.sock.close()
            self._refuse(handshake, "retry", f"connection lost during handshake: {exc}")
            return
        self.close()
        link.listener = None
        link.adopt(handshake)
        link.owner.link_established(link)
        link.start_io()

    def _refuse(self, handshake: Handshake, kind: str, detail: str) -> None:
        self.pending.pop(handshake.sock, None)
        if kind == "timeout":
            detail = f"no handshake within {HANDSHAKE_DEADLINE:g} s"
        log.info("yoton: refused client %s on port %d: %s", handshake.peer, self.link.local_address[1], detail)

    def close(self) -> None:
        """Stop listening; drop the pending handshakes (loop side, or before it started)."""
        for handshake in list(self.pending.values()):
            handshake.drop("bind closed")
        if self.loop is not None:
            self.loop.unregister(self.sock)
        self.sock.close()


# -- the link ---------------------------------------------------------------------------------


class StreamLink(Link):
    """A :class:`~yoton.transport.link.Link` over a TCP socket (plain or TLS)."""

    def __init__(self, owner, handle):
        super().__init__(owner, handle)
        self.sock: socket.socket | None = None
        self.protocol: Protocol | None = None
        self.listener: Listener | None = None
        self.tls: TlsPipe | None = None
        self._wbufs: list = []
        self._write_scheduled = False
        self._want_write = False
        self._close_deadline = 0.0
        self._close_sent = False  # CLOSING: the close signal is in _wbufs
        self._write_shut = False
        # One writer at a time: the loop side or a direct send. Reentrant: a
        # writer that finds the socket broken tears the link down, and
        # teardown takes it to empty the buffers.
        self._wlock = threading.RLock()
        self._direct_after = 0.0
        self._backlog = b""  # TLS: ciphertext the kernel has not taken yet
        self._send = None

    # -- setting up --------------------------------------------------------------------

    def adopt(self, handshake: Handshake) -> None:
        """Take over a socket whose handshake succeeded (before its I/O starts)."""
        sock = handshake.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.protocol, self.tls = sock, handshake.protocol, handshake.tls
        self._send = self._send_plain if self.tls is None else self._send_tls
        self.local_address = sock.getsockname()[:2]
        self.peer_address = handshake.peer or sock.getpeername()[:2]
        self.peer_id, self.peer_pid = self.protocol.peer_id, self.protocol.peer_pid
        self.last_send = self.last_recv = time.monotonic()
        self.set_state(CONNECTED)

    def start_io(self) -> None:
        """Serve the socket once CONNECTED and established with the owner (loop
        side): packages that came with the handshake are delivered, what is
        queued is written."""
        loop, sock, protocol = self.loop, self.sock, self.protocol
        assert loop is not None and sock is not None and protocol is not None, "start_io before adopt"
        loop.register(sock, self, write=False)
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
        except ssl.SSLError as exc:
            self.teardown(f"TLS error: {describe(exc)}.")
            return
        except OSError as exc:
            self.teardown(f"Connection broken: {exc}.")
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
        data = sock.recv(CHUNK)
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
            self.teardown(self.close_reason if self.state is CLOSING else protocol.close_reason)

    def set_reading(self, flag: bool) -> None:
        self._update_interest()

    def _update_interest(self) -> None:
        if self.sock is not None and self.loop is not None:
            self.loop.set_interest(self.sock, self, not self.read_holds, self._want_write)

    # -- writing -----------------------------------------------------------------------

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
        return sum(map(len, list(self._wbufs))) + len(self._backlog)

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

    def _into_wbufs(self, items: list) -> None:
        self._wbufs.extend(chain.from_iterable(items))

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
            try:
                sent = self._send(bufs)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.teardown(f"Connection broken: {exc}.")
                return
            if sent:
                self.progress(sent)
            if sent == sum(map(len, bufs)):
                bufs.clear()
            else:
                _consume(bufs, sent)
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
        self._take()
        try:
            sent = self._send_plain(bufs)
        except OSError:  # would block, or broken: the loop side finds out
            return False
        self.last_send = now
        self.bytes_out += sent
        if sent == sum(map(len, bufs)) and not sendq:
            bufs.clear()
            self.owner.flushed()
            return True
        _consume(bufs, sent)
        return False

    def _send_plain(self, bufs: list) -> int:
        """``sendmsg`` for plain TCP; many small buffers are joined first.

        The kernel's cost grows with the number of buffers (for 256 packages
        of 100 bytes, a single joined buffer went out twice as fast as 512
        header and body buffers); a copy of up to :data:`_JOIN_LIMIT` bytes
        is cheaper. Large bodies still go straight from their own buffer.
        """
        sock = self.sock
        assert sock is not None
        if len(bufs) > 2 and sum(map(len, bufs)) <= _JOIN_LIMIT:
            return sock.send(b"".join(bufs))
        return sock.sendmsg(bufs)

    def _send_tls(self, bufs: list) -> int:
        """``sendmsg`` for TLS: encrypt up to CHUNK bytes of ``bufs``; return how many were taken."""
        tls, sock = self.tls, self.sock
        assert tls is not None and sock is not None
        taken = 0
        if not self._backlog:
            for buf in bufs:
                tls.write(buf)
                taken += len(buf)
                if taken >= CHUNK:
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
            # Give up only after CLOSE_FLUSH_TIME without progress: a peer that
            # keeps reading gets all that was queued, however long that takes.
            if now >= max(self._close_deadline, self.last_send + CLOSE_FLUSH_TIME):
                self.teardown(self.close_reason)
            return
        if self.state is not CONNECTED:
            return
        if now - self.last_send >= HEARTBEAT_INTERVAL and not self.sendq and not self._wbufs:
            with self._wlock:
                if not self._wbufs:
                    self._wbufs.append(HEARTBEAT_BYTES)
                self._write_locked()
        self.check_silence(now)

    # -- closing -----------------------------------------------------------------------

    def begin_close(self, reason: str) -> None:
        """Queue the close signal and finish once it is written (loop side)."""
        if self.state is WAITING:
            self.teardown(reason)
        elif self.state is CONNECTED:
            self.set_state(CLOSING)
            self.owner.link_closing(self)
            self.close_reason = reason
            self._close_deadline = time.monotonic() + CLOSE_FLUSH_TIME
            self._write_now()  # (queued packages first, then the close signal)

    def teardown(self, reason: str | None) -> None:
        """Close the socket and announce the end (loop side, or before I/O starts)."""
        if self.state is CLOSED:
            return
        loop = self.loop
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.sock is not None:
            if loop is not None:
                loop.unregister(self.sock)
                loop.housekeepers.discard(self)
            self.sock.close()
            self.sock = None
        # (Under the writer's lock: a direct send in another thread may be
        # half-way through these buffers.)
        with self._wlock:
            self._wbufs.clear()
            self._backlog = b""
        self.finish(reason)
