"""``yoton sub`` and ``yoton pub``: publish/subscribe from the shell."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Iterable, Iterator

import yoton

from .common import (
    DEFAULT_TIMEOUT,
    NOTHING,
    TICK,
    CommandError,
    Commands,
    Deadline,
    Formats,
    Link,
    Output,
    Say,
    add_link_options,
    add_type_options,
    dumps,
    flush,
    limit,
    make_context,
    marked,
    positive_int,
)

FORMATS_HELP = """\
message formats (--type):
  text    the message as it is
  object  a Python literal: 42, 'text', [1, 2.5], {'k': None}; with --json, JSON
  binary  a Python bytes literal: b'\\x00ok'; with --json, a base64 string
"""

SUB_EPILOG = (
    FORMATS_HELP
    + """
Prints each message on its own line as it arrives, flushed at once (a text
message holding newlines spans several lines: use --json to keep them apart).
--json prints one JSON object per line: {"slot": "SLOT", "message": ...}.

It ends with exit code 0 after --count messages, after --timeout seconds in
which nothing came (counted from the start, then from each message), or when
the peer of a --connect closes the connection; when --count was given and not
reached, those last two are errors (exit code 1). With --bind it takes
publishers one after another (and several at once) until then, or Ctrl-C.

Like any subscriber it keeps at most 10,000 waiting messages and drops the
oldest beyond that (a warning at the end says how many); --sync holds the
publishers back instead.

examples:
  yoton sub --bind localhost:7000 news
  yoton sub --connect localhost:7000 --type object --json --count 1 readings
"""
)

PUB_EPILOG = (
    FORMATS_HELP
    + """
Sends MESSAGE, or without it every line of standard input (without its line
ending; empty lines are skipped: yoton sends no empty messages). With --type
object or binary each is read as shown above; text that is not a literal is
sent as the string itself (hello, 1.2.3), but one starting with a bracket or a
quote must be a good literal ("bad literal", exit code 1).

--connect connects first (waiting up to --timeout, default 5 s); --bind waits
for a peer to connect (no limit unless --timeout). Before exiting it waits
until everything sent went out (--timeout, default 5 s), then closes the
connection in an orderly way, so the peer receives it all. A connection that
closes before then is an error.

examples:
  echo hello | yoton pub --connect localhost:7000 news
  yoton pub --connect localhost:7000 --type object readings "{'t': 21.5}"
"""
)


def add_parser(commands: Commands) -> None:
    """Register ``sub`` and ``pub``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = commands.add_parser(
        "sub",
        formatter_class=fmt,
        epilog=SUB_EPILOG,
        help="print the messages published on a slot",
        description="Subscribe to SLOT and print each message published there.",
    )
    p.add_argument("slot", metavar="SLOT", help="the slot's name (e.g. news)")
    add_link_options(p)
    add_type_options(p, 'one JSON object per line: {"slot": ..., "message": ...}')
    p.add_argument("--count", metavar="N", type=positive_int, help="exit after N messages")
    p.add_argument(
        "--sync", action="store_true", help="lossless: hold publishers back while we lag (default: drop the oldest)"
    )
    p.set_defaults(run=run_sub, parser=p)

    p = commands.add_parser(
        "pub",
        formatter_class=fmt,
        epilog=PUB_EPILOG,
        help="publish a message, or every line of stdin, on a slot",
        description="Publish MESSAGE, or each line of standard input, on SLOT.",
    )
    p.add_argument("slot", metavar="SLOT", help="the slot's name (e.g. news)")
    p.add_argument("message", metavar="MESSAGE", nargs="?", help="the message (default: read stdin)")
    add_link_options(p)
    add_type_options(p, "object messages are given as JSON, binary ones as base64")
    p.set_defaults(run=run_pub, parser=p)


