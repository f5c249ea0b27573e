"""yoton 2.2's ``yoton.core`` (compatibility path): the package and its header, now in ``yoton.wire.frames``.

Left out: 2.2's socket helpers and buffer sizes (internals of its I/O threads).
"""

from yoton.wire.frames import CONTROL as CONTROL_BYTES
from yoton.wire.frames import HEADER_SIZE, SIGNAL_CLOSE, SIGNAL_HEARTBEAT, SLOT_CONTEXT, SLOT_DUMMY, Package

__all__ = [
    "Package",
    "HEADER_FORMAT",
    "HEADER_SIZE",
    "CONTROL_BYTES",
    "SLOT_CONTEXT",
    "SLOT_DUMMY",
    "PACKAGE_HEARTBEAT",
    "PACKAGE_CLOSE",
]

HEADER_FORMAT = "<7Q"
PACKAGE_HEARTBEAT = Package(b"", SLOT_DUMMY, 0, SIGNAL_HEARTBEAT, 0, 0, 0)
PACKAGE_CLOSE = Package(b"", SLOT_DUMMY, 0, SIGNAL_CLOSE, 0, 0, 0)
