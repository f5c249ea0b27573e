"""yoton 2.2's ``yoton.channels.channels_state`` (compatibility path): now ``yoton.channels.state``."""

from yoton.channels.state import StateChannel

__all__ = ["StateChannel"]