def run_sub(args: argparse.Namespace) -> int:
    """``yoton sub``."""
    say = Say(args.parser.prog, args.quiet)
    fmt = Formats(args.type, args.json)
    out = Output()
    ctx = make_context(args)
    try:
        sub = yoton.SubChannel(ctx, args.slot, marked(fmt.message_type))
        if args.sync:
            sub.set_sync_mode(True)
        link = Link(ctx, args, say, keep_listening=True)
        link.open()
        silence = limit(args.timeout, None)
        deadline = Deadline(silence)
        got, end = 0, None
        checked = time.monotonic()
        while args.count is None or got < args.count:
            message = sub.recv(deadline.slice())
            if message is NOTHING:
                if not link.check():
                    # (what came before the close is queued already: print it first)
                    while args.count is None or got < args.count:
                        message = sub.recv(False)
                        if message is NOTHING:
                            break
                        _print(out, say, fmt, args.slot, message)
                        got += 1
                    end = f"connection closed: {link.lost_reason}"
                    break
                if deadline.passed():
                    end = f"timed out: nothing came for {deadline.describe()}"
                    break
                continue
            _print(out, say, fmt, args.slot, message)
            got += 1
            deadline = Deadline(silence)
            now = time.monotonic()
            if now >= checked + TICK:  # (a steady stream: look after the link now and then)
                checked = now
                link.check()
        discarded = sub.statistics()["discarded"]
        if discarded:
            say.warn(
                f"{discarded} message(s) were dropped: they came faster than they were printed "
                "(--sync holds publishers back instead)"
            )
        if end is not None:
            if args.count is not None and got < args.count:
                raise CommandError(f"{end} (after {got} of {args.count} messages)")
            say(end)
        return 0
    finally:
        ctx.close()


def _print(out: Output, say: Say, fmt: Formats, slot: str, message: Any) -> None:
    try:
        text = dumps({"slot": slot, "message": fmt.jsonable(message)}) if fmt.json else fmt.plain(message)
    except CommandError as exc:  # (an object message JSON cannot hold: tell, go on)
        say.warn(f"a message {exc} (it was {message!r})")
        return
    out.line(text)


def _stdin_messages(fmt: Formats) -> Iterator[Any]:
    """The messages on stdin: one a line, without its line ending; empty lines skipped."""
    for number, line in enumerate(sys.stdin.buffer, 1):
        line = line.rstrip(b"\n").rstrip(b"\r")
        if line:
            try:
                yield fmt.parse(line)
            except CommandError as exc:
                raise CommandError(f"line {number} of stdin: {exc}") from None


def run_pub(args: argparse.Namespace) -> int:
    """``yoton pub``."""
    say = Say(args.parser.prog, args.quiet)
    fmt = Formats(args.type, args.json)
    if args.message is not None:
        if not args.message:
            raise CommandError("an empty message cannot be sent (yoton sends nothing for it)")
        messages: Iterable[Any] | None = [fmt.parse(args.message)]  # (a bad literal fails before connecting)
    else:
        messages = None
    # (a smaller send queue than the default 256 MiB: memory stays low and the
    # final flush has little left to do; sending waits while it is full)
    ctx = make_context(args, max_queue_bytes=8 << 20)
    try:
        pub = yoton.PubChannel(ctx, args.slot, fmt.message_type)
        link = Link(ctx, args, say)
        link.open()
        if link.binding:
            link.wait_peer(Deadline(limit(args.timeout, None)))
        if messages is None:
            if sys.stdin.isatty():
                say("reading messages from stdin, one per line (Ctrl-D ends)")
            messages = _stdin_messages(fmt)
        sent = 0
        for message in messages:
            if not link.check():
                raise CommandError(f"connection closed after {sent} message(s): {link.lost_reason}")
            try:
                pub.send(message)
            except ValueError as exc:
                raise CommandError(f"cannot send {message!r}: {exc}") from None
            sent += 1
        flush(ctx, link, limit(args.timeout, DEFAULT_TIMEOUT))
        say(f"sent {sent} message(s)")
        return 0
    finally:
        ctx.close()
