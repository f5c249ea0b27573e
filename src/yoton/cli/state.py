"""``yoton state``: read or set the value of a state channel."""

from __future__ import annotations

import argparse

import yoton

from .common import (
    DEFAULT_TIMEOUT,
    CommandError,
    Commands,
    Deadline,
    Formats,
    Link,
    Output,
    Say,
    add_link_options,
    add_type_options,
    flush,
    limit,
    make_context,
)
from .pubsub import FORMATS_HELP

EPILOG = (
    FORMATS_HELP
    + """
Without VALUE it prints the slot's current value and exits. A context that
connects asks the network to re-send its state, so with --connect the value
arrives shortly after connecting; it waits for it up to --timeout (default
5 s): no value by then is an error (exit code 1). With --bind it prints the
first value that reaches it (a peer that connects sends what it set before).

With VALUE it sets the state (read like a pub MESSAGE) and waits until it
went out (--timeout, default 5 s); with --bind it first waits for a peer (no
limit unless --timeout). It prints nothing.

examples:
  yoton state --connect localhost:7000 status
  yoton state --connect localhost:7000 --type object status "{'mode': 'idle'}"
"""
)


def add_parser(commands: Commands) -> None:
    """Register ``state``."""
    p = commands.add_parser(
        "state",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        help="print or set the value of a state channel",
        description="Print the current value of the state channel SLOT, or set it to VALUE.",
    )
    p.add_argument("slot", metavar="SLOT", help="the slot's name")
    p.add_argument("value", metavar="VALUE", nargs="?", help="the value to set (default: print the value)")
    add_link_options(p)
    add_type_options(p, "values are printed and given as JSON (binary: base64)")
    p.set_defaults(run=run_state, parser=p)


def run_state(args: argparse.Namespace) -> int:
    """``yoton state``."""
    say = Say(args.parser.prog, args.quiet)
    fmt = Formats(args.type, args.json)
    if args.value is not None and not args.value:
        raise CommandError("an empty state cannot be set (yoton sends nothing for it)")
    value = None if args.value is None else fmt.parse(args.value)  # (a bad literal fails first)
    ctx = make_context(args)
    try:
        state = yoton.StateChannel(ctx, args.slot, fmt.message_type)
        link = Link(ctx, args, say)
        if args.value is not None:
            # Set before linking: the value then travels ahead of our arrival
            # (after which every context re-sends its state: already ours).
            try:
                state.send(value)
            except ValueError as exc:
                raise CommandError(f"cannot send {value!r}: {exc}") from None
            link.open()
            if link.binding:
                link.wait_peer(Deadline(limit(args.timeout, None)))
            flush(ctx, link, limit(args.timeout, DEFAULT_TIMEOUT))
            say(f"state {args.slot!r} set")
            return 0
        link.open()
        if link.binding:
            link.wait_peer(Deadline(limit(args.timeout, None)))
        deadline = Deadline(limit(args.timeout, DEFAULT_TIMEOUT))
        while not state.pending:
            if not link.check():
                raise CommandError(f"connection closed before a state came: {link.lost_reason}")
            if deadline.passed():
                raise CommandError(f"timed out: no state on slot {args.slot!r} came within {deadline.describe()}")
            yoton.process_events(deadline.slice())  # (the channel's `received` event wakes us)
        Output().line(fmt.show(state.recv()))
        return 0
    finally:
        ctx.close()
