"""SimpleSocket: a context with one text channel each way, for quick two-party talk.

Its channels are on yoton 2.2's slot (``'text'``), so a SimpleSocket here and
one of yoton 2.2 talk to each other.
"""

from __future__ import annotations

from ..channels import PubChannel, SubChannel
from ..context import Context

__all__ = ["SimpleSocket"]


class SimpleSocket(Context):
    """A :class:`~yoton.Context` with :meth:`send` and :meth:`recv` for text.

    Bind one and connect another; what one sends, the other receives, one
    message per :meth:`recv`. ``verbose`` is the context's (see :class:`~yoton.Context`).
    """

    def __init__(self, verbose: bool | int = False) -> None:
        super().__init__(verbose)
        self._pub = PubChannel(self, "text")
        self._sub = SubChannel(self, "text")

    def send(self, s: str) -> None:
        """Send a text message to the other end."""
        self._pub.send(s)

    def recv(self, block: bool | float | None = None) -> str:
        """Receive a text message, or '' if none (or closed and drained).

        ``block`` as in ``SubChannel.recv``: None (the default, as in yoton
        2.2) or False returns at once, True waits for a message, a number
        waits at most that many seconds.
        """
        return self._sub.recv(block)
