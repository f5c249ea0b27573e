"""Names on the wire: port and slot hashes, addresses and context ids.

Rules (yoton 2.2's; docs/protocol.md sections 1, 2 and 5):

* Both hashes run the same loop over the characters of a name with the
  factor ``0xD2D84A61`` on unbounded Python integers. A port name maps into
  ``49152 + val % 2**14`` (the dynamic port range); a slot name maps into
  ``8 + val % (2**64 - 8)`` so slots 0-7 stay reserved.
* An address is ``[protocol://]host:port``. The protocol defaults to ``tcp``;
  ``localhost`` means ``127.0.0.1``; ``publichost[N]`` picks the N-th address
  of this machine; the port is an integer, a name, or ``name+offset``.
* A context id is 64 bits: a millisecond timestamp in the high half (strictly
  increasing within a process, never 0) and random bits in the low half.
"""

from __future__ import annotations

import os
import socket
import threading
import time

__all__ = ["port_hash", "slot_hash", "parse_address", "new_id", "UID"]

_FAC = 0xD2D84A61
_PORT_BASE = 49152
_PORT_SPAN = 2**14
_SLOT_BASE = 8
_SLOT_SPAN = 2**64 - 8
_MAX_PORT = 2**16


def _name_value(name: str) -> int:
    """Run the shared hash loop of port and slot names over ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"names to hash must be str, not {type(name).__name__}")
    val = 0
    for c in name:
        val += (val >> 3) + ord(c) * _FAC
    return val + (val >> 3) + len(name) * _FAC


def port_hash(name: str) -> int:
    """Map a port name to a port number in the range [49152, 65536)."""
    return _PORT_BASE + _name_value(name) % _PORT_SPAN


def slot_hash(name: str) -> int:
    """Map a slot name to a 64-bit slot number of at least 8.

    The string is hashed exactly as given; callers strip and lower-case it
    first so that slot names are case-insensitive.
    """
    return _SLOT_BASE + _name_value(name) % _SLOT_SPAN


def _public_host(index: int) -> str:
    """Return the ``index``-th IPv4 address this machine's hostname resolves to."""
    addresses = socket.gethostbyname_ex(socket.gethostname())[2]
    if index >= len(addresses):
        raise ValueError(
            f"Invalid index ({index}) in public host addresses: "
            f"this machine has {len(addresses)} ({', '.join(addresses)})."
        )
    return addresses[index]


def _parse_port(text: str) -> int:
    """Turn the port part of an address into a port number (not range-checked)."""
    try:
        return int(text)
    except ValueError:
        pass
    name, plus, offset = text.partition("+")
    if not plus:
        return port_hash(name)
    try:
        return port_hash(name) + int(offset)
    except ValueError:
        raise ValueError(f"Invalid offset {offset!r} in address port {text!r}.") from None


def parse_address(address: object) -> tuple[str, str, int]:
    """Split ``[protocol://]host:port`` into ``(protocol, host, port)``.

    The protocol is lower-cased and defaults to ``'tcp'``; other protocols
    are returned unchanged for the caller to accept or refuse. ``localhost``
    (any case) becomes ``'127.0.0.1'`` and ``publichost``/``publichostN``
    the N-th address of this machine. The port may be an integer, a name
    (hashed with :func:`port_hash`) or ``name+offset``. Raises ValueError
    for a malformed address or a port outside [0, 2**16).
    """
    if not isinstance(address, str):
        raise ValueError(f"Address should be a string, not {type(address).__name__}.")
    protocol = "tcp"
    rest = address
    if "://" in address:
        protocol, _, rest = address.partition("://")
        protocol = protocol.strip().lower()
        if "://" in rest:
            raise ValueError(f"Address {address!r} has more than one protocol prefix.")
        if not protocol:
            raise ValueError(f"Address {address!r} has an empty protocol.")
    host, colon, port_text = rest.partition(":")
    if not colon:
        raise ValueError(f"Address should be in format 'host:port', got {address!r}.")

    lower = host.lower()
    if lower == "localhost":
        host = "127.0.0.1"
    elif lower.startswith("publichost") and (lower[10:] == "" or lower[10:].isdigit()):
        host = _public_host(int(lower[10:] or 0))

    port = _parse_port(port_text)
    if not 0 <= port < _MAX_PORT:
        raise ValueError(f"The port must be in the range [0, 2^16>, got {port} from {address!r}.")
    return protocol, host, port


# -- context ids ------------------------------------------------------------

_id_lock = threading.Lock()
_last_stamp = 0


def new_id() -> int:
    """Return a new 64-bit context id, unique within this process.

    High 32 bits: millisecond clock, bumped so that it strictly increases
    from one call to the next and is never 0. Low 32 bits: random.
    """
    global _last_stamp
    noise = int.from_bytes(os.urandom(4), "little")
    with _id_lock:
        stamp = int(time.time() * 1000) & 0xFFFFFFFF
        if stamp <= _last_stamp:
            stamp = _last_stamp + 1
        stamp &= 0xFFFFFFFF
        if stamp == 0:
            stamp = 1
        _last_stamp = stamp
    return (stamp << 32) | noise


class UID:
    """A 64-bit context id with the renderings yoton uses.

    ``UID()`` makes a new id (:func:`yoton.wire.naming.new_id`: 32 bits of
    time and 32 of randomness); ``UID(n)`` wraps the
    integer ``n``. Two UIDs are equal when their values are.
    """

    __slots__ = ("_value",)

    def __init__(self, id: int | None = None):
        if id is None:
            id = new_id()
        elif isinstance(id, UID):
            id = id._value
        elif not isinstance(id, int) or isinstance(id, bool):
            raise TypeError(f"UID value must be an int, not {type(id).__name__}")
        elif not 0 <= id < 2**64:
            raise ValueError(f"UID value must fit in 64 unsigned bits, got {id}")
        self._value = int(id)

    def get_int(self) -> int:
        """Return the id as an integer."""
        return self._value

    def get_hex(self) -> str:
        """Return the id as 16 lower-case hex digits."""
        return format(self._value, "016x")

    def get_bytes(self) -> bytes:
        """Return the id as 8 bytes, little-endian."""
        return self._value.to_bytes(8, "little")

    def __int__(self) -> int:
        return self._value

    def __repr__(self) -> str:
        h = self.get_hex()
        return f"<UID {h[:8]}-{h[8:]}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, UID):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)
