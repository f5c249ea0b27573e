"""``yoton monitor``: a live view of the contexts of a running network.

It joins the network like the other commands and asks, every ``--interval``
seconds, for a snapshot of every context that introspects
(``yoton.Context(introspect=True)``; see :mod:`yoton.introspect`): the
question floods the network, so one connection reaches them all. Rates are
worked out between two snapshots of the same context.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from typing import Any, Callable

from yoton.introspect import Monitor

from .common import (
    CommandError,
    Commands,
    Deadline,
    Link,
    Output,
    Say,
    add_link_options,
    dumps,
    limit,
    make_context,
    positive_int,
    seconds,
)

EPILOG = """\
Contexts made with yoton.Context(introspect=True) answer (the others only pass
the question on); each snapshot shows, per context: its id, program, process
and send-side counters; its connections (peer, state, age, bytes and messages
in and out per second, what is queued for the peer, drops, timed out); its
channels (kind, slot, pending messages, messages in and out per second,
discarded).

One snapshot every --interval seconds (default 1): the answers that came
within it. On a terminal the view is redrawn in place (as tables with 'rich'
installed: pip install "yoton[cli]"; --plain for text); otherwise each
snapshot is printed as text, one after the other. --json prints one JSON
object per snapshot and line, {"time": ..., "contexts": [...]}: each context
as it answered, and from the second snapshot on a "rates" object (per second)
in each connection and channel seen before. --count N exits after N snapshots.

examples:
  yoton monitor --connect localhost:7000
  yoton monitor --connect localhost:7000 --json --count 3 --interval 0.5
