"""Connections: what the user holds for each link to another context.

A :class:`Connection` is the user's handle (yoton 2.2's class, made by
``Context.bind`` and ``Context.connect``): names, addresses, ids, the
``closed``, ``timedout``, ``reconnected`` and ``accepted`` signals,
``close()`` and ``flush()``. The work is done by the
:class:`~yoton.transport.link.Link` behind it (for TCP, TLS and Unix
sockets a :class:`~yoton.transport.stream.StreamLink`, in-process an
:class:`~yoton.transport.itc.ItcLink`); the handle forwards to it. Which
transport serves an address is decided by its scheme (:mod:`.schemes`).
States, closing and flow control are described in :mod:`.link`; binds that
take many peers in :mod:`.acceptor`; reconnecting in :mod:`.reconnect`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, SupportsIndex

from ..events import Signal
from . import schemes
from .link import (
    CONNECTED,
    NEW,
    REASON_COMMAND,
    REASON_CONTEXT,
    REASON_PROBLEM,
    RECONNECTING,
    TIMEOUT_MIN,
    WAITING,
    Link,
    LinkOwner,
    LinkState,
)

if TYPE_CHECKING:
    from ..context import Context

__all__ = [
    "Connection",
    "TcpConnection",
    "IpcConnection",
    "ItcConnection",
    "ConnectionCollection",
    "connection_class",
    "bind",
    "connect",
    "REASON_COMMAND",
    "REASON_PROBLEM",
    "REASON_CONTEXT",
    "TIMEOUT_MIN",
]


class ConnectionCollection(list):
    """A list of connections that can also be indexed by connection name."""

    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, str):
            for conn in self:
                if conn.name == key:
                    return conn
            raise KeyError(f"no connection named {key!r}")
        return list.__getitem__(self, key)

    def get(self, name: str, default: Any = None) -> Any:
        """Return the connection called ``name``, or ``default``."""
        for conn in self:
            if conn.name == name:
                return conn
        return default


class Connection:
    """One link between this context and another; the user-facing interface.

    Made by :meth:`Context.bind` and :meth:`Context.connect` (and by a bind
    with ``max_connections`` above 1 for each further peer); use it to read
    addresses and ids, to watch the :attr:`closed`, :attr:`timedout`,
    :attr:`reconnected` and :attr:`accepted` signals, and to :meth:`close`
    the link. A connection is used once (a reconnecting one re-dials its own
    peer, but is never bound or connected anew).
    """

    _bound = False  # made by a bind (see port)

    def __init__(self, context: Context, name: str = "") -> None:
        self._context = context
        self._name = str(name)
        self._closed_signal = Signal()
        self._timedout_signal = Signal()
        self._reconnected_signal = Signal()
        self._accepted_signal = Signal()
        self._timeout = TIMEOUT_MIN
        self._link: Link | None = None

    def _spawn(self) -> Connection:
        """A new handle like this one (same class, context, name, timeout), for
        another peer of this bind (the transport's acceptor calls it)."""
        other = type(self)(self._context, self._name)
        other._bound = True
        other._timeout = self._timeout
        return other

    def __repr__(self) -> str:
        host, port = self._local
        return f"<{type(self).__name__} {self._name!r} {self._state.value} {host}:{port}>"

    # -- the link behind --------------------------------------------------------------

    @property
    def _state(self) -> LinkState:
        link = self._link
        return NEW if link is None else link.state

    @property
    def _local(self) -> tuple:
        link = self._link
        return ("", 0) if link is None else link.local_address

    @property
    def _peer(self) -> tuple:
        link = self._link
        return ("", 0) if link is None or link.state is WAITING else link.peer_address

    # -- signals and properties -------------------------------------------

    @property
    def closed(self) -> Signal:
        """Signal emitted once when the connection closes: ``(connection, reason)``."""
        return self._closed_signal

    @property
    def timedout(self) -> Signal:
        """Signal ``(connection, True)`` after ``timeout`` s of silence, ``(connection, False)`` when data returns."""
        return self._timedout_signal

    @property
    def reconnected(self) -> Signal:
        """Signal ``(connection,)`` each time the connection is connected again
        after losing its peer: a ``connect(..., reconnect=...)`` that re-dialled,
        or, on a bind with ``max_connections`` above 1, a peer that re-dialled
        before the bind noticed the loss."""
        return self._reconnected_signal

    @property
    def accepted(self) -> Signal:
        """Signal ``(bind_connection, connection)`` emitted by the connection a
        ``bind()`` returned each time that bind admits a peer; ``connection`` is
        the peer's own (for the first peer, the bind's connection itself; with
        ``max_connections`` above 1, a new one for each further peer, also listed
        in ``context.connections``)."""
        return self._accepted_signal

    @property
    def name(self) -> str:
        """The name given at bind/connect; ``context.connections[name]`` finds it. Settable (a str)."""
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str):
            raise ValueError(f"a connection name must be a str, not {type(value).__name__}")
        self._name = value

    @property
    def timeout(self) -> float:
        """Seconds without incoming data before ``timedout`` fires (at least 0.5).

        Also how long a peer may take nothing while the send queue is full
        before the connection stops holding senders back (see the README's
        "Flow control").
        """
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        value = float(value)
        if not value >= 0:
            raise ValueError(f"timeout must be a non-negative number, not {value!r}")
        self._timeout = max(TIMEOUT_MIN, value)

    @property
    def is_alive(self) -> bool:
        """True while waiting for a peer, connected or reconnecting (not closing or closed)."""
        return self._state in (WAITING, CONNECTED, RECONNECTING)

    @property
    def is_reconnecting(self) -> bool:
        """True while the connection re-dials a lost peer (``connect(..., reconnect=...)``)."""
        return self._state is RECONNECTING

    @property
    def is_connected(self) -> bool:
        """True while connected to another context."""
        return self._state is CONNECTED

    @property
    def is_timedout(self) -> bool:
        """True while nothing has arrived from the peer for ``timeout`` seconds
        (between the ``timedout`` signal's True and False emissions)."""
        link = self._link
        return link is not None and link.is_timedout

    @property
    def is_waiting(self) -> bool:
        """True after ``bind()`` until a peer is accepted."""
        return self._state is WAITING

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed (None while open)."""
        link = self._link
        return None if link is None else link.close_reason

    @property
    def hostname1(self) -> str:
        """Host (IP) of this end (for ``ipc://`` the socket's path, for ``itc://`` the name)."""
        return self._local[0]

    @property
    def port1(self) -> int:
        """Port of this end; after ``bind()`` this is the port peers connect to (0 for ipc/itc)."""
        return self._local[1]

    @property
    def port(self) -> int:
        """The port of the address: for a bind, the local port it listens (or listened) on,
        also when ``max_tries`` had to move on from the first or the system chose
        it (port 0); for a connect, the port it connected to (0 for ipc/itc)."""
        return self._local[1] if self._bound else self._peer[1]

    @property
    def hostname2(self) -> str:
        """Host (IP) of the other end; '' when not connected (ipc/itc: the path or name)."""
        return self._peer[0]

    @property
    def port2(self) -> int:
        """Port of the other end; 0 when not connected."""
        return self._peer[1]

    @property
    def id1(self) -> int:
        """Id of the context at this end."""
        return self._context.id

    @property
    def id2(self) -> int:
        """Id of the context at the other end; 0 when not connected."""
        link = self._link
        return 0 if link is None else link.peer_id

    @property
    def pid1(self) -> int:
        """Process id at this end."""
        return os.getpid()

    @property
    def pid2(self) -> int:
        """Process id at the other end; 0 when not connected."""
        link = self._link
        return 0 if link is None else link.peer_pid

    def statistics(self) -> dict:
        """Figures of this connection: ``state``, ``peer`` (its id in hex),
        ``age`` (s), ``bytes_in``/``bytes_out``, ``packages_in``/``packages_out``
        (received; queued for the peer),
        ``queued_bytes``/``queued_packages`` (waiting to be written),
        ``discarded`` (by a stalled send queue), ``stalled``, ``timed_out``,
        ``reading_held`` (flow control holds reading) and ``reconnects``
        (how often it was connected again after losing its peer)."""
        link = self._link
        if link is None:
            return {"state": NEW.value}
        return link.statistics()

    # -- closing and flushing -----------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Close the connection, telling the other end; a waiting bind stops waiting.

        Queued packages and the close signal are flushed while the peer takes
        them; a peer that takes nothing for a second is dropped. On the
        connection a ``bind()`` returned, this also stops the bind listening
        (with ``max_connections`` above 1: also after its own peer left; the
        bind's other connections stay). A reconnecting connection stops
        re-dialling (what it had queued is discarded, counted).
        """
        link = self._link
        if link is None:
            self._close_unlinked(reason or REASON_COMMAND)
        else:
            link.stop_listening()
            link.request(link.begin_close, reason or REASON_COMMAND, wait=True)

    def close_on_problem(self, reason: str | None = None) -> None:
        """Drop the connection at once, without telling the other end."""
        link = self._link
        if link is None:
            self._close_unlinked(reason or REASON_PROBLEM)
        else:
            link.stop_listening()
            link.request(link.teardown, reason or REASON_PROBLEM, wait=True)

    def _close_unlinked(self, reason: str) -> None:
        # Never bound nor connected: closed all the same, once.
        if not getattr(self, "_closed_unlinked", False):
            self._closed_unlinked = True
            self._closed_signal.emit(self, reason)

    def flush(self, timeout: float = 3.0) -> None:
        """Wait until all queued packages are written; raise FlushTimeout after ``timeout`` s."""
        link = self._link
        if link is not None:
            link.owner.wait_flushed([link], timeout)


class TcpConnection(Connection):
    """A :class:`Connection` over TCP (or TLS, for ``tls://`` addresses)."""


class IpcConnection(Connection):
    """A :class:`Connection` over a Unix domain socket (``ipc://PATH`` addresses)."""


class ItcConnection(Connection):
    """A :class:`Connection` between two contexts of this process (``itc://NAME`` addresses)."""


def connection_class(address: str) -> type:
    """The :class:`Connection` class for ``address`` (by its scheme); ValueError for an unknown scheme."""
    return schemes.lookup(address).connection_class


def bind(router: LinkOwner, connection: Connection, address: str, **options: Any) -> None:
    """Make ``connection`` (new, made by the context) listen on ``address``
    through the transport of its scheme (see :mod:`.schemes`; ``options`` are
    that transport's: ``max_tries``, ``ssl_context``, ``max_connections``,
    ``mode``); ``router`` is the link owner."""
    connection._bound = True
    connection._link = schemes.open_bind(router, connection, address, **options)


def connect(router: LinkOwner, connection: Connection, address: str, timeout: float = 1.0, **options: Any) -> None:
    """Connect ``connection`` (new, made by the context) to ``address`` through
    the transport of its scheme (``options``: ``ssl_context``, ``reconnect``);
    ``router`` is the link owner."""
    connection._link = schemes.open_connect(router, connection, address, timeout, **options)
