"""yoton 2.2's ``yoton.connection_itc`` (compatibility path): now ``yoton.transport.itc``.

2.2 declared an in-process connection class here but never implemented it.
Ours is real: ``context.bind("itc://NAME")`` / ``context.connect("itc://NAME")``
link contexts of one process without sockets, and return an
:class:`ItcConnection`.
"""

from yoton.transport.connection import Connection, ItcConnection

__all__ = ["Connection", "ItcConnection"]
