"""The state pattern: one shared value per slot, kept in step across the network.

``send`` sets the state (only when it changes) and broadcasts it; any
arriving state replaces ours; ``recv`` returns the current state without
blocking. When a context joins the network (the ``NEW_CONNECTION`` context
message), every StateChannel re-sends its state so the newcomer learns it.
When a connection of ours re-dials its lost peer, the states our channels
set themselves (not those they learned) are re-sent before the context
announces itself again, so a peer that restarted learns them and answers
with its own.
If two channels set the state at about the same time, which one wins is not
defined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BaseChannel

if TYPE_CHECKING:
    from ..context import Context
    from ..messages import MessageType
    from ..wire.frames import Package

__all__ = ["StateChannel"]


class StateChannel(BaseChannel):
    """A value shared by all StateChannels on the same slot."""

    _pattern_out = "state"
    _pattern_in = "state"

    def __init__(
        self, context: Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        # (state first: packages may arrive on the loop side as soon as the base class registers us)
        self._state = b""  # encoded; b'' means no state yet
        self._own = False  # whether the state was set here (not learned from a peer)
        super().__init__(context, slot_base, message_type)

    def send(self, message: Any, block: bool | float = True) -> None:
        """Set the state and broadcast it, unless it equals the current state.

        Empty messages are ignored. ``block`` says how long to wait for room
        in the send queues, as for ``PubChannel.send``
        (:class:`~yoton.errors.WouldBlock` when it runs out). Raises
        ``ValueError`` for a message the type cannot encode or one over the
        context's ``max_package_size``, ``ChannelClosedError`` when closed;
        after any of these the state is unchanged.
        """
        if self._closed:
            self._send(message)  # raises ChannelClosedError
        body = self._message_type.message_to_bytes(message)
        if body and body != self._state:
            self._router.send(self._slot_out, body, block=block)  # raises before anything changes
            self._state = body
            self._own = True
            self._count_out += 1

    def recv(self, block: bool | float = False) -> Any:
        """Return the current state (never blocks; ``block`` is accepted for compatibility)."""
        state = self._state
        return self._message_type.message_from_bytes(state) if state else self._empty()

    def send_last(self) -> None:
        """Broadcast the current state again (nothing if there is none)."""
        if self._state and not self._closed:
            self._router.send(self._slot_out, self._state)

    def _receive(self, pkg: Package) -> None:
        self._state = bytes(pkg.data)
        self._own = False
        self._announce()

    def _peer_joined(self, rejoined: bool = False) -> None:
        if self._own or not rejoined:
            self.send_last()

    @property
    def pending(self) -> int:
        """1 if a state is known, else 0."""
        return 1 if self._state else 0
