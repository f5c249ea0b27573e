"""Connections between two contexts: the TCP transport.

Life of a connection::

    NEW --bind()--> WAITING --(peer's hello accepted)--> CONNECTED
    NEW --connect()--> CONNECTED           (handshake done in the caller)
    WAITING/CONNECTED --close()--> CLOSING --(close signal flushed, peer's EOF; or 1 s)--> CLOSED
    any --(peer closed / EOF / broken stream / close_on_problem)--> CLOSED

* ``is_alive`` is WAITING or CONNECTED; packages are queued only while alive.
* A WAITING connection keeps what it is given and writes it once a peer is
  accepted; that is how the startup queue reaches the first peer.
* All socket work and every state change after the handshake happens on the
  context's loop side (the I/O thread, or the thread serving the loop while it
  waits for a package: one at a time, see :mod:`.ioloop`). User threads put
  packages (``(header, body)`` pairs) on the send queue (a
  :class:`~yoton.queues.BoundedQueue`) and ask the loop to write, or write an
  idle queue themselves (``_write_direct``).
* The send queue applies backpressure: it is bounded by the context's
  ``max_queue_bytes``, and senders wait for room (:meth:`Context._send`)
  while the peer keeps taking data. Once it is full and the peer has taken
  nothing for ``timeout`` seconds, the connection is *stalled*: its queue
  discards by the context's discard mode (counted, logged once) until the
  peer takes data again. The close signal and heartbeats bypass the queue.
* ``closed(conn, reason)`` is emitted once, when the state becomes CLOSED.
* ``timedout(conn, True)`` when nothing arrived for ``timeout`` seconds,
  ``timedout(conn, False)`` when data arrives again. A side that has sent
  nothing for :data:`HEARTBEAT_INTERVAL` seconds sends a heartbeat.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import ssl
import threading
import time
from itertools import chain, islice, repeat

from ..errors import AuthenticationError, BindError, ConnectError, ConnectHandshakeError, TLSError
from ..events import Signal
from ..queues import BLOCK, BoundedQueue, Policy
from ..wire.frames import CLOSE_BYTES, HEARTBEAT_BYTES
from ..wire.naming import parse_address
from ..wire.protocol import AUTH_FAILED, CONNECTION_CLOSED, HANDSHAKE, HANDSHAKE_DONE, Protocol
from .tls import CHUNK, TlsPipe, describe, looks_like_tls

log = logging.getLogger("yoton")

__all__ = ["Connection", "TcpConnection", "ConnectionCollection", "BindError"]

NEW, WAITING, CONNECTED, CLOSING, CLOSED = "NEW", "WAITING", "CONNECTED", "CLOSING", "CLOSED"

TIMEOUT_MIN = 0.5
HEARTBEAT_INTERVAL = TIMEOUT_MIN / 2
HANDSHAKE_DEADLINE = 3.0  #: seconds a client gets to say hello to a bind
MAX_PENDING_HANDSHAKES = 16
#: Connection requests the kernel queues for a bind (serial connects beyond
#: a short backlog would wait for SYN retransmits, a second or more).
LISTEN_BACKLOG = 128
CLOSE_FLUSH_TIME = 1.0

REASON_COMMAND = "Closed on command."
REASON_PROBLEM = "Unspecified problem"
REASON_CONTEXT = "Closed by the context."

_IOV_MAX = 512
#: A sending thread writes to the socket itself when the queue is idle, at
#: most once per DIRECT_GAP seconds; in between, the I/O thread batches.
#: Sparse messages (requests, replies, ping-pong) skip a thread hand-off;
#: streams keep one ``sendmsg`` for many packages.
DIRECT_GAP = 50e-6
#: Buffers queued for one write are joined into one when they add up to at
#: most this many bytes (see TcpConnection._send_plain).
_JOIN_LIMIT = 128 * 1024
#: A writer takes at most this many bytes of packages from the send queue at
#: a time (at least one package): what it holds is outside the queue's bound.
_TAKE_BYTES = 256 * 1024
_CONNECT_ERRORS = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError, socket.timeout)
_TLS_REQUIRED = b"ERROR: TLS required.\r\n"


def _consume(bufs: list, sent: int) -> None:
    """Drop the first ``sent`` bytes from a list of buffers (after a partial send)."""
    i, count = 0, len(bufs)
    while i < count and sent >= len(bufs[i]):
        sent -= len(bufs[i])
        i += 1
    del bufs[:i]
    if sent:
        bufs[0] = memoryview(bufs[0])[sent:]


def _split_address(address, ssl_context) -> tuple[str, str, int]:
    """Parse a ``tcp://`` or ``tls://`` address and check it against ``ssl_context``."""
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
    return address.partition("://")[2].partition(":")[0].strip() if "://" in address \
        else address.partition(":")[0].strip()


