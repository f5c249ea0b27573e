"""yoton 2.2's ``yoton.channels.channels_file`` (compatibility path): now ``yoton.sugar.filewrapper``."""

from yoton.channels.pubsub import PubChannel, SubChannel
from yoton.sugar.filewrapper import FileWrapper

__all__ = ["FileWrapper", "PubChannel", "SubChannel", "PY2"]

PY2 = False  # (yoton 2.2 also ran on Python 2)
