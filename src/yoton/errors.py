"""Exceptions raised by yoton, all in one place.

Every exception yoton raises on purpose derives from :class:`YotonError`. Each
one also derives from the standard-library exception that yoton 2.2 raised in
the same situation (or that Python code expects), so ``except OSError`` or
``except ValueError`` written for yoton 2.2 keeps working. Names say what
happened: closed by you (:class:`ChannelClosedError`), broken or refused by
the peer (:class:`ConnectError` and its kind), busy (:class:`WouldBlock`)::

    YotonError
    +-- ProtocolError (ValueError)            a peer's bytes break the wire protocol
    |   +-- HandshakeError                    the yoton handshake failed
    |       +-- ConnectHandshakeError (+ConnectError)   ... when connecting
    |           +-- AuthenticationError       ... because the auth_key proofs failed
    +-- ConnectError (OSError)                connect() could not reach a yoton peer
    |   +-- ConnectHandshakeError             (see above)
    |   +-- TLSError                          the TLS handshake failed
    +-- BindError (OSError)                   bind() found no free port
    +-- NoServerError (ConnectionError, RuntimeError)   do_request() found no server
    +-- ChannelClosedError (OSError)          you sent on a closed channel
    +-- WouldBlock (BlockingIOError)          a send that must not wait found no room
    +-- FlushTimeout (TimeoutError)           flush() gave up
    +-- RemoteError (RuntimeError)            a replier could not serve the request
    +-- TimeoutError (TimeoutError, concurrent.futures.TimeoutError)   a wait for a reply or message ran out
    +-- CancelledError (concurrent.futures.CancelledError)   the request was cancelled
"""

from __future__ import annotations

import builtins as _builtins
import concurrent.futures as _cf

__all__ = [
    "YotonError",
    "ProtocolError",
    "HandshakeError",
    "ConnectError",
    "ConnectHandshakeError",
    "AuthenticationError",
    "TLSError",
    "BindError",
    "NoServerError",
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


class ConnectHandshakeError(HandshakeError, ConnectError):
    """``connect`` reached a peer but the yoton handshake failed.

    A :class:`HandshakeError` and also a :class:`ConnectError` (an ``OSError``):
    yoton 2.2 raised ``IOError`` here, so ``except IOError`` keeps working.
    """


class AuthenticationError(ConnectHandshakeError):
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


class BindError(YotonError, OSError):
    """``Context.bind`` found no free port among those it was allowed to try."""


class NoServerError(YotonError, ConnectionError, RuntimeError):
    """:func:`yoton.do_request` found no server at the address (yoton 2.2 raised RuntimeError)."""


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


class RemoteError(YotonError, RuntimeError):
    """A replier could not serve a request: its handler raised, the method does
    not exist, or the reply could not be encoded. The message carries the
    remote error text."""


# From Python 3.11 on, concurrent.futures.TimeoutError is the builtin TimeoutError
# (listing both would repeat a base); before, they are two classes.
_TIMEOUT_BASES = (_cf.TimeoutError,) + (() if _cf.TimeoutError is _builtins.TimeoutError else (_builtins.TimeoutError,))


class TimeoutError(YotonError, *_TIMEOUT_BASES):  # type: ignore[misc]  # noqa: A001 - yoton 2.2 name
    """A wait for an answer ran out: ``Future.result()`` or ``Future.exception()``
    waited longer than its timeout, or (``yoton.asyncio``) ``await sub.recv(timeout=...)``
    got nothing in time.

    Also the builtin ``TimeoutError`` (what ``asyncio.timeout()`` raises) and
    ``concurrent.futures.TimeoutError`` (what yoton 2.2 raised).
    """


class CancelledError(YotonError, _cf.CancelledError):
    """The request's future was cancelled (by you, or by its auto-cancel timeout)."""