class ConnectionCollection(list):
    """A list of connections that can also be indexed by connection name."""

    def __getitem__(self, key):
        if isinstance(key, str):
            for conn in self:
                if conn.name == key:
                    return conn
            raise KeyError(f"no connection named {key!r}")
        return list.__getitem__(self, key)

    def get(self, name, default=None):
        """Return the connection called ``name``, or ``default``."""
        for conn in self:
            if conn.name == name:
                return conn
        return default


class Connection:
    """One link between this context and another; the user-facing interface.

    Made by :meth:`Context.bind` and :meth:`Context.connect`; use it to read
    addresses and ids, to watch the :attr:`closed` and :attr:`timedout`
    signals, and to :meth:`close` the link. A connection is used once.
    """

    _bound = False  # made by a bind (see port)

    def __init__(self, context, name: str = ""):
        self._context = context
        self._name = str(name)
        self._state = NEW
        self._closed_signal = Signal()
        self._timedout_signal = Signal()
        self._timeout = TIMEOUT_MIN
        self._is_timedout = False
        self._close_reason: str | None = None
        self._done = threading.Event()
        self._id2 = 0
        self._pid2 = 0
        self._host1, self._port1 = "", 0
        self._host2, self._port2 = "", 0

    def __repr__(self):
        return f"<{type(self).__name__} {self._name!r} {self._state} {self._host1}:{self._port1}>"

    # -- signals and properties -------------------------------------------

    @property
    def closed(self) -> Signal:
        """Signal emitted once when the connection closes: ``(connection, reason)``."""
        return self._closed_signal

    @property
    def timedout(self) -> Signal:
        """Signal ``(connection, True)`` after ``timeout`` s of silence, ``(connection, False)`` when data returns."""
        return self._timedout_signal

    @property
    def name(self) -> str:
        """The name given at bind/connect; ``context.connections[name]`` finds it. Settable (a str)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f"a connection name must be a str, not {type(value).__name__}")
        self._name = value

    @property
    def timeout(self) -> float:
        """Seconds without incoming data before ``timedout`` fires (at least 0.5)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        value = float(value)
        if not value >= 0:
            raise ValueError(f"timeout must be a non-negative number, not {value!r}")
        self._timeout = max(TIMEOUT_MIN, value)

    @property
    def is_alive(self) -> bool:
        """True while waiting for a peer or connected (not closing or closed)."""
        return self._state in (WAITING, CONNECTED)

    @property
    def is_connected(self) -> bool:
        """True while connected to another context."""
        return self._state == CONNECTED

    @property
    def is_timedout(self) -> bool:
        """True while nothing has arrived from the peer for ``timeout`` seconds
        (between the ``timedout`` signal's True and False emissions)."""
        return self._is_timedout

    @property
    def is_waiting(self) -> bool:
        """True after ``bind()`` until a peer is accepted."""
        return self._state == WAITING

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed (None while open)."""
        return self._close_reason

    @property
    def hostname1(self) -> str:
        """Host (IP) of this end."""
        return self._host1

    @property
    def port1(self) -> int:
        """Port of this end; after ``bind()`` this is the port peers connect to."""
        return self._port1

    @property
    def port(self) -> int:
        """The port of the address: for a bind, the local port it listens (or listened) on,
        also when ``max_tries`` had to move on from the first; for a connect, the
        port it connected to."""
        return self._port1 if self._bound else self._port2

    @property
    def hostname2(self) -> str:
        """Host (IP) of the other end; '' when not connected."""
        return self._host2

    @property
    def port2(self) -> int:
        """Port of the other end; 0 when not connected."""
        return self._port2

    @property
    def id1(self) -> int:
        """Id of the context at this end."""
        return self._context.id

    @property
    def id2(self) -> int:
        """Id of the context at the other end; 0 when not connected."""
        return self._id2

    @property
    def pid1(self) -> int:
        """Process id at this end."""
        return os.getpid()

    @property
    def pid2(self) -> int:
        """Process id at the other end; 0 when not connected."""
        return self._pid2

    # -- closing and flushing (implemented by the transport) ----------------

    def close(self, reason: str | None = None) -> None:
        """Close the connection, telling the other end; a waiting bind stops waiting.

        Queued packages and the close signal are flushed while the peer takes
        them; a peer that takes nothing for a second is dropped.
        """
        raise NotImplementedError

    def close_on_problem(self, reason: str | None = None) -> None:
        """Drop the connection at once, without telling the other end."""
        raise NotImplementedError

    def flush(self, timeout: float = 3.0) -> None:
        """Wait until all queued packages are written; raise FlushTimeout after ``timeout`` s."""
        raise NotImplementedError


class TcpConnection(Connection):
    """A :class:`Connection` over TCP, served by the context's I/O thread."""

    def __init__(self, context, name: str = ""):
        super().__init__(context, name)
        self._sock: socket.socket | None = None
        self._protocol: Protocol | None = None
        self._listener: _Listener | None = None
        self._sendq = BoundedQueue(max_bytes=context.max_queue_bytes, policy=BLOCK,
                                   name=f"send queue of connection {self._name!r}",
                                   log_level=logging.DEBUG,  # (the stall is logged here instead)
                                   on_room=self._on_room)
        self._stalled = False  # full, and the peer took nothing for `timeout` s
        self._sent_total = 0  # bytes written (writers)
        self._stall_mark = 0  # _sent_total when the stall began
        self._close_sent = False  # CLOSING: the close signal is in _wbufs
        self._wbufs: list = []
        self._write_scheduled = False
        self._want_write = False
        # Why reading is paused (loop side): a relay whose downstream queue is
        # full, a sync-mode channel whose queue is full. Empty: reading.
        self._read_holds: set = set()
        self._held: set = set()  # upstream connections paused until our send queue has room
        self._last_send = self._last_recv = time.monotonic()
        self._is_timedout = False
        self._close_deadline = 0.0
        self._write_shut = False
        self._tls: TlsPipe | None = None
        # One writer at a time: the loop side or a direct send. Reentrant: a
        # writer that finds the socket broken tears the connection down, and
        # teardown takes it to empty the buffers.
        self._wlock = threading.RLock()
        self._direct_after = 0.0
        self._backlog = b""  # TLS: ciphertext the kernel has not taken yet
        self._send = None

    # -- setting up (caller's thread) ---------------------------------------

    def _bind(self, address: str, max_tries: int = 1, ssl_context=None) -> None:
        proto, host, port = _split_address(address, ssl_context)
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
        self._host1, self._port1 = sock.getsockname()[:2]
        self._bound = True
        self._state = WAITING
        self._listener = _Listener(self, sock, ssl_context)
        loop = self._context._attach_connection(self)
        loop.call_soon(self._listener._start, loop)

    def _connect(self, address: str, timeout: float = 1.0, ssl_context=None) -> None:
        proto, host, port = _split_address(address, ssl_context)
        if proto == "tls" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        timeout = float(timeout)
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectError(f"Could not connect to {host}:{port} within {timeout} s ({problem}).")
            try:
                sock = socket.create_connection((host, port), timeout=remaining)
            except _CONNECT_ERRORS as exc:
                problem = str(exc) or type(exc).__name__
                # The peer may not be listening yet: try again shortly.
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
                continue
            except OSError as exc:
                raise ConnectError(f"Could not connect to {host}:{port}: {exc}") from exc
            try:
                tls = TlsPipe(ssl_context, False, _hostname(address)) if ssl_context else None
                protocol = self._handshake(sock, deadline, tls)
            except ssl.SSLError as exc:
                try:  # tell the server why (a TLS alert), if TLS has one to send
                    sock.settimeout(0.5)
                    sock.sendall(tls.take())
                except OSError:
                    pass
                sock.close()
                raise TLSError(f"Could not connect to {host}:{port}: TLS handshake failed ({describe(exc)}).") from exc
            except BaseException:
                sock.close()
                raise
            if protocol is None:  # peer went away during the handshake; retry
                sock.close()
                problem = "handshake interrupted"
                continue
            break
        self._adopt(sock, protocol, tls=tls)
        self._context._attach_connection(self)

    def _handshake(self, sock: socket.socket, deadline: float, tls: TlsPipe | None) -> Protocol | None:
        """The TLS (if any) and yoton handshakes, blocking, in the caller's thread.

        Returns None if the peer went away (the caller retries); raises when
        it answered but refused us (or TLS failed: ``ssl.SSLError``).
        """
        ctx = self._context
        protocol = Protocol("connect", ctx.id, os.getpid(), ctx._max_package_size, auth_key=ctx._auth_key)

        def send(data: bytes) -> None:
            if tls is not None:
                tls.write(data)
                data = tls.take()
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            sock.sendall(data)

        def recv() -> bytes:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            return sock.recv(65536)

        try:
            if tls is not None:
                while not tls.do_handshake():
                    sock.settimeout(max(0.01, deadline - time.monotonic()))
                    sock.sendall(tls.take())
                    data = recv()
                    if not data:
                        raise ssl.SSLError("the other end closed the connection (is it a tls:// bind?)")
                    tls.feed(data)
                sock.sendall(tls.take())
            send(protocol.data_to_send())
            while protocol.state == HANDSHAKE:
                data = recv()
                if tls is not None and data:
                    tls.feed(data)
                    data = tls.read() or (b"" if tls.eof else None)
                if data is None:  # (a partial TLS record)
                    continue
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                out = protocol.data_to_send()
                if out:
                    try:
                        send(out)
                    except OSError:
                        if protocol.state == HANDSHAKE:
                            raise
        except socket.timeout:
            raise ConnectError("Could not connect: handshake timed out.") from None
        except ssl.SSLError:
            raise
        except OSError:
            return None
        if not protocol.handshake_done:  # (done but CLOSED: the I/O thread delivers, then closes)
            reason = protocol.close_reason
            if protocol.auth_failed:
                raise AuthenticationError(f"Could not connect: {reason}.")
            raise ConnectHandshakeError(f"Could not connect: {reason}")
        return protocol

    def _adopt(self, sock: socket.socket, protocol: Protocol, peer: tuple | None = None,
               tls: TlsPipe | None = None) -> None:
        """Take over a socket whose handshake succeeded (any thread, before the I/O thread sees it)."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._protocol, self._tls = sock, protocol, tls
        self._send = self._send_plain if tls is None else self._send_tls
        self._host1, self._port1 = sock.getsockname()[:2]
        self._host2, self._port2 = (peer or sock.getpeername())[:2]
        self._id2, self._pid2 = protocol.peer_id, protocol.peer_pid
        self._last_send = self._last_recv = time.monotonic()
        self._state = CONNECTED

    # -- I/O thread ---------------------------------------------------------

    def _start_io(self, loop) -> None:
        """Register with the I/O thread once CONNECTED (runs in the I/O thread)."""
        self._loop = loop
        loop.register(self._sock, self)
        loop.housekeepers.add(self)
        self._handle_events(self._protocol.events_received())
        self._write_now()

    def _on_readable(self) -> None:
        protocol = self._protocol
        try:
            if self._tls is None:
                nbytes = self._sock.recv_into(protocol.get_buffer())
            else:
                nbytes = self._read_tls()
        except (BlockingIOError, InterruptedError):
            return
        except ssl.SSLError as exc:
            self._teardown(f"TLS error: {describe(exc)}.")
            return
        except OSError as exc:
            self._teardown(f"Connection broken: {exc}.")
            return
        if nbytes:
            if self._tls is None:
                protocol.buffer_updated(nbytes)
            self._last_recv = time.monotonic()
            if self._is_timedout:
                self._is_timedout = False
                self._timedout_signal.emit(self, False)
        else:
            protocol.receive_eof()
        events = protocol.events_received()
        if events:
            self._handle_events(events)

    def _read_tls(self) -> int:
        """Read ciphertext, feed the plaintext to the protocol; return the bytes read."""
        data = self._sock.recv(CHUNK)
        if data:
            tls = self._tls
            tls.feed(data)
            plain = tls.read()
            if plain:
                self._protocol.receive_data(plain)
            if tls.eof:
                self._protocol.receive_eof()
            if tls.pending_out:  # TLS itself wants to answer (e.g. a key update)
                self._backlog = memoryview(bytes(self._backlog) + tls.take())
                if not self._write_scheduled:
                    self._write_scheduled = True
                    self._loop.schedule_write(self)
        return len(data)

    def _send_plain(self, bufs: list) -> int:
        """``sendmsg`` for plain TCP; many small buffers are joined first.

        The kernel's cost grows with the number of buffers (for 256 packages
        of 100 bytes, a single joined buffer went out twice as fast as 512
        header and body buffers); a copy of up to :data:`_JOIN_LIMIT` bytes
        is cheaper. Large bodies still go straight from their own buffer.
        """
        if len(bufs) > 2 and sum(map(len, bufs)) <= _JOIN_LIMIT:
            return self._sock.send(b"".join(bufs))
        return self._sock.sendmsg(bufs)

    def _send_tls(self, bufs: list) -> int:
        """``sendmsg`` for TLS: encrypt up to CHUNK bytes of ``bufs``; return how many were taken."""
        tls = self._tls
        taken = 0
        if not self._backlog:
            for buf in bufs:
                tls.write(buf)
                taken += len(buf)
                if taken >= CHUNK:
                    break
            self._backlog = memoryview(tls.take())
        try:
            sent = self._sock.send(self._backlog)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self._backlog = self._backlog[sent:] if sent < len(self._backlog) else b""
        return taken

    def _handle_events(self, events: list) -> None:
        # Packages, maybe after HANDSHAKE_DONE and before CONNECTION_CLOSED
        # (the protocol emits nothing after that).
        closed = events[-1] is CONNECTION_CLOSED
        start, stop = int(events[0] is HANDSHAKE_DONE), len(events) - closed
        if stop > start:
            self._context._route(self, events[start:stop] if start or closed else events)
        if closed:
            closing = self._state == CLOSING
            self._teardown(self._close_reason if closing else self._protocol.close_reason)

    def _on_writable(self) -> None:
        self._write_now()

    def _update_interest(self) -> None:
        if self._sock is not None:
            self._loop.set_interest(self._sock, self, not self._read_holds, self._want_write)

    def _hold_reading(self, key) -> None:
        """Stop reading from the peer until :meth:`_release_reading` with the
        same ``key`` (loop side). TCP then slows the peer down."""
        if not self._read_holds:
            self._read_holds.add(key)
            self._update_interest()
        else:
            self._read_holds.add(key)

    def _release_reading(self, key) -> None:
        """Drop one reason to hold reading; read again when none is left (loop side)."""
        if key in self._read_holds:
            self._read_holds.discard(key)
            if not self._read_holds:
                self._last_recv = time.monotonic()  # (its silence meanwhile was ours)
                self._update_interest()

    def _hold_upstream(self, upstream) -> None:
        """A relay: packages forwarded from ``upstream`` filled our send queue;
        hold its reading until we have room (loop side)."""
        if upstream not in self._held:
            self._held.add(upstream)
            upstream._hold_reading(("relay", self))

    def _release_upstream(self) -> None:
        held, self._held = self._held, set()
        for upstream in held:
            upstream._release_reading(("relay", self))

    def _write_now(self) -> None:
        with self._wlock:
            self._write_locked()

    def _write_locked(self) -> None:
        self._write_scheduled = False
        if self._sock is None or self._state not in (CONNECTED, CLOSING):
            return
        bufs, sendq = self._wbufs, self._sendq
        while True:
            # While the kernel is full (_want_write), leftovers go first: topping
            # them up at every send would let _wbufs grow past max_queue_bytes.
            if sendq and len(bufs) < _IOV_MAX and not (bufs and self._want_write):
                self._take()
            if not bufs and not self._backlog:
                if self._state != CLOSING or self._close_sent:
                    break
                self._close_sent = True  # all queued packages went: the close signal last
                bufs.append(CLOSE_BYTES)
            try:
                sent = self._send(bufs)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._teardown(f"Connection broken: {exc}.")
                return
            if sent:
                self._progress(sent)
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
        self._context._notify_flushed()
        if self._state == CLOSING and not self._write_shut:
            # All sent, close signal last. Half-close and wait for the peer's
            # EOF: closing now, with unread bytes in our receive buffer, would
            # make the kernel send a reset that can destroy data in flight.
            self._write_shut = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._teardown(self._close_reason)

    def _housekeeping(self, now: float) -> None:
        if self._state == CLOSING:
            # Give up only after CLOSE_FLUSH_TIME without progress: a peer that
            # keeps reading gets all that was queued, however long that takes.
            if now >= max(self._close_deadline, self._last_send + CLOSE_FLUSH_TIME):
                self._teardown(self._close_reason)
            return
        if self._state != CONNECTED:
            return
        if now - self._last_send >= HEARTBEAT_INTERVAL and not self._sendq and not self._wbufs:
            with self._wlock:
                if not self._wbufs:
                    self._wbufs.append(HEARTBEAT_BYTES)
                self._write_locked()
        if not self._stalled and self._sendq.stalled(self._timeout, now):
            self._stall()
        if not self._is_timedout and not self._read_holds and now - self._last_recv > self._timeout:
            self._is_timedout = True
            self._timedout_signal.emit(self, True)

    def _begin_close(self, reason: str) -> None:
        """Queue the close signal and finish once it is written (I/O thread)."""
        if self._state == WAITING:
            self._teardown(reason)
        elif self._state == CONNECTED:
            self._state = CLOSING
            self._context._update_live()
            self._close_reason = reason
            self._close_deadline = time.monotonic() + CLOSE_FLUSH_TIME
            self._write_now()  # (queued packages first, then the close signal)

    def _teardown(self, reason: str | None) -> None:
        """Close the socket and announce the end (I/O thread, or before I/O starts)."""
        if self._state == CLOSED:
            return
        self._state = CLOSED
        self._close_reason = reason = reason or REASON_PROBLEM
        loop = getattr(self, "_loop", None)
        if self._listener is not None:
            self._listener._close()
            self._listener = None
        if self._sock is not None:
            if loop is not None:
                loop.unregister(self._sock)
                loop.housekeepers.discard(self)
            self._sock.close()
            self._sock = None
        # (Under the writer's locks: a direct send in another thread may be
        # half-way through these buffers.)
        self._release_upstream()
        with self._wlock:
            self._sendq.discard_all()  # (never written: counted as discarded)
            self._wbufs.clear()
            self._backlog = b""
        log.debug("yoton: connection %r closed: %s", self._name, reason)
        self._context._detach_connection(self)
        self._context._notify_flushed()
        self._closed_signal.emit(self, reason)
        self._done.set()

    # -- public (any thread) ------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Close the connection, telling the other end; a waiting bind stops waiting.

        Queued packages and the close signal are flushed while the peer takes
        them; a peer that takes nothing for a second is dropped.
        """
        self._request(self._begin_close, reason or REASON_COMMAND, wait=True)

    def close_on_problem(self, reason: str | None = None) -> None:
        """Drop the connection at once, without telling the other end."""
        self._request(self._teardown, reason or REASON_PROBLEM, wait=True)

    def _request(self, action, reason: str, wait: bool) -> None:
        if self._state in (NEW, CLOSED):
            if self._state == NEW:
                self._teardown(reason)
            return
        loop = getattr(self, "_loop", None)
        if loop is None or not loop.running:
            self._teardown(reason)
            return
        loop.call_soon(action, reason)
        if wait and not loop.in_io_thread():
            self._wait_done()

    def _wait_done(self) -> None:
        """Wait until CLOSED (not from the I/O thread): as long as bytes still go
        out, and a second longer than the I/O thread would wait without progress."""
        mark, since = self._last_send, time.monotonic()
        while not self._done.wait(0.05):
            if self._last_send != mark:
                mark, since = self._last_send, time.monotonic()
            elif time.monotonic() - since > CLOSE_FLUSH_TIME + 1.0:
                return

    def flush(self, timeout: float = 3.0) -> None:
        """Wait until all queued packages are written; raise FlushTimeout after ``timeout`` s."""
        self._context._wait_flushed([self], timeout)

    def _unflushed(self) -> bool:
        return bool(self._sendq or self._wbufs or self._backlog) and self._state in (WAITING, CONNECTED, CLOSING)

    def _enqueue_many(self, items, sizes, total: int) -> int:
        """Queue packages (``(header, body)`` pairs; their sizes and total) for
        writing, in order (any thread). Never waits: a sender waits for room
        first (see :meth:`has_room`). Returns how many packages the queue
        discarded (only while stalled)."""
        dropped = self._sendq.put_many(items, sizes, total)
        if self._write_scheduled or self._state != CONNECTED:
            return dropped
        now = time.monotonic()
        if now >= self._direct_after and self._tls is None and self._wlock.acquire(False):
            self._direct_after = now + DIRECT_GAP
            try:
                if self._write_direct(now):
                    return dropped
            finally:
                self._wlock.release()
        self._write_scheduled = True
        self._loop.schedule_write(self)
        return dropped

    def _has_room(self, size: int) -> bool:
        """Whether a sender may queue ``size`` more bytes without waiting: the
        send queue has room, or the connection is stalled (its queue discards)."""
        return self._stalled or self._sendq.has_room(size)

    def _take(self) -> None:
        """Move queued packages into the write buffers, up to about _IOV_MAX
        buffers (a writer, holding _wlock)."""
        bufs = self._wbufs
        # Into the buffers before they leave the queue (under its lock):
        # flush() must never see both empty while packages are on their way.
        self._sendq.take(max(1, (_IOV_MAX - len(bufs)) // 2), lambda items: bufs.extend(chain.from_iterable(items)),
                         _TAKE_BYTES)

    def _progress(self, sent: int) -> None:
        """``sent`` bytes left for the network (a writer)."""
        self._last_send = time.monotonic()
        self._sent_total += sent
        self._sendq.note_progress()
        # Stalled, the peer takes data again once it has taken a quarter of the
        # queue's bound (a stopped process's kernel may still take a trickle).
        if self._stalled and self._sent_total - self._stall_mark >= self._sendq.max_bytes // 4:
            self._unstall()

    def _stall(self) -> None:
        """The send queue is full and the peer took nothing for ``timeout`` s
        (loop side): discard by the discard mode until it takes data again."""
        self._stalled = True
        self._stall_mark = self._sent_total
        self._sendq.policy = Policy.for_discard_mode(self._context.queue_params[1])
        log.warning("yoton: connection %r: the peer has taken nothing for %.1f s and the send "
                    "queue is full (%d bytes): discarding the %s packages until it takes data again",
                    self._name, self._timeout, self._sendq.bytes,
                    "oldest" if self._sendq.policy is Policy.DROP_OLD else "newest")
        self._release_upstream()  # (a relay does not hold its other links for a dead peer)
        self._context._room_changed()

    def _unstall(self) -> None:
        self._stalled = False
        self._sendq.policy = BLOCK
        log.info("yoton: connection %r: the peer takes data again (%d packages discarded so far)",
                 self._name, self._sendq.discarded)

    def _on_room(self) -> None:
        """The send queue drained (any writer thread): waiting senders may look again."""
        if self._held:
            loop = self._loop
            if loop.in_io_thread():
                self._release_upstream()
            else:
                loop.call_soon(self._release_upstream)
        self._context._room_changed()

    def _write_direct(self, now: float) -> bool:
        """Write the idle queue from the sending thread; True if all of it went.

        Anything else (a partial write, a full kernel buffer, an error) is
        left for the I/O thread, which also owns every state change.
        """
        bufs, sendq = self._wbufs, self._sendq
        if bufs or self._want_write or self._state != CONNECTED or self._loop.in_io_thread():
            return False
        self._take()
        try:
            sent = self._send_plain(bufs)
        except OSError:  # would block, or broken: the I/O thread finds out
            return False
        self._last_send = now
        self._sent_total += sent
        sendq.note_progress()
        if sent == sum(map(len, bufs)) and not sendq:
            bufs.clear()
            self._context._notify_flushed()
            return True
        _consume(bufs, sent)
        return False


class _Listener:
    """The listening socket of a waiting connection and its pending handshakes."""

    def __init__(self, conn: TcpConnection, sock: socket.socket, ssl_context=None):
        self.conn = conn
        self.sock = sock
        self.ssl_context = ssl_context
        self.pending: dict = {}  # socket -> (_Handshake)
        self.loop = None

    def _start(self, loop) -> None:
        if self.conn._state != WAITING:
            self.sock.close()
            return
        self.loop = loop
        self.conn._loop = loop
        loop.register(self.sock, self)
        loop.housekeepers.add(self)

    def _on_readable(self) -> None:
        while True:
            try:
                sock, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("yoton: accept failed on port %d: %s", self.conn._port1, exc)
                return
            if len(self.pending) >= MAX_PENDING_HANDSHAKES:
                oldest = next(iter(self.pending.values()))
                oldest.drop("too many pending handshakes")
            _Handshake(self, sock, addr)

    def _housekeeping(self, now: float) -> None:
        for hs in list(self.pending.values()):
            if now >= hs.deadline:
                if hs.protocol.awaiting_proof:
                    hs.drop("%s (no proof within %.0f s)" % (AUTH_FAILED, HANDSHAKE_DEADLINE))
                else:
                    hs.drop("no handshake within %.0f s" % HANDSHAKE_DEADLINE)

    def _accept(self, hs: "_Handshake") -> None:
        try:
            # Asked once, here: a reset arriving later must not stop _adopt
            # half-way (that left the bind WAITING with no listener).
            peer = hs.sock.getpeername()
        except OSError as exc:  # reset right after its hello: keep waiting
            hs.drop(f"connection lost during handshake: {exc}")
            return
        del self.pending[hs.sock]
        self.loop.unregister(hs.sock)
        conn = self.conn
        self._close()
        conn._listener = None
        conn._adopt(hs.sock, hs.protocol, peer, hs.tls)
        conn._context._connection_established(conn)
        conn._start_io(self.loop)

    def _close(self) -> None:
        for hs in list(self.pending.values()):
            hs.drop("bind closed")
        if self.loop is not None:
            self.loop.unregister(self.sock)
            self.loop.housekeepers.discard(self)
        self.sock.close()


class _Handshake:
    """A client accepted by a bind that has not yet proven it is a yoton peer."""

    def __init__(self, listener: _Listener, sock: socket.socket, addr):
        ctx = listener.conn._context
        self.listener = listener
        self.sock = sock
        self.addr = addr
        self.deadline = time.monotonic() + HANDSHAKE_DEADLINE
        self.protocol = Protocol("bind", ctx.id, os.getpid(), ctx._max_package_size, auth_key=ctx._auth_key)
        ssl_context = listener.ssl_context
        self.tls = TlsPipe(ssl_context, True) if ssl_context is not None else None
        self._first = True
        sock.setblocking(False)
        listener.pending[sock] = self
        listener.loop.register(sock, self)

    def _on_readable(self) -> None:
        protocol, tls = self.protocol, self.tls
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(f"connection error during handshake: {exc}")
            return
        if tls is not None and not data and not tls.handshake_done:
            self.drop("TLS handshake failed: the other end closed the connection")
            return
        if tls is not None and data:
            if self._first and not looks_like_tls(data):
                self._send(_TLS_REQUIRED)
                self.drop("not a TLS client (plaintext on a tls:// bind)")
                return
            self._first = False
            try:
                tls.feed(data)
                if not tls.do_handshake():
                    self._send(tls.take())
                    return
                data = tls.read() or (b"" if tls.eof else None)
            except ssl.SSLError as exc:
                self._send(tls.take())  # (the alert, if any)
                self.drop(f"TLS handshake failed: {describe(exc)}")
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
            # Accepted even if bytes after the hello already ended the stream
            # (packages + close signal, or a bad header, in the same read):
            # the connection delivers those packages and then closes.
            self.listener._accept(self)
        elif protocol.state != HANDSHAKE:
            self.drop(protocol.close_reason)

    def _send(self, data: bytes) -> None:
        # Handshake answers are small and the socket buffer is empty: they
        # fit. A client that does not read fails its handshake anyway.
        if data:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def drop(self, reason: str) -> None:
        """Refuse this client; the bind goes on waiting for a proper peer."""
        log.info("yoton: refused client %s on port %d: %s", self.addr, self.listener.conn._port1, reason)
        self.listener.pending.pop(self.sock, None)
        self.listener.loop.unregister(self.sock)
        self.sock.close()
