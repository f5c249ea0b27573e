"""yoton 2.2's ``yoton.connection_tcp`` (compatibility path): now ``yoton.transport.connection``.

Left out: 2.2's I/O thread and handshaker classes, its socket buffer size
and its handshake / socket / thread failure texts (internals; failures report
more specific reasons here).
"""

from yoton.transport.connection import TIMEOUT_MIN, Connection, TcpConnection
from yoton.wire.protocol import REASON_EOF as STOP_EOF
from yoton.wire.protocol import REASON_PEER_CLOSED as STOP_CLOSED_FROM_THERE
from yoton.wire.protocol import REASON_SELF as STOP_HANDSHAKE_SELF

__all__ = [
    "TcpConnection",
    "Connection",
    "TIMEOUT_MIN",
    "STOP_EOF",
    "STOP_CLOSED_FROM_THERE",
    "STOP_HANDSHAKE_SELF",
    "STOP_LOST_TRACK",
]

STOP_LOST_TRACK = "Lost track of the stream."
