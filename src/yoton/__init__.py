"""yoton: let Python processes talk to each other.

A :class:`Context` is a node; contexts ``bind`` and ``connect`` (over TCP,
TLS, Unix sockets, or within the process) and form a network. Channels
attached to a context send and receive on named slots: publish/subscribe
(:class:`PubChannel`, :class:`SubChannel`), request/reply and shared state
(:class:`StateChannel`). Signals, timers and an embeddable event loop tie it
together. The API and the bytes on the wire are those of yoton 2.2, so old
and new peers interoperate.

Layers, each using only the one below: ``yoton.wire`` (framing, handshake,
codecs; no I/O) -> ``yoton.transport`` (I/O thread, connections; the
transport is chosen by the address's scheme, ``yoton.transport.schemes``)
-> ``yoton.context`` (routing) -> ``yoton.channels`` (patterns).

Diagnostics go to the :mod:`logging` logger ``"yoton"``. yoton adds no
handler to it: when the application configured no logging at all, Python's
handler of last resort prints warnings and errors (a signal handler or a
replier that raised) on stderr; configured logging takes them instead.

yoton 2.2's module paths (``yoton.clientserver``, ``yoton.misc``,
``yoton.core``, ``yoton.connection``, ``yoton.connection_tcp``,
``yoton.connection_itc``, ``yoton.channels.channels_*``,
``yoton.channels.message_types``) still import: they are thin modules that
re-export what 2.2 had there, kept apart in ``yoton/_compat22/``.
"""

# This file is also read by interpreters too old for yoton (pyzo may start a
# kernel in any Python): keep it plain enough for them to reach this check.
import sys as _sys

if _sys.version_info < (3, 8):
    raise ImportError(
        "yoton needs Python 3.8 or newer; this is Python %d.%d (%s)"
        % (_sys.version_info[0], _sys.version_info[1], _sys.executable)
    )

import os as _os  # noqa: E402
import typing as _typing  # noqa: E402, F401 - (for the type comment of __getattr__: this file must parse in Python 2)

# yoton 2.2's module paths: found in _compat22/ (see the module docstring).
__path__.append(_os.path.join(_os.path.dirname(__file__), "_compat22"))  # noqa: F821

from .errors import (  # noqa: E402
    AuthenticationError,
    BindError,
    CancelledError,
    ChannelClosedError,
    ConnectError,
    ConnectHandshakeError,
    FlushTimeout,
    HandshakeError,
    NoServerError,
    ProtocolError,
    RemoteError,
    TimeoutError,
    TLSError,
    WouldBlock,
    YotonError,
)
from .events import (  # noqa: E402
    Signal,
    YotonApplication,
    app,
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
from .transport.connection import (  # noqa: E402
    Connection,
    ConnectionCollection,
    IpcConnection,
    ItcConnection,
    TcpConnection,
)
from .transport.reconnect import ReconnectPolicy  # noqa: E402
from .context import Context  # noqa: E402
from .channels import (  # noqa: E402
    BaseChannel,
    Future,
    PubChannel,
    RepChannel,
    ReqChannel,
    StateChannel,
    SubChannel,
    select_sub_channel,
)

from .sugar.clientserver import RequestServer, do_request  # noqa: E402
from .sugar.filewrapper import FileWrapper  # noqa: E402
from .sugar.simplesocket import SimpleSocket  # noqa: E402

__version__ = "3.0.0.dev0"

__all__ = [
    "YotonError",
    "ProtocolError",
    "HandshakeError",
    "ConnectError",
    "ConnectHandshakeError",
    "AuthenticationError",
    "TLSError",
    "BindError",
    "ChannelClosedError",
    "WouldBlock",
    "FlushTimeout",
    "RemoteError",
    "TimeoutError",
    "CancelledError",
    "Signal",
    "Timer",
    "call_later",
    "process_events",
    "start_event_loop",
    "stop_event_loop",
    "embed_event_loop",
    "app",
    "YotonApplication",
    "MessageType",
    "TEXT",
    "BINARY",
    "OBJECT",
    "Package",
    "UID",
    "Connection",
    "TcpConnection",
    "IpcConnection",
    "ItcConnection",
    "ConnectionCollection",
    "ReconnectPolicy",
    "Context",
    "BaseChannel",
    "PubChannel",
    "SubChannel",
    "StateChannel",
    "select_sub_channel",
    "ReqChannel",
    "RepChannel",
    "Future",
    "RequestServer",
    "do_request",
    "NoServerError",
    "FileWrapper",
    "SimpleSocket",
]

# yoton 2.2 imported these submodules in ``import yoton`` (and had the channel
# modules and the str / bytes types in its namespace too): reached as
# attributes, they are imported on first use.
_COMPAT22_MODULES = ("clientserver", "misc", "core", "connection", "connection_tcp", "connection_itc")
_COMPAT22_CHANNEL_MODULES = (
    "channels_base",
    "channels_pubsub",
    "channels_reqrep",
    "channels_state",
    "channels_file",
    "message_types",
)


def __getattr__(name):  # type: (str) -> _typing.Any
    if name in _COMPAT22_MODULES or name in _COMPAT22_CHANNEL_MODULES:
        import importlib

        package = __name__ if name in _COMPAT22_MODULES else __name__ + ".channels"
        return importlib.import_module(package + "." + name)
    if name in ("str", "bytes"):
        import builtins

        return getattr(builtins, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
