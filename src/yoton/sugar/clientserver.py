"""A tiny request/reply server over plain TCP (not the yoton package protocol).

Per connection: the client sends UTF-8 text ending in CRLF (or closes its
sending side), the server calls :meth:`RequestServer.handle_request` with
that text (the CRLF included, as in yoton 2.2) and answers with the reply
plus a CRLF if it has none, then closes. :func:`do_request` returns the
reply as it came, CRLF included. Requests longer than ``max_request_size``
bytes, and clients that take longer than ``client_timeout`` seconds, are
cut off without disturbing the server.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

from ..errors import YotonError
from ..wire.naming import parse_address

log = logging.getLogger("yoton")

__all__ = ["RequestServer", "do_request", "NoServerError"]

_CRLF = b"\r\n"

#: After stop(), a RequestServer still answers what arrives within this many
#: seconds (yoton 2.2 noticed a stop only every 0.25 s; pyzo relies on that).
STOP_GRACE = 0.25


class NoServerError(YotonError, ConnectionError, RuntimeError):
    """:func:`do_request` found no server at the address (yoton 2.2 raised RuntimeError)."""


class RequestServer(threading.Thread):
    """Serve text requests on ``address``; override :meth:`handle_request`.

    ``start()`` serves in a thread of its own, ``run()`` in the calling
    thread, ``stop()`` ends serving. With ``async_val`` True each connection
    is handled in a thread of its own; otherwise one at a time.
    """

    def __init__(self, address, async_val=False, verbose=0, *,
                 max_request_size: int = 1 << 20, client_timeout: float = 10.0):
        super().__init__(daemon=True, name=f"yoton-requestserver-{address}")
        _, host, port = parse_address(address)
        self._async = bool(async_val)
        self._verbose = verbose
        self.max_request_size = int(max_request_size)
        self.client_timeout = float(client_timeout)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            raise
        self.address = self._sock.getsockname()[:2]
        self._stop_at: float | None = None  # (monotonic) when stop() was called, + the grace
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

        Without ``join``, as in yoton 2.2, a request that arrives within a
        quarter of a second (:data:`STOP_GRACE`) is still answered, and the
        server ends after it: pyzo stops its command server, then sends it a
        last request to make it end at once.
        """
        stop_at = time.monotonic() + (0.0 if join else STOP_GRACE)
        if self._stop_at is None or stop_at < self._stop_at:
            self._stop_at = stop_at
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass
        if join and self.is_alive() and threading.current_thread() is not self:
            self.join(5.0)

    def run(self) -> None:
        """Serve until :meth:`stop` is called (in the calling thread)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            try:
                while True:
                    stop_at = self._stop_at
                    timeout = None if stop_at is None else stop_at - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        return
                    for key, _ in sel.select(timeout):
                        if key.fileobj is self._sock:
                            served = self._accept()
                            if served and stop_at is not None:
                                return  # the last request after stop(), answered
                        else:
                            self._drain_wake()
            finally:
                self._sock.close()
                self._wake_r.close()
                self._wake_w.close()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:  # (BlockingIOError: drained)
            pass

    def _accept(self) -> bool:
        try:
            conn, addr = self._sock.accept()
        except OSError:
            return False
        if self._async:
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()
        else:
            self._serve(conn, addr)
        return True

    def _serve(self, conn: socket.socket, addr) -> None:
        with conn:
            try:
                request = _read_until_crlf(conn, self.max_request_size, time.monotonic() + self.client_timeout)
            except (OSError, ValueError) as exc:
                log.info("yoton: RequestServer dropped client %s: %s", addr, exc)
                return
            try:
                reply = self.handle_request(request.decode("utf-8", "replace"))
                if not isinstance(reply, str):
                    raise TypeError(f"handle_request must return str, not {type(reply).__name__}")
            except Exception:
                log.exception("yoton: RequestServer handler failed")
                reply = "ERROR: the server failed to handle the request"
            data = reply.encode("utf-8")
            if not data.endswith(_CRLF):
                data += _CRLF
            try:
                conn.settimeout(self.client_timeout)
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.info("yoton: RequestServer could not answer %s: %s", addr, exc)


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
            return bytes(data[:end + 2])
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


def do_request(address, request: str, timeout=-1):
    """Send ``request`` to a RequestServer at ``address`` and return the reply text.

    A CRLF is appended to the request if it has none; the reply is returned
    as it came, up to its first CRLF (included) or the end of the stream. With
    ``timeout`` > 0, give up after that many seconds and return what has
    arrived ('' if nothing). As in yoton 2.2: a request that is not a str
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
    deadline = time.monotonic() + timeout if limited else None
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
