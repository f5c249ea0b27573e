"""One yoton connection as a sans-I/O state machine: handshake, then packages.

States and the rules that move between them::

    HANDSHAKE --(valid hello from the peer)--> OPEN
    HANDSHAKE --(bad line / too long / EOF / self-connect)--> CLOSED
    OPEN --(close signal / EOF / broken stream)--> CLOSED

* The connecting side speaks first: its hello line is in :meth:`data_to_send`
  from the start. The binding side answers a valid hello with its own; to
  anything else it answers an ``ERROR:`` line and closes.
* A hello is ``YOTON!<16 hex digits>.<pid>\\r\\n``; a line with more
  than ``max_line`` bytes before its LF is refused without waiting for its end.
* Equal ids on both ends mean a context reached itself: refused.
* Bytes after the hello line belong to the package stream.
* Once CLOSED, input is ignored; :attr:`Protocol.close_reason` tells why.

With an ``auth_key`` the state stays HANDSHAKE after the hellos until both
ends have proven they know the key (mutual challenge-response)::

    each side  -> "AUTH?<32 hex: 16 random bytes, its nonce>\r\n"   (the connecting
                   side sends it right after its hello, the binding side after its answer)
    on a nonce -> "AUTH!<64 hex: HMAC-SHA256(key, proof message)>\r\n"
    proof message = b"yoton-auth-1|" + prover's side (b"connect"/b"bind") + b"|"
                    + verifier's nonce + prover's nonce + prover's id + verifier's id
                    (ids as 8 bytes big-endian)

* A side is OPEN once it has sent its proof and verified the peer's
  (``hmac.compare_digest``). The side name in the message stops a proof
  being reflected back; the fresh nonces stop replays.
* Any other line, a second nonce, a proof before the nonce, a wrong proof,
  an ``ERROR:`` line or EOF: CLOSED with a reason starting
  ``"authentication failed"``, after queueing ``ERROR: authentication failed.``
  for the peer. Nothing the peer sent is delivered.
* A side without a key that finds ``AUTH?`` where its first package should
  be closes with "authentication failed (the other end requires an auth key)".

The protocol never raises on received bytes and knows no sockets, threads or
clocks; the transport moves bytes, enforces the handshake deadline and acts
on :meth:`events_received`.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

from ..errors import HandshakeError
from .frames import DEFAULT_MAX_PACKAGE_SIZE, FrameDecoder

__all__ = [
    "State",
    "HANDSHAKE",
    "OPEN",
    "CLOSED",
    "HANDSHAKE_DONE",
    "CONNECTION_CLOSED",
    "MAX_LINE",
    "format_hello",
    "parse_hello",
    "auth_proof",
    "AUTH_FAILED",
    "Protocol",
]


class State(Enum):
    """Where a :class:`Protocol` is (see the rules at the top of the module)."""

    HANDSHAKE = "HANDSHAKE"  #: hello lines (and the auth exchange) in progress
    OPEN = "OPEN"  #: the package stream flows
    CLOSED = "CLOSED"  #: over; input is ignored, close_reason says why


HANDSHAKE, OPEN, CLOSED = State.HANDSHAKE, State.OPEN, State.CLOSED
_TRANSITIONS = {HANDSHAKE: (OPEN, CLOSED), OPEN: (CLOSED,), CLOSED: ()}

#: Events besides :class:`~yoton.wire.frames.Package` objects.
HANDSHAKE_DONE = "HANDSHAKE_DONE"
CONNECTION_CLOSED = "CONNECTION_CLOSED"

MAX_LINE = 256
_HELLO = b"YOTON!"
_HEX_DIGITS = b"0123456789abcdefABCDEF"
_NOT_YOTON = b"ERROR: this is Yoton.\r\n"
_BAD_ID = b"ERROR: could not parse id.\r\n"

REASON_PEER_CLOSED = "Closed from other end."
REASON_EOF = "Other end dropped the connection."
REASON_SELF = "Handshake failed (context cannot connect to self)."

_AUTH_NONCE = b"AUTH?"
_AUTH_PROOF = b"AUTH!"
_AUTH_FAILED = b"ERROR: authentication failed.\r\n"
NONCE_SIZE = 16
AUTH_FAILED = "authentication failed"


def auth_proof(
    key: bytes, side: str, verifier_nonce: bytes, prover_nonce: bytes, prover_id: int, verifier_id: int
) -> bytes:
    """Return the HMAC-SHA256 with which ``side`` proves it knows ``key``."""
    message = b"".join(
        [
            b"yoton-auth-1|",
            side.encode(),
            b"|",
            verifier_nonce,
            prover_nonce,
            prover_id.to_bytes(8, "big"),
            verifier_id.to_bytes(8, "big"),
        ]
    )
    import hmac  # (on first use: it loads OpenSSL's hashes, some MB a context without a key never needs)

    return hmac.new(key, message, "sha256").digest()


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
    id_hex, dot, pid_txt = line[len(_HELLO) :].partition(b".")
    try:
        # Exactly 16 hex digits and a decimal pid: int() alone would also take
        # signs, spaces, "0x" and "_", and a negative id has no 8-byte form.
        if not dot or len(id_hex) != 16 or id_hex.strip(_HEX_DIGITS) or not pid_txt.isdigit():
            raise ValueError
        context_id, pid = int(id_hex, 16), int(pid_txt)
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

    Once the stream is open (and its first bytes checked), :meth:`get_buffer`
    and :meth:`buffer_updated` are the decoder's own (one call less per read);
    the decoder's ``on_stop`` closes the protocol, which then ignores input.
    """

    def __init__(
        self,
        side: str,
        local_id: int,
        local_pid: int,
        max_package_size: int = DEFAULT_MAX_PACKAGE_SIZE,
        max_line: int = MAX_LINE,
        auth_key: bytes | None = None,
        nonce: bytes | None = None,
    ):
        if side not in ("connect", "bind"):
            raise ValueError(f"side must be 'connect' or 'bind', not {side!r}")
        self.auth_key = auth_key or None
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._peer_nonce: bytes | None = None
        self._peer_verified = False
        self._sniff = auth_key is None  # check that the first package is no auth nonce
        self.side = side
        self.local_id = local_id
        self.local_pid = local_pid
        self.max_line = max_line
        self.state = HANDSHAKE
        self.peer_id = 0
        self.peer_pid = 0
        self.handshake_done = False  # stays True once the handshake (and auth) succeeded
        self._hello_done = False
        self._first = b""
        self._last_buf: memoryview | None = None
        self.close_reason: str | None = None
        self.auth_failed = False  # closed because the auth_key proofs failed (or were refused)
        self.peer_closed = False  # True when the peer ended it (signal or EOF)
        self.decoder = FrameDecoder(max_package_size)
        self.decoder.on_stop = self._collect
        self._line = bytearray()
        self._events: list[Any] = []
        self.decoder.packages = self._events
        self._out = format_hello(local_id, local_pid) + self._nonce_line() if side == "connect" else b""

    @property
    def awaiting_proof(self) -> bool:
        """Hellos exchanged, auth_key proofs not yet (a handshake still in progress)."""
        return self._hello_done and self.state is HANDSHAKE

    def _set_state(self, new: State) -> None:
        """The only place the state changes; refuses a move the rules do not allow."""
        if new not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"protocol cannot go from {self.state.value} to {new.value}")
        self.state = new

    def _nonce_line(self) -> bytes:
        return _AUTH_NONCE + self._nonce.hex().encode() + b"\r\n" if self.auth_key else b""

    # -- input ------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Return memory to receive into; only while OPEN (see :class:`FrameDecoder`)."""
        buf = self.decoder.get_buffer()
        if self._sniff:
            self._last_buf = buf
        return buf

    def buffer_updated(self, nbytes: int) -> None:
        """Account for ``nbytes`` received into the last :meth:`get_buffer` memory."""
        if self.state is OPEN:
            if self._sniff and self._last_buf is not None:
                self._check_first_bytes(self._last_buf[:nbytes])
                if self.state is not OPEN:
                    return
            self.decoder.buffer_updated(nbytes)
            self._collect()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed received bytes (any amount, any split)."""
        if self.state is HANDSHAKE:
            data = self._receive_lines(bytes(data))
            if self.state is not OPEN or not data:
                return
        if self.state is OPEN:
            if self._sniff:
                self._check_first_bytes(data)
                if self.state is not OPEN:
                    return
            self.decoder.receive_data(data)
            self._collect()

    def receive_eof(self) -> None:
        """The peer closed its sending side."""
        if self.state is HANDSHAKE:
            if self._hello_done:
                self._auth_fail("the other end closed the connection")
            else:
                self._fail("Handshake failed: the other end closed the connection.")
        elif self.state is OPEN:
            self.peer_closed = True
            self._close(REASON_EOF)

    # -- output -----------------------------------------------------------

    def partial(self) -> tuple[int, ...] | None:
        """The large package being received, if any (see :meth:`FrameDecoder.partial`)."""
        return self.decoder.partial()

    def events_received(self) -> list[Any]:
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

    def _receive_lines(self, data: bytes) -> bytes:
        """Take handshake lines; return the bytes after the last one once OPEN."""
        self._line += data
        while self.state is HANDSHAKE:
            end = self._line.find(b"\n")
            if end > self.max_line or (end < 0 and len(self._line) > self.max_line):
                if self._hello_done:
                    self._auth_fail("the other end did not authenticate; has it the key?")
                else:
                    self._fail("Handshake failed: line too long (not a yoton peer?).", _NOT_YOTON)
                return b""
            if end < 0:
                return b""
            line = bytes(self._line[: end + 1])
            del self._line[: end + 1]
            if self._hello_done:
                self._auth_line(line.rstrip(b"\r\n"))
            else:
                self._hello_line(line)
        rest, self._line = bytes(self._line), bytearray()
        return rest if self.state is OPEN else b""

    def _hello_line(self, line: bytes) -> None:
        try:
            peer_id, peer_pid = parse_hello(line)
        except HandshakeError as exc:
            if self.side == "bind":
                answer = _BAD_ID if line.startswith(_HELLO) else _NOT_YOTON
                self._fail(f"Handshake failed: {exc}.", answer)
            elif line.startswith(b"ERROR:"):
                text = line.rstrip(b"\r\n").decode("utf-8", "replace")
                self._fail(f"Handshake failed: the other end answered {text!r}.")
            else:
                self._fail(f"Handshake failed: {exc}.")
            return
        if self.side == "bind":
            self._out += format_hello(self.local_id, self.local_pid) + self._nonce_line()
        if peer_id == self.local_id:
            self._fail(REASON_SELF)
            return
        self.peer_id, self.peer_pid = peer_id, peer_pid
        self._hello_done = True
        if not self.auth_key:
            self._open()

    def _auth_line(self, line: bytes) -> None:
        key = self.auth_key
        assert key is not None  # only called on a keyed handshake
        kind, value = line[:5], line[5:]
        try:
            value = bytes.fromhex(value.decode("ascii"))
        except ValueError:
            value = b""
        if kind == _AUTH_NONCE and self._peer_nonce is None and len(value) == NONCE_SIZE:
            self._peer_nonce = value
            proof = auth_proof(key, self.side, value, self._nonce, self.local_id, self.peer_id)
            self._out += _AUTH_PROOF + proof.hex().encode() + b"\r\n"
        elif kind == _AUTH_PROOF and self._peer_nonce is not None and not self._peer_verified:
            peer_side = "bind" if self.side == "connect" else "connect"
            expected = auth_proof(key, peer_side, self._nonce, self._peer_nonce, self.peer_id, self.local_id)
            from hmac import compare_digest

            if not compare_digest(value, expected):
                self._auth_fail("wrong key")
                return
            self._peer_verified = True
        elif line.startswith(b"ERROR:"):
            self._auth_fail("refused by the other end")
            return
        else:
            self._auth_fail("the other end did not authenticate; has it the key?")
            return
        if self._peer_verified and self._peer_nonce is not None:
            self._open()

    def _open(self) -> None:
        self.handshake_done = True
        self._set_state(OPEN)
        self._events.append(HANDSHAKE_DONE)
        self.decoder.packages = self._events
        self._feed_decoder_directly()

    def _feed_decoder_directly(self) -> None:
        # Open and past the first-bytes check, reading is the decoder's alone:
        # its own get_buffer/buffer_updated stand in for ours (one call less
        # per read). The decoder's on_stop closes us; _close undoes this.
        if self.state is OPEN and not self._sniff:
            vars(self).update(get_buffer=self.decoder.get_buffer, buffer_updated=self.decoder.buffer_updated)

    def _check_first_bytes(self, data: bytes | bytearray | memoryview) -> None:
        # Without a key, a peer that opens with an auth nonce wants one.
        self._first += bytes(data[: len(_AUTH_NONCE) - len(self._first)])
        if len(self._first) >= len(_AUTH_NONCE) or not data:
            self._sniff = False
            self._last_buf = None
            if self._first == _AUTH_NONCE:
                self.auth_failed = True
                self._close(f"{AUTH_FAILED} (the other end requires an auth key)")
            else:
                self._feed_decoder_directly()
        elif not _AUTH_NONCE.startswith(self._first):
            self._sniff = False
            self._last_buf = None
            self._feed_decoder_directly()

    def _auth_fail(self, detail: str) -> None:
        self._out += _AUTH_FAILED
        self.auth_failed = True
        self._close(f"{AUTH_FAILED} ({detail})")

    def _fail(self, reason: str, answer: bytes = b"") -> None:
        if self.side == "bind":
            self._out += answer
        self._close(reason)

    def _close(self, reason: str) -> None:
        if self.state is not CLOSED:
            vars(self).pop("get_buffer", None)  # (ours again: input is ignored from now on)
            vars(self).pop("buffer_updated", None)
            self._set_state(CLOSED)
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
