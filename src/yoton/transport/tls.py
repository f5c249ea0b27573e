"""TLS for yoton connections, over memory buffers.

A :class:`TlsPipe` is an :class:`ssl.SSLObject` between two
:class:`ssl.MemoryBIO` buffers: the transport feeds it the ciphertext read
from the socket and sends what it produces, and gets and gives plaintext.
It owns no socket, so the same selector loop serves plain and TLS
connections (an ``SSLSocket`` in non-blocking mode hides decrypted bytes
from the selector and refuses ``sendmsg``).

The yoton handshake (and the auth exchange, if any) runs inside TLS.
"""

from __future__ import annotations

import re
import ssl

__all__ = ["TlsPipe", "CHUNK", "looks_like_tls", "describe"]

CHUNK = 256 * 1024  #: plaintext encrypted per step, and the read size


def looks_like_tls(first: bytes) -> bool:
    """True if the first byte a client sent can start a TLS handshake record."""
    return first[:1] == b"\x16"


def describe(exc: ssl.SSLError) -> str:
    """A readable reason for an SSL error (without OpenSSL's source location)."""
    text = getattr(exc, "verify_message", "") or ""
    if not text:
        text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
        text = re.sub(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)
    return text or getattr(exc, "reason", None) or type(exc).__name__


class TlsPipe:
    """One TLS session over memory: ciphertext in/out, plaintext in/out.

    ``server_side`` for binds; clients pass ``server_hostname`` (checked
    against the certificate when the context has ``check_hostname``).
    Methods raise :class:`ssl.SSLError` when the peer breaks TLS.
    """

    def __init__(self, ssl_context: ssl.SSLContext, server_side: bool, server_hostname: str | None = None):
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ssl_context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else server_hostname,
        )
        self.handshake_done = False
        self.eof = False  # the peer ended TLS (close_notify)

    def do_handshake(self) -> bool:
        """Advance the TLS handshake with what was fed; True once it is complete."""
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return False
            self.handshake_done = True
        return True

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Give ciphertext received from the peer."""
        self.incoming.write(data)

    def read(self) -> bytes:
        """Return all plaintext that the fed ciphertext holds (b'' if none yet)."""
        chunks = []
        while True:
            try:
                chunk = self.obj.read(CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt plaintext; the ciphertext waits in :meth:`take`."""
        self.obj.write(data)

    def take(self) -> bytes:
        """Return (and forget) the ciphertext to send to the peer."""
        return self.outgoing.read()

    @property
    def pending_out(self) -> int:
        """Bytes of ciphertext waiting in :meth:`take`."""
        return self.outgoing.pending
