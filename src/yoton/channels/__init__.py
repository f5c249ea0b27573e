"""Channels: the messaging patterns built on a context.

Also reachable here, as in yoton 2.2: the message types (``TEXT``,
``BINARY``, ``OBJECT``, ``MessageType``), ``FileWrapper``, ``TimeoutError``
and ``CancelledError``; and 2.2's submodules ``channels_base``,
``channels_pubsub``, ``channels_reqrep``, ``channels_state``,
``channels_file`` and ``message_types`` (compatibility paths, in
``yoton/_compat22/channels/``).
"""

import os as _os
from typing import Any as _Any

from ..errors import CancelledError, TimeoutError  # noqa: F401 - (re-exported here, as in yoton 2.2)
from ..messages import BINARY, OBJECT, TEXT, MessageType  # noqa: F401 - (idem)
from .base import BaseChannel
from .pubsub import PubChannel, SubChannel, select_sub_channel
from .reqrep import Future, RepChannel, ReqChannel
from .state import StateChannel

# yoton 2.2's submodules of yoton.channels: found in _compat22/channels/.
__path__.append(_os.path.join(_os.path.dirname(_os.path.dirname(__file__)), "_compat22", "channels"))  # noqa: F821

__all__ = [
    "BaseChannel",
    "PubChannel",
    "SubChannel",
    "StateChannel",
    "select_sub_channel",
    "ReqChannel",
    "RepChannel",
    "Future",
]

_COMPAT22_MODULES = (
    "channels_base",
    "channels_pubsub",
    "channels_reqrep",
    "channels_state",
    "channels_file",
    "message_types",
)


def __getattr__(name: str) -> _Any:
    # FileWrapper (yoton.sugar) imports this package: imported here on first use, not above.
    if name == "FileWrapper":
        from ..sugar.filewrapper import FileWrapper

        return FileWrapper
    if name in _COMPAT22_MODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
