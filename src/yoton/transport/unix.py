"""The ``ipc://PATH`` transport: yoton over Unix domain sockets (Linux, macOS).

The stream transport of :mod:`.stream` -- the same handshake, auth_key
proofs, limits, flow control and reconnecting -- on an ``AF_UNIX`` stream
socket bound to a file. No TLS: the traffic never leaves the machine. It is
faster than TCP over the loopback (no TCP/IP stack).

Rules:

* The address is ``ipc://`` followed by the path, as given (``ipc:///tmp/app.sock``
  is absolute, ``ipc://app.sock`` relative to the working directory). Paths
  are limited by the system (about 100 bytes).
* **Who may connect** is decided by the file's permissions: connecting needs
  write permission on the socket file (and search permission on its
  directories). By default the file gets the usual mode for new files
  (``0o777`` less the umask: with umask 022 only its owner may connect);
  ``bind(..., mode=0o660)`` sets it (here: the owner's group too). With a
  mode, the socket is bound under a temporary name, given the mode and only
  then linked to the path, so the path never exists with looser permissions.
* **A socket file left behind** by a process that died is stale: a bind that
  finds one (nobody accepts a connection on it) removes it and binds. A file
  that is not a socket, or a socket someone listens on, is left alone and
  the bind fails with :class:`~yoton.errors.BindError`.
* The bind removes its socket file when it stops listening (``close()``, the
  context closing; with ``max_connections`` 1, once its peer is connected,
  as the port of a TCP bind is freed then), unless another file has taken
  the path meanwhile.
* On a platform without Unix sockets (Windows) bind and connect raise
  :class:`~yoton.errors.BindError` / :class:`~yoton.errors.ConnectError`
  saying so.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING

from ..errors import BindError, ConnectError
from .acceptor import check_max_connections
from .stream import LISTEN_BACKLOG, DialTarget, StreamLink, dial, listen

if TYPE_CHECKING:
    from .connection import Connection
    from .link import LinkOwner
    from .reconnect import ReconnectPolicy

log = logging.getLogger("yoton")

__all__ = ["open_bind", "open_connect", "AVAILABLE", "unix_path"]

_AF_UNIX: int = getattr(socket, "AF_UNIX", -1)
#: Whether this platform has Unix domain sockets for ipc:// addresses.
AVAILABLE = hasattr(socket, "AF_UNIX") and sys.platform != "win32"
_PATH_MAX = 104  # bytes (macOS; Linux allows 108)


def unix_path(address: str) -> str:
    """The path of an ``ipc://PATH`` address; ValueError if it has none."""
    if not isinstance(address, str):
        raise ValueError(f"Address should be a string, not {type(address).__name__}.")
    path = address.partition("://")[2]
    if not path:
        raise ValueError(f"an ipc:// address needs a path, like ipc:///tmp/app.sock (got {address!r})")
    if "\0" in path:
        raise ValueError(f"an ipc:// path cannot contain NUL (got {address!r})")
    return path


def _unavailable(what: str) -> str:
    return f"{what}: ipc:// addresses need Unix domain sockets (Linux, macOS); use tcp://localhost:0 on this platform"


def open_bind(
    owner: LinkOwner, handle: Connection, address: str, max_connections: int | None = 1, mode: int | None = None
) -> StreamLink:
    """Listen on the Unix socket of an ``ipc://PATH`` address; return the WAITING link.

    ``mode``: the socket file's permission bits (e.g. ``0o600``; default:
    what the umask leaves). Raises :class:`~yoton.errors.BindError` when the
    path is taken (by a live socket or another file) or cannot be bound.
    """
    path = unix_path(address)
    if not AVAILABLE:
        raise BindError(_unavailable(f"could not bind to {address!r}"))
    if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777):
        raise ValueError(f"mode must be permission bits from 0 to 0o777 (e.g. 0o600), not {mode!r}")
    max_connections = check_max_connections(max_connections)
    sock = _bind_unix(path, mode)
    try:
        inode = os.lstat(path).st_ino
    except OSError as exc:
        sock.close()
        raise BindError(f"could not bind to ipc://{path}: {exc}") from exc
    link = StreamLink(owner, handle)
    link.unix_path = path
    link.local_address = (path, 0)
    return listen(owner, link, sock, None, max_connections, f"ipc://{path}", lambda: _unlink_if_ours(path, inode))


def open_connect(
    owner: LinkOwner,
    handle: Connection,
    address: str,
    timeout: float = 1.0,
    reconnect: ReconnectPolicy | bool | None = None,
) -> StreamLink:
    """Connect to the bind at an ``ipc://PATH`` address; return the CONNECTED link
    (see :func:`~yoton.transport.stream.dial`: retried while the file is
    missing or nobody listens, until ``timeout``)."""
    path = unix_path(address)
    if not AVAILABLE:
        raise ConnectError(_unavailable(f"Could not connect to {address!r}"))
    link = StreamLink(owner, handle)
    link.unix_path = path
    try:
        return dial(owner, link, DialTarget(_AF_UNIX, path, f"ipc://{path}"), timeout, reconnect)
    except ConnectError as exc:
        if "EACCES" in str(exc) or "EPERM" in str(exc):
            raise type(exc)(f"{exc} The socket file's permissions decide who may connect.") from exc
        raise


def _bind_unix(path: str, mode: int | None) -> socket.socket:
    _clear_stale(path)
    sock = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    try:
        temporary = f"{path}.{os.urandom(4).hex()}"  # (not secrets: it loads OpenSSL's hashes, some MB)
        if len(os.fsencode(temporary)) >= _PATH_MAX:  # (no room for another name: bind the path itself)
            sock.bind(path)
            if mode is not None:
                os.chmod(path, mode)
            sock.listen(LISTEN_BACKLOG)
        else:
            # Bound under another name, given its mode, listening, and only then
            # linked to the path: nobody sees the path with looser permissions,
            # and no other bind's stale-file check finds it not yet listening
            # (it would remove it as a dead process's file).
            sock.bind(temporary)
            try:
                if mode is not None:
                    os.chmod(temporary, mode)
                sock.listen(LISTEN_BACKLOG)
                os.link(temporary, path)
            finally:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EADDRINUSE, errno.EEXIST):
            raise BindError(f"could not bind to ipc://{path}: the path is taken (another bind was first)") from exc
        raise BindError(f"could not bind to ipc://{path}: {exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on (left by a dead process); BindError
    if the path is another kind of file or someone listens there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"could not bind to ipc://{path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"could not bind to ipc://{path}: the path exists and is not a socket (left as it is)")
    probe = socket.socket(_AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:  # nobody listens: a dead process's file
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BindError(f"could not bind to ipc://{path}: cannot remove the stale socket file: {exc}") from exc
        log.info("yoton: removed the stale socket file %s (nobody listened on it)", path)
        return
    except FileNotFoundError:
        return
    except BlockingIOError:  # listening, its backlog full
        pass
    except OSError as exc:
        raise BindError(f"could not bind to ipc://{path}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise BindError(f"could not bind to ipc://{path}: another bind listens there")


def _unlink_if_ours(path: str, inode: int) -> None:
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
