"""yoton 2.2's ``yoton.channels.message_types`` (compatibility path): now ``yoton.messages``.

Left out: 2.2's OBJECT codec classes (``Packer``, ``Unpacker``; the codec is
``yoton.wire.codec``) and ``STDINENC`` (TEXT reads bytes with the stdin
encoding at the time).
"""

from yoton.messages import (
    BINARY,
    OBJECT,
    TEXT,
    BinaryMessageType,
    MessageType,
    ObjectMessageType,
    TextMessageType,
)

__all__ = ["MessageType", "TextMessageType", "BinaryMessageType", "ObjectMessageType", "TEXT", "BINARY", "OBJECT"]
