"""A tiny request/reply server over plain TCP (not the yoton package protocol).

Per connection: the client sends UTF-8 text ending in CRLF (or closes its
sending side), the server calls :meth:`RequestServer.handle_request` with
that text (the CRLF included, as in yoton 2.2) and answers with the reply
plus a CRLF if it has none, then closes. :func:`do_request` returns the
reply as it came, CRLF included.

Against clients that misbehave: the server reads all its clients at once
(one thread, a selector), so a silent or slow client holds up no other;
each has ``client_timeout`` seconds to send its request and take its reply,
and at most ``max_request_size`` bytes. At most ``max_clients`` connections
are open at a time (the oldest one still sending is dropped for a new one),
and with ``async_val`` at most ``max_threads`` requests are handled at once
(complete requests beyond that wait their turn).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

from ..errors import NoServerError
from ..wire.naming import parse_address

log = logging.getLogger("yoton")

__all__ = ["RequestServer", "do_request", "NoServerError"]

_CRLF = b"\r\n"

#: After stop(), a RequestServer still answers what arrives within this many
#: seconds (yoton 2.2 noticed a stop only every 0.25 s, so a request right
#: after it was answered; pyzo relies on that, and a loaded machine needs more:
#: 1 s was too short for a busy CI machine, where the last request came later).
STOP_GRACE = 3.0


class RequestServer(threading.Thread):
    """Serve text requests on ``address``; override :meth:`handle_request`.

    ``start()`` serves in a thread of its own, ``run()`` in the calling
    thread, ``stop()`` ends serving. With ``async_val`` True each request is
    handled in a thread of its own (at most ``max_threads`` at once);
    otherwise one at a time. Clients are read all at once, each within
    ``client_timeout`` seconds and ``max_request_size`` bytes, at most
    ``max_clients`` of them (see the module docstring). ``verbose`` is
    accepted for yoton 2.2's signature and does nothing.
    """

    def __init__(
        self,
        address: str,
        async_val: bool = False,
        verbose: int = 0,
        *,
        max_request_size: int = 1 << 20,
        client_timeout: float = 10.0,
        max_clients: int = 64,
        max_threads: int = 16,
    ) -> None:
        super().__init__(daemon=True, name=f"yoton-requestserver-{address}")
        _, host, port = parse_address(address)
        self._async = bool(async_val)
        self._verbose = verbose
        self.max_request_size = int(max_request_size)
        self.client_timeout = float(client_timeout)
        self.max_clients = max(1, int(max_clients))
        self.max_threads = max(1, int(max_threads))
        self._clients: dict = {}  # socket -> _Client still sending its request (server thread)
        self._ready: deque = deque()  # complete requests waiting for a handler thread (async)
        self._handlers = 0  # handler threads running (async)
        self._done_lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self.address = self._sock.getsockname()[:2]
        self._stop_at: float | None = None  # (monotonic) when stop() was called, + the grace
        self._taken = 0  # complete requests taken so far (server thread)
        self._end_after: int | None = None  # end once this many requests are taken (set by stop())
        self._serving = threading.local()  # .number: the request a handler thread is answering
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    def handle_request(self, request: str) -> str:
        """Return the reply to ``request`` (the text as it came, CRLF included).

        Default: ``'Requested: ' + request``; ``'wait'`` sleeps a second
        first; ``'stop'`` also stops the server.
        """
        command = request[:-2] if request.endswith("\r\n") else request
        if command == "stop":
            self.stop()
        elif command == "wait":
            time.sleep(1.0)
        return "Requested: " + request

    def stop(self, join: bool = False) -> None:
        """Stop serving; with ``join``, at once, and wait for the serving thread to end.

        Without ``join``, a request that arrives within :data:`STOP_GRACE`
        seconds (3 s; yoton 2.2 noticed a stop only every quarter of a
        second, so such a request was answered) is still answered, and the
        server ends after it: pyzo stops its command server, then sends it a
        last request to make it end at once. That last request is the first
        one taken after the call (or, called from :meth:`handle_request`,
        the one being handled); a request taken before it does not count,
        even if it is still being answered.
        """
        stop_at = time.monotonic() + (0.0 if join else STOP_GRACE)
        if self._stop_at is None or stop_at < self._stop_at:
            self._stop_at = stop_at
        # The last request is the next one taken, or the one whose handler calls
        # stop(); never one taken before (its reply may already be out, and its
        # client about to send the last request, as pyzo does).
        current = getattr(self._serving, "number", None)
        end_after = current if current is not None else self._taken + 1
        if self._end_after is None or end_after < self._end_after:
            self._end_after = end_after
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        if join and self.is_alive() and threading.current_thread() is not self:
            self.join(5.0)

    def run(self) -> None:
        """Serve until :meth:`stop` is called (in the calling thread)."""
        with selectors.DefaultSelector() as sel:
            self._sel = sel
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            try:
                while True:
                    now = time.monotonic()
                    stop_at = self._stop_at
                    end_after = self._end_after
                    if stop_at is not None and (now >= stop_at or (end_after is not None and self._taken >= end_after)):
                        return
                    timeout = None if stop_at is None else stop_at - now
                    if self._clients:
                        first = min(c.deadline for c in self._clients.values())
                        timeout = max(0.0, first - now) if timeout is None else min(timeout, max(0.0, first - now))
                    for key, _ in sel.select(timeout):
                        if key.fileobj is self._sock:
                            self._accept()
                        elif key.fileobj is self._wake_r:
                            self._drain_wake()
                        else:
                            self._on_client(key.data)
                    self._drop_late(time.monotonic())
            finally:
                for client in list(self._clients.values()):
                    client.sock.close()
                self._clients.clear()
                self._sock.close()
                self._wake_r.close()
                self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:  # (BlockingIOError: drained)
            pass

    def _accept(self) -> None:
        try:
            conn, addr = self._sock.accept()
        except OSError:
            return
        if len(self._clients) >= self.max_clients:
            oldest = min(self._clients.values(), key=lambda c: c.deadline)
            self._drop(oldest, f"too many clients (at most {self.max_clients} at once)")
        conn.setblocking(False)
        client = _Client(conn, addr, time.monotonic() + self.client_timeout)
        self._clients[conn] = client
        self._sel.register(conn, selectors.EVENT_READ, client)

    def _drop(self, client: _Client, why: str) -> None:
        log.info("yoton: RequestServer dropped client %s: %s", client.addr, why)
        self._forget(client)
        client.sock.close()

    def _forget(self, client: _Client) -> None:
        if self._clients.pop(client.sock, None) is not None:
            self._sel.unregister(client.sock)

    def _drop_late(self, now: float) -> None:
        for client in [c for c in self._clients.values() if now >= c.deadline]:
            self._drop(client, f"no complete request within {self.client_timeout:g} s")

    def _on_client(self, client: _Client) -> None:
        """Read what a client sent; handle its request once complete."""
        try:
            chunk = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, str(exc))
            return
        data = client.data
        data += chunk
        end = data.find(_CRLF)
        limit = self.max_request_size
        if end > limit or (end < 0 and len(data) - data.endswith(b"\r") > limit):
            self._drop(client, f"request over {limit} bytes")
            return
        if end < 0 and chunk:
            return  # (more to come)
        request = bytes(data[: end + 2]) if end >= 0 else bytes(data)
        self._forget(client)
        client.sock.setblocking(True)
        self._taken += 1
        job = (client.sock, client.addr, request, client.deadline, self._taken)
        if not self._async:
            self._serve(*job)
        else:
            self._ready.append(job)
            self._start_handlers()

    def _start_handlers(self) -> None:
        with self._done_lock:
            while self._ready and self._handlers < self.max_threads:
                self._handlers += 1
                threading.Thread(
                    target=self._handler_thread,
                    args=(self._ready.popleft(),),
                    daemon=True,
                    name="yoton-requestserver-handler",
                ).start()

    def _handler_thread(self, job: tuple | None) -> None:
        while job is not None:
            self._serve(*job)
            with self._done_lock:  # (take the next waiting request, if any)
                job = self._ready.popleft() if self._ready else None
                if job is None:
                    self._handlers -= 1

    def _serve(self, conn: socket.socket, addr: Any, request: bytes, deadline: float, number: int) -> None:
        with conn:
            self._serving.number = number
            try:
                reply = self.handle_request(request.decode("utf-8", "replace"))
                if not isinstance(reply, str):
                    raise TypeError(f"handle_request must return str, not {type(reply).__name__}")
            except Exception:
                log.exception("yoton: RequestServer handler failed")
                reply = "ERROR: the server failed to handle the request"
            finally:
                self._serving.number = None
            data = reply.encode("utf-8")
            if not data.endswith(_CRLF):
                data += _CRLF
            try:
                conn.settimeout(max(0.1, deadline - time.monotonic()))
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.info("yoton: RequestServer could not answer %s: %s", addr, exc)


class _Client:
    """A client of a RequestServer still sending its request."""

    __slots__ = ("sock", "addr", "deadline", "data")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock, self.addr, self.deadline, self.data = sock, addr, deadline, bytearray()


def _read_until_crlf(sock: socket.socket, limit: int, deadline: float | None, partial: bool = False) -> bytes:
    """Read up to the first CRLF (included) or EOF; ValueError over ``limit`` bytes.

    Past ``deadline``: socket.timeout, or with ``partial`` what has arrived.
    """
    data = bytearray()
    while True:
        end = data.find(_CRLF)
        # (a trailing CR may be the first half of the CRLF: not counted)
        if end > limit or (end < 0 and len(data) - data.endswith(b"\r") > limit):
            raise ValueError(f"request over {limit} bytes")
        if end >= 0:
            return bytes(data[: end + 2])
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if partial:
                    return bytes(data)
                raise socket.timeout("client too slow")
            sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if partial:
                return bytes(data)
            raise
        if not chunk:
            return bytes(data)
        data += chunk


def do_request(address: str, request: str, timeout: float | None = -1) -> str | None:
    """Send ``request`` to a RequestServer at ``address`` and return the reply text.

    A CRLF is appended to the request if it has none; the reply is returned
    as it came, up to its first CRLF (included) or the end of the stream. With
    ``timeout`` > 0, give up after that many seconds and return what has
    arrived ('' if nothing); the default -1 (or None, or 0) waits as long as
    it takes. As in yoton 2.2: a request that is not a str
    raises ValueError, no server at the address raises :class:`NoServerError`
    (a RuntimeError, and a ConnectionError), a connection broken while
    waiting for the reply returns None.
    """
    if not isinstance(request, str):
        raise ValueError(f"request should be a string, not {type(request).__name__}")
    _, host, port = parse_address(address)
    if not request.endswith("\r\n"):
        request += "\r\n"
    limited = timeout is not None and timeout > 0
    deadline = time.monotonic() + timeout if timeout is not None and limited else None
    try:
        sock = socket.create_connection((host, port), timeout=timeout if limited else None)
    except OSError as exc:
        raise NoServerError(f"No server is listening at the given port ({host}:{port}: {exc}).") from None
    with sock:
        try:
            sock.sendall(request.encode("utf-8"))
            reply = _read_until_crlf(sock, 1 << 30, deadline, partial=True)
        except OSError:
            return None
    return reply.decode("utf-8", "replace")
