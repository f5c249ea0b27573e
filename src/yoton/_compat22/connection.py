"""yoton 2.2's ``yoton.connection`` (compatibility path): now ``yoton.transport.connection``.

The close reasons are the texts connections report in ``close_reason`` and
the ``closed`` signal. Left out: 2.2's status numbers (internal), its
handshake failure texts (failed handshakes report more specific reasons
here), and its never-implemented ``InterConnection`` / ``UDPConnection``.
"""

from yoton.transport.connection import (
    REASON_COMMAND as STOP_DEFAULT_REASON,
)
from yoton.transport.connection import (
    REASON_PROBLEM as STOP_UNSPECIFIED_PROBLEM,
)
from yoton.transport.connection import (
    TIMEOUT_MIN,
    Connection,
    ConnectionCollection,
)
from yoton.wire.protocol import REASON_PEER_CLOSED as STOP_CLOSED_FROM_THERE
from yoton.wire.protocol import REASON_SELF as STOP_HANDSHAKE_SELF

__all__ = [
    "Connection",
    "ConnectionCollection",
    "TIMEOUT_MIN",
    "STOP_DEFAULT_REASON",
    "STOP_UNSPECIFIED_PROBLEM",
    "STOP_CLOSED_FROM_THERE",
    "STOP_HANDSHAKE_SELF",
    "STOP_TIMEOUT",
]

STOP_TIMEOUT = "Connection timed out."  #: a reason for close(), for applications to use (as in 2.2)
