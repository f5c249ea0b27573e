"""Message types: how a channel turns messages into package bodies and back.

A message type has a short name that becomes part of a channel's slot name
(``slot_base.NAME.pattern``), so channels only talk to channels of the same
type. The built-in types (those of yoton 2.2):

* :data:`TEXT` (``'txt'``): str <-> UTF-8. Bytes given to it are read as
  UTF-8, else in the stdin encoding, else as their ``repr``.
* :data:`BINARY` (``'bin'``): bytes passed through unchanged.
* :data:`OBJECT` (``'obj'``): plain Python values in the tagged format of
  :mod:`yoton.wire.codec`.

User types subclass :class:`MessageType` and override its three methods.
"""

from __future__ import annotations

import sys
from typing import Any, Union

from .wire.codec import decode_object, encode_object

__all__ = [
    "MessageType",
    "TextMessageType",
    "BinaryMessageType",
    "ObjectMessageType",
    "TEXT",
    "BINARY",
    "OBJECT",
    "as_message_type",
]

_BYTES_LIKE = (bytes, bytearray, memoryview)
BytesLike = Union[bytes, bytearray, memoryview]  #: what message_from_bytes is given


class MessageType:
    """Base class for message types; subclass it to send your own kind of messages.

    Override :meth:`message_type_name`, :meth:`message_to_bytes` and
    :meth:`message_from_bytes`. :meth:`empty_message` is what a channel
    returns when there is nothing to receive.
    """

    def message_type_name(self) -> str:
        """Return the short name of this type, used in slot names (e.g. ``'txt'``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement message_type_name()")

    def message_to_bytes(self, message: Any) -> bytes:
        """Convert a message to the bytes sent over the wire; ValueError if it is not valid."""
        raise NotImplementedError(f"{type(self).__name__} must implement message_to_bytes()")

    def message_from_bytes(self, data: BytesLike) -> Any:
        """Convert received bytes (bytes, bytearray or memoryview) back into a message."""
        raise NotImplementedError(f"{type(self).__name__} must implement message_from_bytes()")

    def empty_message(self) -> Any:
        """Return the message standing for "nothing"; by default the decoding of ``b''``."""
        return self.message_from_bytes(b"")

    def __repr__(self) -> str:
        try:
            name = self.message_type_name()
        except NotImplementedError:
            name = "?"
        return f"<{type(self).__name__} {name!r}>"


def _bytes_to_text(data: BytesLike) -> str:
    """Read bytes as text: UTF-8, else the stdin encoding, else their repr."""
    data = bytes(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    encoding = getattr(sys.stdin, "encoding", None)
    if encoding:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    return repr(data)


class TextMessageType(MessageType):
    """Messages are str, sent as UTF-8."""

    def message_type_name(self) -> str:
        """Return ``'txt'``."""
        return "txt"

    def message_to_bytes(self, message: Any) -> bytes:
        """Encode a str as UTF-8 (bytes input is first read as text); else ValueError."""
        if isinstance(message, str):
            try:
                return message.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"TEXT message cannot be encoded as UTF-8: {e}") from None
        if isinstance(message, _BYTES_LIKE):
            return _bytes_to_text(message).encode("utf-8")
        raise ValueError(f"TEXT messages must be str, not {type(message).__name__}")

    def message_from_bytes(self, data: BytesLike) -> str:
        """Decode UTF-8 bytes to str; invalid sequences become U+FFFD."""
        return str(data, "utf-8", "replace")

    def empty_message(self) -> str:
        """Return ``''``."""
        return ""


class BinaryMessageType(MessageType):
    """Messages are bytes, sent unchanged."""

    def message_type_name(self) -> str:
        """Return ``'bin'``."""
        return "bin"

    def message_to_bytes(self, message: Any) -> bytes:
        """Return the message as bytes (bytearray and memoryview are copied); else ValueError."""
        if type(message) is bytes:
            return message
        if isinstance(message, _BYTES_LIKE):
            return bytes(message)
        raise ValueError(f"BINARY messages must be bytes, not {type(message).__name__}")

    def message_from_bytes(self, data: BytesLike) -> bytes:
        """Return the received data as bytes."""
        return data if type(data) is bytes else bytes(data)

    def empty_message(self) -> bytes:
        """Return ``b''``."""
        return b""


class ObjectMessageType(MessageType):
    """Messages are plain Python values (None, bool, int, float, str, list, tuple, dict)."""

    def message_type_name(self) -> str:
        """Return ``'obj'``."""
        return "obj"

    def message_to_bytes(self, message: Any) -> bytes:
        """Encode a value with the OBJECT codec; ValueError for what it cannot encode."""
        return encode_object(message)

    def message_from_bytes(self, data: BytesLike) -> Any:
        """Decode a value with the OBJECT codec (empty data gives None); ValueError if malformed."""
        return decode_object(data)

    def empty_message(self) -> None:
        """Return None."""
        return None


TEXT = TextMessageType()
"""Message type for str messages (``'txt'``)."""

BINARY = BinaryMessageType()
"""Message type for bytes messages (``'bin'``)."""

OBJECT = ObjectMessageType()
"""Message type for plain Python values (``'obj'``)."""


def as_message_type(obj: object) -> MessageType:
    """Return a MessageType for ``obj``: an instance as is, a subclass instantiated, None as TEXT."""
    if obj is None:
        return TEXT
    if isinstance(obj, MessageType):
        return obj
    if isinstance(obj, type) and issubclass(obj, MessageType):
        return obj()
    raise ValueError(f"message_type must be a MessageType instance or subclass, not {obj!r}")
