"""yoton 2.2's ``yoton.clientserver`` (compatibility path): now ``yoton.sugar.clientserver``.

Left out: 2.2's per-connection thread class ``SocketHandler`` (internal).
"""

from yoton.sugar.clientserver import NoServerError, RequestServer, do_request

__all__ = ["RequestServer", "do_request", "NoServerError"]
