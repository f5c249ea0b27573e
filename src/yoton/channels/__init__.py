"""Channels: the messaging patterns built on a context."""

from .base import BaseChannel
from .pubsub import PubChannel, SubChannel, select_sub_channel
from .reqrep import Future, RepChannel, ReqChannel
from .state import StateChannel

__all__ = ["BaseChannel", "PubChannel", "SubChannel", "StateChannel", "select_sub_channel",
           "ReqChannel", "RepChannel", "Future"]
