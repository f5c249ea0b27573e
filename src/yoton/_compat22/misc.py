"""yoton 2.2's ``yoton.misc`` (compatibility path): names and ids, now in ``yoton.wire.naming``.

Also 2.2's Python 2/3 aliases (``str``, ``bytes``, ``basestring``, ``long``,
``xrange``, ``V2``) and ``getErrorMsg()``. 2.2's queue classes (``PackageQueue``,
``TinyPackageQueue``) were internals and have no counterpart.
"""

import builtins
import sys

from yoton.channels.reqrep import error_text
from yoton.wire.naming import UID, port_hash, slot_hash
from yoton.wire.naming import parse_address as split_address

__all__ = [
    "UID",
    "port_hash",
    "slot_hash",
    "split_address",
    "getErrorMsg",
    "str",
    "bytes",
    "basestring",
    "long",
    "xrange",
    "V2",
]

V2 = False  # (yoton 2.2 also ran on Python 2)
str = builtins.str  # noqa: A001
bytes = builtins.bytes  # noqa: A001
basestring = builtins.str
long = builtins.int
xrange = builtins.range


def getErrorMsg() -> str:  # noqa: N802 - yoton 2.2's name
    """Return the text for the exception being handled, as a yoton 2.2 replier sends it
    (message, newline, ``'line N of FILE.'``); '' outside an ``except`` block."""
    exc = sys.exc_info()[1]
    return "" if exc is None else error_text(exc)
