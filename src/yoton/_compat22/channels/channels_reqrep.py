"""yoton 2.2's ``yoton.channels.channels_reqrep`` (compatibility path): now ``yoton.channels.reqrep``.

Left out: 2.2's replier thread class ``ThreadForReqChannel`` (internal).
"""

from yoton.channels.reqrep import ERROR_TAG as ERROR_OBJECT
from yoton.channels.reqrep import REF as REQREP_SEQ_REF
from yoton.channels.reqrep import Future, RepChannel, ReqChannel
from yoton.errors import CancelledError, TimeoutError

__all__ = ["ReqChannel", "RepChannel", "Future", "TimeoutError", "CancelledError", "REQREP_SEQ_REF", "ERROR_OBJECT"]
