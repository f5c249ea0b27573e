"""yoton 2.2's ``yoton.channels.channels_pubsub`` (compatibility path): now ``yoton.channels.pubsub``.

Left out: 2.2's sync-mode status numbers ``QUEUE_*`` (internal).
"""

from yoton.channels.pubsub import PubChannel, SubChannel, select_sub_channel

__all__ = ["PubChannel", "SubChannel", "select_sub_channel"]
