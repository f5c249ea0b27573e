"""Introspection: what a running yoton network looks like, asked over the network itself.

A context made with ``Context(introspect=True)`` answers statistics queries:
a :class:`Monitor` on any context of the network broadcasts a query, and
every introspecting context that it reaches answers with a snapshot of
itself (:func:`snapshot`: its id, process, connections and channels with
their counters). ``yoton monitor`` shows them live.

Why scatter/gather on two reserved slots (docs/protocol.md, section 6.9)
rather than a request/reply slot per context: one query floods the whole
network as any broadcast does, so the monitor needs to know nothing of its
shape, and it costs one package per context however many there are; the
answers are addressed to the monitor, so other contexts only forward them.
Contexts that do not introspect (yoton 2.2 ones included) forward both and
deliver neither. Slots below 8 never collide with a channel's (slot hashes
start at 8). Where an ``auth_key`` is set only authenticated peers are in
the network, and so only they can ask.

Limits: a context answers at most :data:`MAX_ANSWERS` queries per second
(more are dropped and counted); a snapshot lists at most
:data:`MAX_LISTED` connections and channels each (and says how many there
were). Snapshots are plain data (OBJECT-encoded dicts: str, int, float,
bool, None, lists, dicts), never code.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from .messages import OBJECT
from .wire.frames import SLOT_INTROSPECT_QUERY, SLOT_INTROSPECT_SNAPSHOT

if TYPE_CHECKING:
    from .channels.base import BaseChannel
    from .context import Context
    from .transport.connection import Connection
    from .transport.link import Link
    from .wire.frames import Body, Package

log = logging.getLogger("yoton")

__all__ = [
    "IntrospectionService",
    "Monitor",
    "snapshot",
    "VERSION",
    "MAX_ANSWERS",
    "MAX_LISTED",
    "QUERY_SLOT",
    "SNAPSHOT_SLOT",
]

#: The format of queries and snapshots (a snapshot says which it follows).
VERSION = 1
#: Queries a context answers per second at most (a token bucket; more are dropped).
MAX_ANSWERS = 20
#: Connections and channels a snapshot lists at most (each).
MAX_LISTED = 1000
QUERY_SLOT = SLOT_INTROSPECT_QUERY
SNAPSHOT_SLOT = SLOT_INTROSPECT_SNAPSHOT
_QUERY_TAG = "yoton-introspect"
_MAX_QUERY_SIZE = 256  # bytes; bodies over this are not queries and are not decoded

#: The patterns whose slot names a snapshot shows for a channel (its "forward" side).
_FORWARD = (".pub-sub", ".req-rep", ".state")


def _encode(value: Any) -> bytes:
    return OBJECT.message_to_bytes(value)


def _decode(data: Body) -> Any:
    return OBJECT.message_from_bytes(data)


def _address(host: str, port: int) -> str:
    return f"{host}:{port}" if host or port else ""


def _slot_name(channel: BaseChannel) -> str:
    out, into = channel.slot_outgoing, channel.slot_incoming
    if out and out.lower().endswith(_FORWARD):
        return out
    return into or out


def _connection(conn: Connection) -> dict:
    stats = conn.statistics()
    stats.update(
        name=conn.name,
        local=_address(conn.hostname1, conn.port1),
        remote=_address(conn.hostname2, conn.port2),
        peer_pid=conn.pid2,
        timeout=conn.timeout,
    )
    return stats


def _channel(channel: BaseChannel) -> dict:
    stats = channel.statistics()
    stats.update(kind=type(channel).__name__, slot=_slot_name(channel), closed=channel.closed)
    return stats


def snapshot(context: Context) -> dict:
    """A snapshot of ``context``: what its introspection service answers.

    Keys: ``version``, ``id`` (hex), ``pid``, ``host``, ``program``
    (``sys.argv[0]``), ``time`` (Unix time), ``statistics`` (the context's
    send-side counters), ``connections`` (each one's
    ``Connection.statistics()`` plus ``name``, ``local``/``remote``
    addresses, ``peer_pid``, ``timeout``), ``channels`` (each one's
    ``statistics()`` plus ``kind``, ``slot`` and ``closed``), and
    ``connection_count`` / ``channel_count`` (all of them, also those past
    :data:`MAX_LISTED`).
    """
    conns = list(context.connections_all)
    channels = [ch for ch in context.router.channels() if not isinstance(ch, _Endpoint)]
    return {
        "version": VERSION,
        "id": f"{context.id:016x}",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "program": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
        "time": time.time(),
        "statistics": context.statistics(),
        "connection_count": len(conns),
        "channel_count": len(channels),
        "connections": [_connection(conn) for conn in conns[:MAX_LISTED]],
        "channels": [_channel(ch) for ch in channels[:MAX_LISTED]],
    }


class _Endpoint:
    """A party on the reserved slots; registered with the router like a channel
    (the router needs slot names for its messages), but not a channel: a
    snapshot does not list it."""

    slot_outgoing = slot_incoming = ""
    closed = False

    def close(self) -> None:
        """Stay: the service (or monitor) lives as long as its context, also
        across ``Context.close()`` and a new bind or connect."""


class IntrospectionService(_Endpoint):
    """Answers the queries of :class:`Monitor` objects with :func:`snapshot` of ``context``.

    Made by ``Context(introspect=True)``; it receives on
    :data:`QUERY_SLOT` and answers on :data:`SNAPSHOT_SLOT`, addressed to the
    asking context. ``answered`` and ``dropped`` count the queries it
    answered and those over :data:`MAX_ANSWERS` per second (or malformed).
    """

    slot_outgoing = "(introspection snapshots)"
    slot_incoming = "(introspection queries)"

    def __init__(self, context: Context) -> None:
        self._context = context
        self._router = context.router
        self._tokens = float(MAX_ANSWERS)
        self._stamp = time.monotonic()
        self.answered = 0
        self.dropped = 0
        self._router.register(self, SNAPSHOT_SLOT, QUERY_SLOT, self._queries)

    def _queries(self, pkgs: list[Package], link: Link | None = None) -> None:
        """Answer the queries that arrived (loop side: quick, never waits)."""
        for pkg in pkgs:
            if not self._allowed() or not self._is_query(pkg.data):
                self.dropped += 1
                continue
            try:
                body = _encode(snapshot(self._context))
            except Exception:  # (a snapshot must never take the loop down)
                log.exception("yoton: could not make an introspection snapshot")
                continue
            if len(body) <= self._router.max_package_size:
                self._router.send(SNAPSHOT_SLOT, body, pkg.source_id, pkg.dest_seq, force=True)
                self.answered += 1

    def _allowed(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(MAX_ANSWERS), self._tokens + (now - self._stamp) * MAX_ANSWERS)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    @staticmethod
    def _is_query(data: Body) -> bool:
        if len(data) > _MAX_QUERY_SIZE:  # (a query is ~30 bytes: larger ones are not decoded at all)
            return False
        try:
            query = _decode(bytes(data))
        except ValueError:
            return False
        return isinstance(query, tuple) and len(query) == 2 and query[0] == _QUERY_TAG


class Monitor(_Endpoint):
    """Asks the network of ``context`` for snapshots: :meth:`query`.

    ``context`` is any context connected to the network (``yoton monitor``
    makes one of its own). Each introspecting context reached answers once
    per query; the context of the monitor itself does not (it does not hear
    its own broadcasts).
    """

    slot_outgoing = "(introspection queries)"
    slot_incoming = "(introspection snapshots)"

    def __init__(self, context: Context) -> None:
        self._context = context
        self._router = context.router
        self._numbers = itertools.count(1)
        self._cond = threading.Condition()
        self._current = 0  # the number of the query being answered
        self._answers: dict = {}  # answering context's id -> its snapshot's body, for the current query
        self.ignored = 0  # late, unasked-for or malformed snapshots
        self._router.register(self, QUERY_SLOT, SNAPSHOT_SLOT, self._snapshots)

    def query(self, timeout: float = 0.5, expect: int | None = None) -> list:
        """Broadcast a query and return the snapshots that came within
        ``timeout`` seconds (or as soon as ``expect`` of them did), sorted by
        context id. Snapshots of earlier queries that come late are ignored."""
        with self._cond:
            self._current = number = next(self._numbers)
            self._answers = {}
        self._router.send(QUERY_SLOT, _encode((_QUERY_TAG, VERSION)), 0, number, force=True)
        deadline = time.monotonic() + timeout
        with self._cond:
            while expect is None or len(self._answers) < expect:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            answers, self._current = self._answers, 0
        snapshots = []
        for source in sorted(answers):  # (decoded here, in the asking thread, never on the loop side)
            try:
                snap = _decode(answers[source])
            except ValueError:
                snap = None
            if isinstance(snap, dict) and snap.get("id") == f"{source:016x}":
                snapshots.append(snap)
            else:
                self.ignored += 1
        return snapshots

    def _snapshots(self, pkgs: list[Package], link: Link | None = None) -> None:
        # Loop side: keep the bodies that answer the current query, one per context.
        with self._cond:
            for pkg in pkgs:
                if pkg.dest_id != self._router.id or not self._current or pkg.dest_seq != self._current:
                    self.ignored += 1
                    continue
                self._answers[pkg.source_id] = bytes(pkg.data)
            self._cond.notify_all()
