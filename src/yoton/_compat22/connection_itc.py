"""yoton 2.2's ``yoton.connection_itc`` (compatibility path).

2.2 declared an in-process connection class here but never implemented it;
so neither does this project. Contexts in one process connect over TCP.
"""

from yoton.transport.connection import Connection

__all__ = ["Connection", "ItcConnection"]


class ItcConnection(Connection):
    """Not implemented (neither was it in yoton 2.2): connect contexts over TCP instead."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("yoton has no in-process connection; bind and connect over TCP")
