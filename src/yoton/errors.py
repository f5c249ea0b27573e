"""Exceptions raised by yoton.

Every exception yoton raises on purpose derives from :class:`YotonError`. Each
one also derives from the standard-library exception that yoton 2.2 raised in
the same situation, so ``except OSError`` or ``except ValueError`` written for
yoton 2.2 keeps working.
"""

from __future__ import annotations

__all__ = [
    "YotonError",
    "ProtocolError",
    "HandshakeError",
    "ConnectError",
    "AuthenticationError",
    "TLSError",
    "ChannelClosedError",
    "WouldBlock",
    "FlushTimeout",
    "RemoteError",
    "TimeoutError",
    "CancelledError",
]


class YotonError(Exception):
    """Root of all exceptions raised by yoton."""


class ProtocolError(YotonError, ValueError):
    """The bytes received from a peer break the wire protocol.

    Raised by the pure wire code (frame decoder, handshake parser). The I/O
    layer never lets it escape: it closes the offending connection and uses
    the message as the close reason.
    """


class HandshakeError(ProtocolError):
    """The yoton handshake with a peer failed (not yoton, bad id, self-connect)."""


class ConnectError(YotonError, OSError):
    """``Context.connect`` could not reach a yoton peer before its timeout."""


class AuthenticationError(HandshakeError, ConnectError):
    """The peer did not prove that it knows the context's ``auth_key``.

    Raised by ``Context.connect`` when the keys differ, the peer has no key
    (e.g. yoton 2.2) or it refused ours; it is also an ``OSError``. A bind
    does not raise it: it refuses such a client and keeps waiting.
    """


class TLSError(ConnectError):
    """``connect`` to a ``tls://`` address failed in the TLS handshake.

    The message says why: e.g. the server's certificate is not trusted or does
    not name the host, or the other end does not speak TLS.
    """


class ChannelClosedError(YotonError, OSError):
    """You sent on a channel that was closed (by you, or by closing its context)."""


class WouldBlock(YotonError, BlockingIOError):
    """A send asked not to wait (``block=False``, or a number of seconds that
    ran out) found no room: a send queue is full (the peer is slower than the
    sender), or a subscriber in sync mode said it is full.

    Nothing was sent, to anyone; try again later. Also a ``BlockingIOError``
    (an ``OSError``), which is what a non-blocking socket raises.
    """


class FlushTimeout(YotonError, TimeoutError):
    """``flush()`` gave up: queued packages were not all written before the timeout."""


import concurrent.futures as _cf  # noqa: E402


class RemoteError(YotonError, RuntimeError):
    """A replier could not serve a request: its handler raised, the method does
    not exist, or the reply could not be encoded. The message carries the
    remote error text."""


class TimeoutError(YotonError, _cf.TimeoutError):  # noqa: A001 - yoton 2.2 name
    """``Future.result()`` or ``Future.exception()`` waited longer than its timeout."""


class CancelledError(YotonError, _cf.CancelledError):
    """The request's future was cancelled (by you, or by its auto-cancel timeout)."""
