"""What a bind does with the peers that come: one bind, one or many peers.

An :class:`Acceptor` is the transport-neutral part of a bind; each transport
subclasses it with what listens (a socket for TCP, TLS and Unix sockets, a
name in the process for in-process links). Rules, for every transport:

* ``bind()`` makes the *first* link, WAITING; the first peer whose handshake
  succeeds is adopted by it (yoton 2.2's one bind, one peer).
* ``max_connections`` (default 1) is how many peers the bind serves at a
  time; ``None`` is no limit. With 1 the bind stops listening once its peer
  is connected, as in yoton 2.2. With more, it keeps listening: each further
  peer gets a new link with its own :class:`~yoton.Connection` (made like the
  first: same context, name and timeout), and a peer that comes while the
  bind is full is refused at its hello with ``ERROR: this bind takes no more
  peers (max_connections=N).``; it is served again once a peer leaves.
* Every admitted peer is announced on the first connection's ``accepted``
  signal, ``(first connection, connection of the peer)`` -- for the first
  peer both are the same connection.
* A peer that dials in again while its old link on this bind still looks
  connected (a connection that re-dials after a network cut, see
  :class:`~yoton.transport.reconnect.ReconnectPolicy`; the same context id)
  is taken by that link (where the transport can move a link to a new
  stream) if nothing has come on the old link for ``RESUME_SILENCE`` s (four
  heartbeats missed: its stream is dead): the connection stays the same,
  its queued packages go to the new stream, and its ``reconnected`` signal
  fires. It needs no free place. While the old link still hears from its
  peer, the same id dialling in is a second connection of that context and
  is admitted like any peer: a live link is never taken over (the id in a
  hello proves nothing).
* The bind listens until ``close()`` is called on the first connection
  (also after that connection's own peer left), or the context closes.

Everything here runs on the loop side, except :meth:`request_close`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from .link import CONNECTED, HEARTBEAT_INTERVAL, WAITING, Link

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("yoton")

__all__ = ["Acceptor", "check_max_connections", "RESUME_SILENCE"]

#: How long a link must have heard nothing before a hello with its peer's id
#: is taken as that peer re-dialling (see the module docstring).
RESUME_SILENCE = 4 * HEARTBEAT_INTERVAL


def check_max_connections(value: object) -> int | None:
    """``max_connections`` as given to bind(): a positive int, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_connections must be a positive int or None (no limit), not {value!r}")
    return value


class Acceptor:
    """The peers of one bind (see the module docstring); transports subclass it."""

    #: Whether a link of this transport can move to a new stream (a peer's re-dial).
    resumable = False

    def __init__(self, first: Link, max_connections: int | None):
        self.first = first
        self.owner = first.owner
        self.max_connections = max_connections
        self.links: list = []  # admitted links not closed yet, the first one included
        self.closed = False
        first.acceptor = self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.first.handle.name!r}, {len(self.links)} peer(s)>"

    # -- deciding --------------------------------------------------------------------

    def redialled(self, peer_id: int) -> Link | None:
        """The connected link of ours whose peer is ``peer_id`` and whose stream
        has gone silent (that peer dials in again), if any."""
        if not self.resumable or not peer_id:
            return None
        now = time.monotonic()
        for link in self.links:
            if link.peer_id != peer_id or link.state is not CONNECTED or link.read_holds:
                continue  # (held: we are not reading, so its silence says nothing)
            if now - link.last_recv >= RESUME_SILENCE:
                return link
        return None

    def refusal(self, peer_id: int) -> str | None:
        """Why a peer with ``peer_id`` cannot be admitted now (None: it can)."""
        if self.closed:
            return "this bind is closed"
        if self.first.state is WAITING or self.redialled(peer_id) is not None:
            return None
        if self.max_connections is not None and len(self.links) >= self.max_connections:
            return f"this bind takes no more peers (max_connections={self.max_connections})"
        return None

    def admit(self, peer_id: int, make_link: Callable[[Connection], Link]) -> tuple:
        """Place a peer whose handshake succeeded: ``("resume", link)`` (its old
        link takes it), ``("first", link)``, ``("new", link)`` (``make_link(handle)``
        made it, NEW) or ``("refused", reason)``."""
        link = self.redialled(peer_id)
        if link is not None:
            return "resume", link
        reason = self.refusal(peer_id)
        if reason is not None:
            return "refused", reason
        if self.first.state is WAITING:
            kind, link = "first", self.first
        else:
            handle = self.first.handle._spawn()
            kind, link = "new", make_link(handle)
            handle._link = link
            link.acceptor = self
        self.links.append(link)
        return kind, link

    def admitted(self, link: Link) -> None:
        """``link`` (from :meth:`admit`) is connected and established: announce it;
        with ``max_connections`` 1 the bind stops listening (yoton 2.2)."""
        if self.max_connections == 1:
            self.close()
        first = self.first.handle
        first.accepted.emit(first, link.handle)

    def forget(self, link: Link) -> None:
        """``link`` closed: its place is free again (any thread)."""
        try:
            self.links.remove(link)
        except ValueError:  # (not admitted, or forgotten already)
            pass

    # -- closing -------------------------------------------------------------------------

    def request_close(self) -> None:
        """Stop listening (any thread)."""
        loop = self.first.loop
        if loop is not None and loop.running and not loop.on_loop_side():
            loop.call_soon(self.close)
        else:
            self.close()

    def close(self) -> None:
        """Stop listening (loop side, or before the loop started); links stay."""
        if self.closed:
            return
        self.closed = True
        try:
            self.stop()
        finally:
            self.owner.listener_closed(self)

    def stop(self) -> None:
        """What the transport does to stop listening (once)."""
        raise NotImplementedError
