"""Connections: what the user holds for each link to another context.

A :class:`Connection` is the user's handle (yoton 2.2's class, made by
``Context.bind`` and ``Context.connect``): names, addresses, ids, the
``closed`` and ``timedout`` signals, ``close()`` and ``flush()``. The work is
done by the :class:`~yoton.transport.link.Link` behind it (for TCP and TLS a
:class:`~yoton.transport.stream.StreamLink`); the handle forwards to it.
States, closing and flow control are described in :mod:`.link`.
"""

from __future__ import annotations

import os

from ..events import Signal
from .link import CONNECTED, NEW, REASON_COMMAND, REASON_CONTEXT, REASON_PROBLEM, TIMEOUT_MIN, WAITING, Link
from .stream import open_bind, open_connect

__all__ = [
    "Connection",
    "TcpConnection",
    "ConnectionCollection",
    "bind",
    "connect",
    "is_nats_address",
    "REASON_COMMAND",
    "REASON_PROBLEM",
    "REASON_CONTEXT",
    "TIMEOUT_MIN",
]


class ConnectionCollection(list):
    """A list of connections that can also be indexed by connection name."""

    def __getitem__(self, key):
        if isinstance(key, str):
            for conn in self:
                if conn.name == key:
                    return conn
            raise KeyError(f"no connection named {key!r}")
        return list.__getitem__(self, key)

    def get(self, name, default=None):
        """Return the connection called ``name``, or ``default``."""
        for conn in self:
            if conn.name == name:
                return conn
        return default


class Connection:
    """One link between this context and another; the user-facing interface.

    Made by :meth:`Context.bind` and :meth:`Context.connect`; use it to read
    addresses and ids, to watch the :attr:`closed` and :attr:`timedout`
    signals, and to :meth:`close` the link. A connection is used once.
    """

    _bound = False  # made by a bind (see port)

    def __init__(self, context, name: str = ""):
        self._context = context
        self._name = str(name)
        self._closed_signal = Signal()
        self._timedout_signal = Signal()
        self._timeout = TIMEOUT_MIN
        self._link: Link | None = None

    def __repr__(self):
        host, port = self._local
        return f"<{type(self).__name__} {self._name!r} {self._state.value} {host}:{port}>"

    # -- the link behind --------------------------------------------------------------

    @property
    def _state(self):
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
        """True while waiting for a peer or connected (not closing or closed)."""
        return self._state in (WAITING, CONNECTED)

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
        """Host (IP) of this end."""
        return self._local[0]

    @property
    def port1(self) -> int:
        """Port of this end; after ``bind()`` this is the port peers connect to."""
        return self._local[1]

    @property
    def port(self) -> int:
        """The port of the address: for a bind, the local port it listens (or listened) on,
        also when ``max_tries`` had to move on from the first; for a connect, the
        port it connected to."""
        return self._local[1] if self._bound else self._peer[1]

    @property
    def hostname2(self) -> str:
        """Host (IP) of the other end; '' when not connected."""
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
        ``age`` (s), ``bytes_in``/``bytes_out``, ``packages_in``,
        ``queued_bytes``/``queued_packages`` (waiting to be written),
        ``discarded`` (by a stalled send queue), ``stalled``, ``timed_out``
        and ``reading_held`` (flow control holds reading)."""
        link = self._link
        if link is None:
            return {"state": NEW.value}
        return link.statistics()

    # -- closing and flushing -----------------------------------------------------------

    def close(self, reason: str | None = None) -> None:
        """Close the connection, telling the other end; a waiting bind stops waiting.

        Queued packages and the close signal are flushed while the peer takes
        them; a peer that takes nothing for a second is dropped.
        """
        link = self._link
        if link is None:
            self._close_unlinked(reason or REASON_COMMAND)
        else:
            link.request(link.begin_close, reason or REASON_COMMAND, wait=True)

    def close_on_problem(self, reason: str | None = None) -> None:
        """Drop the connection at once, without telling the other end."""
        link = self._link
        if link is None:
            self._close_unlinked(reason or REASON_PROBLEM)
        else:
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


def is_nats_address(address) -> bool:
    """Whether ``address`` names NATS servers (``nats://...``: see :mod:`yoton.transport.nats`)."""
    return isinstance(address, str) and address.lstrip().lower().startswith("nats://")


def bind(router, connection: Connection, address: str, max_tries: int = 1, ssl_context=None) -> None:
    """Make ``connection`` (new, made by the context) listen on ``address`` (see
    :func:`~yoton.transport.stream.open_bind`); ``router`` is the link owner."""
    connection._bound = True
    connection._link = open_bind(router, connection, address, max_tries, ssl_context)


def connect(router, connection: Connection, address: str, timeout: float = 1.0, ssl_context=None) -> None:
    """Connect ``connection`` (new, made by the context) to ``address`` (see
    :func:`~yoton.transport.stream.open_connect`); ``router`` is the link owner."""
    connection._link = open_connect(router, connection, address, timeout, ssl_context)
