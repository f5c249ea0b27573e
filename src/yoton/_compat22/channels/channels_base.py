"""yoton 2.2's ``yoton.channels.channels_base`` (compatibility path): now ``yoton.channels.base``."""

from yoton.channels.base import BaseChannel

__all__ = ["BaseChannel"]