"""

#: Counters shown per second (snapshot key -> rate key).
CONNECTION_RATES = ("bytes_in", "bytes_out", "packages_in", "packages_out")
CHANNEL_RATES = ("received", "sent")


def add_parser(commands: Commands) -> None:
    """Register ``monitor``."""
    p = commands.add_parser(
        "monitor",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        help="show the contexts of a running network live (those made with introspect=True)",
        description="Show the contexts of the network reached through ADDRESS, their connections "
        "and channels, refreshed every --interval seconds.",
    )
    add_link_options(p)
    p.add_argument("--json", action="store_true", help="one JSON object per snapshot and line")
    p.add_argument("--count", metavar="N", type=positive_int, help="exit after N snapshots")
    p.add_argument("--interval", metavar="S", type=seconds, default=1.0, help="seconds between snapshots (default 1)")
    p.add_argument("--plain", action="store_true", help="plain text on a terminal even when rich is installed")
    p.set_defaults(run=run_monitor, parser=p)


def run_monitor(args: argparse.Namespace) -> int:
    """``yoton monitor``."""
    say = Say(args.parser.prog, args.quiet)
    interval = args.interval if args.interval is not None else 1.0
    ctx = make_context(args)
    view = None
    try:
        monitor = Monitor(ctx)
        link = Link(ctx, args, say)
        link.open()
        if link.binding:
            link.wait_peer(Deadline(limit(args.timeout, None)))
        where = link.shown if link.binding else link.address
        view = make_view(args, where)
        rates = Rates()
        shown = 0
        while args.count is None or shown < args.count:
            if not link.check():
                raise CommandError(f"the link closed: {link.lost_reason}")
            contexts = monitor.query(interval)
            now = time.time()
            rates.add(contexts)
            view.show(now, contexts)
            shown += 1
        return 0
    finally:
        if view is not None:
            view.close()
        ctx.close()


# -- rates ------------------------------------------------------------------------------------


class Rates:
    """Adds a ``rates`` dict (per second, since the previous snapshot of the same
    context) to each connection and channel seen in both snapshots."""

    def __init__(self) -> None:
        self.previous: dict = {}  # context id -> its last snapshot

    def add(self, contexts: list) -> None:
        """Add rates to ``contexts`` (snapshots, changed in place) and remember them."""
        seen = {}
        for snap in contexts:
            before = self.previous.get(snap.get("id"))
            if before is not None:
                elapsed = _number(snap.get("time")) - _number(before.get("time"))
                if elapsed > 0:
                    self._rate(snap, before, "connections", _connection_key, CONNECTION_RATES, elapsed)
                    self._rate(snap, before, "channels", _channel_key, CHANNEL_RATES, elapsed)
            seen[snap.get("id")] = snap
        self.previous = seen

    @staticmethod
    def _rate(
        snap: dict, before: dict, section: str, key: Callable[[dict], tuple], fields: Any, elapsed: float
    ) -> None:
        old = {key(item): item for item in _items(before, section)}
        for item in _items(snap, section):
            prior = old.get(key(item))
            if prior is not None:
                item["rates"] = {f: (_number(item.get(f)) - _number(prior.get(f))) / elapsed for f in fields}


def _items(snap: dict, section: str) -> list:
    items = snap.get(section)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _number(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _connection_key(item: dict) -> tuple:
    return (item.get("peer"), item.get("local"), item.get("remote"))


def _channel_key(item: dict) -> tuple:
    return (item.get("kind"), item.get("slot"))


# -- views --------------------------------------------------------------------------------------


def make_view(args: argparse.Namespace, where: str) -> JsonView | RichView | TextView:
    """JSON lines, a rich live view (a terminal, rich installed), or plain text."""
    if args.json:
        return JsonView()
    tty = sys.stdout.isatty()
    if tty and not args.plain:
        try:
            return RichView(where)
        except ImportError:
            pass
    return TextView(where, redraw=tty)


class JsonView:
    """One JSON object per snapshot and line on stdout."""

    def __init__(self) -> None:
        self.out = Output()

    def show(self, now: float, contexts: list) -> None:
        """Print one snapshot of the network."""
        self.out.line(dumps({"time": now, "contexts": contexts}))

    def close(self) -> None:
        """Nothing to clean up."""


def _bytes(value: object) -> str:
    value = _number(value)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # (not reached)


def _per_s(item: dict, field: str, bytes_: bool = False) -> str:
    rates = item.get("rates")
    if not isinstance(rates, dict):
        return "-"
    value = _number(rates.get(field))
    return f"{_bytes(value)}/s" if bytes_ else f"{value:,.0f}/s"


def _age(value: object) -> str:
    value = _number(value)
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


CONNECTION_COLUMNS = (
    "name",
    "state",
    "peer",
    "remote",
    "age",
    "in",
    "out",
    "msgs in",
    "msgs out",
    "queued",
    "drops",
    "timed out",
)
CHANNEL_COLUMNS = ("kind", "slot", "pending", "msgs in", "msgs out", "discarded")


#: Control characters (C0, DEL, C1) -> "?": text from remote contexts must not drive the terminal.
_CONTROLS = {c: "?" for c in (*range(32), *range(127, 160))}


def _printable(text: object) -> str:
    """``text`` (from a remote context: names, slots, programs) without control characters."""
    return str(text).translate(_CONTROLS)


def context_title(snap: dict) -> str:
    """One line about a context: id, program, process, send-side counters."""
    stats = snap.get("statistics")
    if not isinstance(stats, dict):
        stats = {}
    return _printable(
        f"context {snap.get('id', '?')}  {snap.get('program') or '?'} (pid {snap.get('pid', '?')} "
        f"on {snap.get('host', '?')})  queued {_bytes(stats.get('queued_bytes'))}  "
        f"discarded {stats.get('discarded_outgoing', 0)}  refused {stats.get('refused', 0)}"
    )


def connection_row(conn: dict) -> tuple:
    """The cells of a connection (see :data:`CONNECTION_COLUMNS`)."""
    return tuple(
        map(
            _printable,
            (
                conn.get("name") or "-",
                str(conn.get("state", "?")),
                str(conn.get("peer", "?")),
                conn.get("remote") or "-",
                _age(conn.get("age")),
                _per_s(conn, "bytes_in", True),
                _per_s(conn, "bytes_out", True),
                _per_s(conn, "packages_in"),
                _per_s(conn, "packages_out"),
                _bytes(conn.get("queued_bytes")),
                str(conn.get("discarded", 0)),
                "yes" if conn.get("timed_out") else "no",
            ),
        )
    )


def channel_row(channel: dict) -> tuple:
    """The cells of a channel (see :data:`CHANNEL_COLUMNS`)."""
    return tuple(
        map(
            _printable,
            (
                str(channel.get("kind", "?")) + (" (closed)" if channel.get("closed") else ""),
                str(channel.get("slot", "?")),
                str(channel.get("pending", 0)),
                _per_s(channel, "received"),
                _per_s(channel, "sent"),
                str(channel.get("discarded", 0)),
            ),
        )
    )


def _more(snap: dict, section: str, count_key: str) -> str:
    listed, total = len(_items(snap, section)), snap.get(count_key)
    return f" (and {total - listed} more)" if isinstance(total, int) and total > listed else ""


def header(where: str, now: float, contexts: list) -> str:
    """The line above a snapshot."""
    clock = datetime.datetime.fromtimestamp(now).strftime("%H:%M:%S")
    found = f"{len(contexts)} context{'' if len(contexts) == 1 else 's'}" if contexts else "no context answered"
    return f"yoton network via {where} at {clock}: {found}"


class TextView:
    """Plain text on stdout: each snapshot after the other, or (``redraw``, a
    terminal) redrawn in place."""

    def __init__(self, where: str, redraw: bool = False):
        self.where = where
        self.redraw = redraw
        self.out = Output()

    def show(self, now: float, contexts: list) -> None:
        """Print one snapshot of the network."""
        lines = [header(self.where, now, contexts)]
        for snap in contexts:
            lines.append("")
            lines.append(context_title(snap))
            lines.append("  connections" + _more(snap, "connections", "connection_count"))
            lines.extend(_table(CONNECTION_COLUMNS, [connection_row(c) for c in _items(snap, "connections")]))
            lines.append("  channels" + _more(snap, "channels", "channel_count"))
            lines.extend(_table(CHANNEL_COLUMNS, [channel_row(c) for c in _items(snap, "channels")]))
        text = "\n".join(lines)
        self.out.line(("\033[H\033[J" + text) if self.redraw else text + "\n")

    def close(self) -> None:
        """Nothing to clean up."""


def _table(columns: tuple, rows: list) -> list:
    if not rows:
        return ["    (none)"]
    widths = [max(len(str(cell)) for cell in column) for column in zip(columns, *rows)]
    return ["    " + "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [columns, *rows]]


class RichView:
    """Tables drawn by rich on a terminal, redrawn in place."""

    def __init__(self, where: str):
        from rich.console import Console, Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        self.where = where
        self.Group, self.Table, self.Text = Group, Table, Text  # (Text: names are shown as they are, not as markup)
        self.live = Live(console=Console(), auto_refresh=False, transient=False)
        self.live.start()

    def show(self, now: float, contexts: list) -> None:
        """Redraw with one snapshot of the network."""
        text = self.Text
        parts: list = [text(header(self.where, now, contexts), style="bold")]
        for snap in contexts:
            conns = self.Table(
                *CONNECTION_COLUMNS, title="connections" + _more(snap, "connections", "connection_count")
            )
            for conn in _items(snap, "connections"):
                conns.add_row(*map(text, connection_row(conn)))
            channels = self.Table(*CHANNEL_COLUMNS, title="channels" + _more(snap, "channels", "channel_count"))
            for channel in _items(snap, "channels"):
                channels.add_row(*map(text, channel_row(channel)))
            parts.extend([text(""), text(context_title(snap), style="bold"), conns, channels])
        self.live.update(self.Group(*parts), refresh=True)

    def close(self) -> None:
        """Leave the last view on the terminal."""
        self.live.stop()
