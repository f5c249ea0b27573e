"""One yoton connection as a sans-I/O state machine: handshake, then packages.

States and the rules that move between them::

    HANDSHAKE --(valid hello from the peer)--> OPEN
    HANDSHAKE --(bad line / too long / EOF / self-connect)--> CLOSED
    OPEN --(close signal / EOF / broken stream)--> CLOSED

* The connecting side speaks first: its hello line is in :meth:`data_to_send`
  from the start. The binding side answers a valid hello with its own; to
  anything else it answers an ``ERROR:`` line and closes.
* A hello is ``YOTON!<16 hex digits>.<pid>\\r\\n``; lines longer than
  ``max_line`` bytes are refused without waiting for their end.
* Equal ids on both ends mean a context reached itself: refused.
* Bytes after the hello line belong to the package stream.
* Once CLOSED, input is ignored; :attr:`Protocol.close_reason` tells why.

The protocol never raises on received bytes and knows no sockets, threads or
clocks; the transport moves bytes, enforces the handshake deadline and acts
on :meth:`events_received`.
"""

from __future__ import annotations

from ..errors import HandshakeError
from .frames import DEFAULT_MAX_PACKAGE_SIZE, FrameDecoder

__all__ = [
    "HANDSHAKE",
    "OPEN",
    "CLOSED",
    "HANDSHAKE_DONE",
    "CONNECTION_CLOSED",
    "MAX_LINE",
    "format_hello",
    "parse_hello",
    "Protocol",
]

HANDSHAKE, OPEN, CLOSED = "HANDSHAKE", "OPEN", "CLOSED"

#: Events besides :class:`~yoton.wire.frames.Package` objects.
HANDSHAKE_DONE = "HANDSHAKE_DONE"
CONNECTION_CLOSED = "CONNECTION_CLOSED"

MAX_LINE = 256
_HELLO = b"YOTON!"
_NOT_YOTON = b"ERROR: this is Yoton.\r\n"
_BAD_ID = b"ERROR: could not parse id.\r\n"

REASON_PEER_CLOSED = "Closed from other end."
REASON_EOF = "Other end dropped the connection."
REASON_SELF = "Handshake failed (context cannot connect to self)."


def format_hello(context_id: int, pid: int) -> bytes:
    """Return the handshake line announcing a context id and process id."""
    return b"YOTON!%016x.%d\r\n" % (context_id, pid)


def parse_hello(line: bytes) -> tuple[int, int]:
    """Parse a hello line (with or without its line end) into ``(id, pid)``.

    Raises :class:`~yoton.errors.HandshakeError` if the line is not a hello.
    """
    line = bytes(line).rstrip(b"\r\n")
    if not line.startswith(_HELLO):
        raise HandshakeError(f"not a yoton hello: {line[:60]!r}")
    id_hex, dot, pid_txt = line[len(_HELLO):].partition(b".")
    try:
        if not dot or len(id_hex) != 16:
            raise ValueError
        context_id, pid = int(id_hex, 16), int(pid_txt)
        if pid < 0:
            raise ValueError
    except ValueError:
        raise HandshakeError(f"could not parse id in hello {line[:60]!r}") from None
    return context_id, pid


class Protocol:
    """The state of one connection's byte stream, without any I/O.

    ``side`` is ``"connect"`` or ``"bind"``. Feed received bytes with
    :meth:`receive_data` (or :meth:`get_buffer` + :meth:`buffer_updated` for
    zero-copy reads) and :meth:`receive_eof`; take what happened from
    :meth:`events_received` (packages, :data:`HANDSHAKE_DONE`,
    :data:`CONNECTION_CLOSED`) and bytes to write from :meth:`data_to_send`.
    """

    def __init__(self, side: str, local_id: int, local_pid: int,
                 max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE, max_line: int = MAX_LINE):
        if side not in ("connect", "bind"):
            raise ValueError(f"side must be 'connect' or 'bind', not {side!r}")
        self.side = side
        self.local_id = local_id
        self.local_pid = local_pid
        self.max_line = max_line
        self.state = HANDSHAKE
        self.peer_id = 0
        self.peer_pid = 0
        self.handshake_done = False  # stays True once a valid hello was accepted
        self.close_reason: str | None = None
        self.peer_closed = False  # True when the peer ended it (signal or EOF)
        self.decoder = FrameDecoder(max_package_size)
        self._line = bytearray()
        self._events: list = []
        self.decoder.packages = self._events
        self._out = format_hello(local_id, local_pid) if side == "connect" else b""

    # -- input ------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Return memory to receive into; only while OPEN (see :class:`FrameDecoder`)."""
        return self.decoder.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` received into the last :meth:`get_buffer` memory."""
        if self.state == OPEN:
            self.decoder.buffer_updated(nbytes)
            self._collect()

    def receive_data(self, data) -> None:
        """Feed received bytes (any amount, any split)."""
        if self.state == HANDSHAKE:
            data = self._receive_line(bytes(data))
            if self.state != OPEN or not data:
                return
        if self.state == OPEN:
            self.decoder.receive_data(data)
            self._collect()

    def receive_eof(self) -> None:
        """The peer closed its sending side."""
        if self.state == HANDSHAKE:
            self._fail("Handshake failed: the other end closed the connection.")
        elif self.state == OPEN:
            self.peer_closed = True
            self._close(REASON_EOF)

    # -- output -----------------------------------------------------------

    def events_received(self) -> list:
        """Return (and forget) the events since the last call."""
        events = self._events
        if events:
            self._events = self.decoder.packages = []
        return events

    def data_to_send(self) -> bytes:
        """Return (and forget) handshake bytes to write to the peer."""
        out, self._out = self._out, b""
        return out

    # -- internals --------------------------------------------------------

    def _receive_line(self, data: bytes) -> bytes:
        self._line += data
        end = self._line.find(b"\n")
        if end < 0:
            if len(self._line) > self.max_line:
                self._fail("Handshake failed: line too long (not a yoton peer?).", _NOT_YOTON)
            return b""
        if end > self.max_line:
            self._fail("Handshake failed: line too long (not a yoton peer?).", _NOT_YOTON)
            return b""
        line, rest = bytes(self._line[:end + 1]), bytes(self._line[end + 1:])
        self._line = bytearray()
        try:
            peer_id, peer_pid = parse_hello(line)
        except HandshakeError as exc:
            if self.side == "bind":
                answer = _BAD_ID if line.startswith(_HELLO) else _NOT_YOTON
                self._fail(f"Handshake failed: {exc}.", answer)
            else:
                self._fail(f"Handshake failed: {exc}.")
            return b""
        if self.side == "bind":
            self._out += format_hello(self.local_id, self.local_pid)
        if peer_id == self.local_id:
            self._fail(REASON_SELF)
            return b""
        self.peer_id, self.peer_pid = peer_id, peer_pid
        self.handshake_done = True
        self.state = OPEN
        self._events.append(HANDSHAKE_DONE)
        self.decoder.packages = self._events
        return rest

    def _fail(self, reason: str, answer: bytes = b"") -> None:
        if self.side == "bind":
            self._out += answer
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.close_reason = reason
            self._events.append(CONNECTION_CLOSED)

    def _collect(self) -> None:
        # The decoder appends packages straight into self._events.
        decoder = self.decoder
        if decoder.peer_closed:
            self.peer_closed = True
            self._close(REASON_PEER_CLOSED)
        elif decoder.error is not None:
            self._close(decoder.error)
