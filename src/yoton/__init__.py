"""yoton: let Python processes talk to each other.

A :class:`Context` is a node; contexts ``bind`` and ``connect`` over TCP and
form a network. Channels attached to a context send and receive on named
slots: publish/subscribe (:class:`PubChannel`, :class:`SubChannel`),
request/reply and shared state (:class:`StateChannel`). Signals, timers and
an embeddable event loop tie it together. The API and the bytes on the wire
are those of yoton 2.2, so old and new peers interoperate.

Layers, each using only the one below: ``yoton.wire`` (framing, handshake,
codecs; no I/O) → ``yoton.transport`` (I/O thread, TCP connections) →
``yoton.context`` (routing) → ``yoton.channels`` (patterns).
"""

import logging as _logging

_logging.getLogger("yoton").addHandler(_logging.NullHandler())

from .errors import (  # noqa: E402
    CancelledError,
    ChannelClosedError,
    WouldBlock,
    RemoteError,
    TimeoutError,
    ConnectError,
    FlushTimeout,
    HandshakeError,
    AuthenticationError,
    TLSError,
    ProtocolError,
    YotonError,
)
from .events import (  # noqa: E402
    Signal,
    Timer,
    call_later,
    embed_event_loop,
    process_events,
    start_event_loop,
    stop_event_loop,
)
from .messages import BINARY, OBJECT, TEXT, MessageType  # noqa: E402
from .wire.frames import Package  # noqa: E402
from .wire.naming import UID  # noqa: E402
from .transport.connection import BindError, Connection, ConnectionCollection, TcpConnection  # noqa: E402
from .context import Context  # noqa: E402
from .channels import (  # noqa: E402
    BaseChannel, Future, PubChannel, RepChannel, ReqChannel, StateChannel, SubChannel, select_sub_channel,
)

from .sugar.clientserver import RequestServer, do_request  # noqa: E402
from .sugar.filewrapper import FileWrapper  # noqa: E402
from .sugar.simplesocket import SimpleSocket  # noqa: E402

__version__ = "3.0.0.dev0"

__all__ = [
    "YotonError", "ProtocolError", "HandshakeError", "ConnectError", "AuthenticationError", "TLSError", "BindError",
    "ChannelClosedError", "WouldBlock", "FlushTimeout", "RemoteError", "TimeoutError", "CancelledError",
    "Signal", "Timer", "call_later", "process_events", "start_event_loop",
    "stop_event_loop", "embed_event_loop",
    "MessageType", "TEXT", "BINARY", "OBJECT", "Package", "UID",
    "Connection", "TcpConnection", "ConnectionCollection", "Context",
    "BaseChannel", "PubChannel", "SubChannel", "StateChannel", "select_sub_channel",
    "ReqChannel", "RepChannel", "Future",
    "RequestServer", "do_request", "FileWrapper", "SimpleSocket",
]
