"""SimpleSocket: a context with one text channel each way, for quick two-party talk."""

from __future__ import annotations

from ..channels import PubChannel, SubChannel
from ..context import Context

__all__ = ["SimpleSocket"]


class SimpleSocket(Context):
    """A :class:`~yoton.Context` with :meth:`send` and :meth:`recv` for text.

    Bind one and connect another; what one sends, the other receives.
    """

    def __init__(self, verbose=False):
        super().__init__(verbose)
        self._pub = PubChannel(self, "simplesocket")
        self._sub = SubChannel(self, "simplesocket")

    def send(self, s: str) -> None:
        """Send a text message to the other end."""
        self._pub.send(s)

    def recv(self, block=None) -> str:
        """Receive a text message ('' if none; ``block`` as in SubChannel.recv, None means True)."""
        return self._sub.recv(True if block is None else block)
