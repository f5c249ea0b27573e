"""A tiny request/reply server over plain TCP (not the yoton package protocol).

Per connection: the client sends UTF-8 text ending in CRLF (or closes its
sending side), the server calls :meth:`RequestServer.handle_request` and
answers with the reply text plus CRLF, then closes. Requests longer than
``max_request_size`` bytes, and clients that take longer than
``client_timeout`` seconds, are cut off without disturbing the server.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time

from ..wire.naming import parse_address

log = logging.getLogger("yoton")

__all__ = ["RequestServer", "do_request"]

_CRLF = b"\r\n"


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
        self._stop_event = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()

    def handle_request(self, request: str) -> str:
        """Return the reply to ``request``. Default: ``'Requested: ' + request``;
        ``'wait'`` sleeps a second first; ``'stop'`` also stops the server."""
        if request == "stop":
            self.stop(join=False)
        elif request == "wait":
            time.sleep(1.0)
        return "Requested: " + request

    def stop(self, join: bool = True) -> None:
        """Stop serving (and wait for the serving thread unless ``join`` is False)."""
        self._stop_event.set()
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
                while not self._stop_event.is_set():
                    for key, _ in sel.select():
                        if key.fileobj is self._sock and not self._stop_event.is_set():
                            self._accept()
            finally:
                self._sock.close()
                self._wake_r.close()
                self._wake_w.close()

    def _accept(self) -> None:
        try:
            conn, addr = self._sock.accept()
        except OSError:
            return
        if self._async:
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()
        else:
            self._serve(conn, addr)

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
            try:
                conn.settimeout(self.client_timeout)
                conn.sendall(reply.encode("utf-8") + _CRLF)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                log.info("yoton: RequestServer could not answer %s: %s", addr, exc)


def _read_until_crlf(sock: socket.socket, limit: int, deadline: float | None) -> bytes:
    """Read until CRLF or EOF; ValueError over ``limit`` bytes, socket.timeout past ``deadline``."""
    data = bytearray()
    while True:
        end = data.find(_CRLF)
        # (a trailing CR may be the first half of the CRLF: not counted)
        if end > limit or (end < 0 and len(data) - data.endswith(b"\r") > limit):
            raise ValueError(f"request over {limit} bytes")
        if end >= 0:
            return bytes(data[:end])
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("client too slow")
            sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk


def do_request(address, request: str, timeout=-1):
    """Send ``request`` to a RequestServer at ``address`` and return the reply text.

    With ``timeout`` > 0, give up after that many seconds and return None.
    """
    _, host, port = parse_address(address)
    if not request.endswith("\r\n"):
        request += "\r\n"
    deadline = time.monotonic() + timeout if timeout and timeout > 0 else None
    try:
        with socket.create_connection((host, port), timeout=timeout if deadline else None) as sock:
            sock.sendall(request.encode("utf-8"))
            reply = _read_until_crlf(sock, 1 << 30, deadline)
    except socket.timeout:
        return None
    return reply.decode("utf-8", "replace")
