"""``yoton req`` and ``yoton serve``: request/reply from the shell."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable

import yoton

from .common import (
    DEFAULT_TIMEOUT,
    TICK,
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
    parse_args_kwargs,
)

REQ_EPILOG = """\
arguments:
  Each ARG is a Python literal: 42, -1.5, 'text', [1, 2], {'k': None}, True,
  None (with --json: JSON). An ARG that is not a literal is passed as the
  string itself (hello, 1.2.3); one starting with a bracket or a quote must
  be a good literal ("bad literal", exit code 1). NAME=VALUE passes a keyword
  argument (quote a string that looks like one: "'a=b'").

Prints the result as a Python literal (with --json: as JSON). It waits up to
--timeout (default 5 s) for a replier to take the request and answer; no
replier, no answer or a failure in the replier ("remote error: ...") is an
error (exit code 1). Every replier has echo(arg): it returns (arg, its id).

examples:
  yoton req --connect localhost:7000 calc add 20 22
  yoton req --connect localhost:7000 --json calc lookup '{"key": [1, 2]}'
"""

SERVE_EPILOG = """\
what is served:
  module:Class   a RepChannel subclass: made as Class(context, SLOT); its
                 methods are called as usual
  module:Class   any other class: made as Class(); its public methods
  module:name    any other object: its public methods (a function: itself)
  module         a module: its public functions (those in __all__ if it has one)
  path/to/file.py[:name] the same, from a file

The module is imported with the current directory on sys.path. Methods whose
names belong to the RepChannel API (close, send, ...) cannot be served (a
warning lists them); echo(arg) always answers. Requests are served one at a
time, in a thread of their own; a request that fails is answered with its
error and logged on stderr. With --bind it takes requesters one after another
(and several at once); it runs until Ctrl-C, or until the connection of a
--connect closes (exit code 1).

example:
  yoton serve --bind localhost:7000 calc mymodule:Calculator
"""


def add_parser(commands: Commands) -> None:
    """Register ``req`` and ``serve``."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = commands.add_parser(
        "req",
        formatter_class=fmt,
        epilog=REQ_EPILOG,
        help="call a method of a replier and print the result",
        description="Call METHOD(ARGS...) of a replier (a RepChannel) on SLOT and print the result.",
    )
    p.add_argument("slot", metavar="SLOT", help="the slot's name")
    p.add_argument("method", metavar="METHOD", help="the method to call")
    p.add_argument("args", metavar="ARG", nargs="*", help="its arguments (NAME=VALUE: a keyword argument)")
    add_link_options(p)
    p.add_argument("--json", action="store_true", help="arguments and result in JSON")
    p.set_defaults(run=run_req, parser=p)

    p = commands.add_parser(
        "serve",
        formatter_class=fmt,
        epilog=SERVE_EPILOG,
        help="serve the methods of a Python object as a replier",
        description="Serve the methods of a Python object on SLOT, as a RepChannel, until Ctrl-C.",
    )
    p.add_argument("slot", metavar="SLOT", help="the slot's name")
    p.add_argument("target", metavar="MODULE[:OBJECT]", help="what to serve (see below)")
    add_link_options(p)
    p.set_defaults(run=run_serve, parser=p)


# -- req ----------------------------------------------------------------------------


def _callable_remotely(name: str) -> bool:
    return not name.startswith("_") and (name == "echo" or not hasattr(yoton.RepChannel, name))


def run_req(args: argparse.Namespace) -> int:
    """``yoton req``."""
    say = Say(args.parser.prog, args.quiet)
    if not _callable_remotely(args.method) or not args.method.isidentifier():
        raise CommandError(
            f"{args.method!r} cannot be called remotely (not a method name, or a name of the channel's own API)"
        )
    call_args, call_kwargs = parse_args_kwargs(args.args, args.json)  # (a bad literal fails first)
    timeout = limit(args.timeout, DEFAULT_TIMEOUT)
    ctx = make_context(args)
    try:
        req = yoton.ReqChannel(ctx, args.slot, default_future_timeout=timeout)
        link = Link(ctx, args, say)
        link.open()
        if link.binding:
            link.wait_peer(Deadline(limit(args.timeout, None)))
        try:
            future = getattr(req, args.method)(*call_args, **call_kwargs)
        except ValueError as exc:  # (arguments the OBJECT codec cannot carry, or too large)
            raise CommandError(f"cannot send the request: {exc}") from None
        deadline = Deadline(timeout)
        nobody = f"timed out: no replier on slot {args.slot!r} took the request within {deadline.describe()}"
        while True:
            try:
                result = future.result(deadline.slice())
                break
            except yoton.CancelledError:  # (its auto-cancel: no replier took it)
                raise CommandError(nobody) from None
            except yoton.TimeoutError:
                if not link.check():
                    raise CommandError(f"connection closed before the reply came: {link.lost_reason}") from None
                if deadline.passed():
                    if future.cancel():
                        raise CommandError(nobody) from None
                    raise CommandError(f"timed out: no reply within {deadline.describe()}") from None
        Output().line(dumps(result) if args.json else repr(result))
        return 0
    finally:
        ctx.close()


# -- serve --------------------------------------------------------------------------


def load_target(spec: str) -> Any:
    """The object ``module[:attr.path]`` or ``file.py[:attr.path]`` names (CommandError if none)."""
    where, _, path = spec.partition(":")
    if not where:
        raise CommandError(f"no module in {spec!r} (use module:object)")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            name = os.path.splitext(os.path.basename(where))[0] or "served"
            file_spec = importlib.util.spec_from_file_location(name, where)
            if file_spec is None or file_spec.loader is None or not os.path.isfile(where):
                raise CommandError(f"cannot import {where}: no such file")
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[name] = module
            file_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except CommandError:
        raise
    except BaseException as exc:  # (whatever the module does when imported)
        if isinstance(exc, KeyboardInterrupt):
            raise
        text = str(exc).strip().splitlines()
        raise CommandError(f"cannot import {where}: {type(exc).__name__}: {text[0] if text else ''}") from None
    obj = module
    for part in filter(None, path.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{where} has no {path!r}") from None
    return obj


def _delegate(target: object, name: str) -> Callable[..., Any]:
    def method(self: object, *args: Any, **kwargs: Any) -> Any:
        return getattr(target, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Call {name} of the served object."
    return method


def _public_callables(target: object) -> list:
    names = getattr(target, "__all__", None)
    if not isinstance(names, (list, tuple)):
        names = dir(target)
    found = []
    for name in names:
        if not isinstance(name, str) or name.startswith("_"):
            continue
        try:
            value = getattr(target, name)
        except Exception:
            continue
        if callable(value) and not isinstance(value, type):
            found.append(name)
    return found


def make_replier(ctx: yoton.Context, slot: str, target: Any) -> tuple[yoton.RepChannel, list, list]:
    """A RepChannel on ``slot`` serving ``target``; return it, the names served
    and those that cannot be (they belong to the RepChannel API)."""
    if isinstance(target, type) and issubclass(target, yoton.RepChannel):
        try:
            replier = target(ctx, slot)
        except Exception as exc:
            raise CommandError(
                f"cannot make {target.__name__}(context, {slot!r}): {type(exc).__name__}: {exc}"
            ) from None
        names = [n for n in _public_callables(replier) if _callable_remotely(n)]
        return replier, names, []
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:
            raise CommandError(f"cannot make {target.__name__}(): {type(exc).__name__}: {exc}") from None
    if inspect.isroutine(target):
        names = [target.__name__]  # a function: served under its own name
        holder = type("_Function", (), {target.__name__: staticmethod(target)})
        target = holder
    else:
        names = _public_callables(target)
    hidden = [n for n in names if not _callable_remotely(n)]
    names = [n for n in names if _callable_remotely(n)]
    if not names:
        raise CommandError(
            f"{target!r} has no public methods to serve"
            + (f" (only names of the RepChannel API: {', '.join(hidden)})" if hidden else "")
        )
    cls = type("ServedObject", (yoton.RepChannel,), {n: _delegate(target, n) for n in names})
    return cls(ctx, slot), names, hidden


def run_serve(args: argparse.Namespace) -> int:
    """``yoton serve``."""
    say = Say(args.parser.prog, args.quiet)
    target = load_target(args.target)
    ctx = make_context(args)
    try:
        link = Link(ctx, args, say, keep_listening=True)  # (checks the options first)
        replier, names, hidden = make_replier(ctx, args.slot, target)
        if hidden:
            say.warn(f"not served (names of the RepChannel API): {', '.join(hidden)}")
        replier.set_mode("thread")
        link.open()
        say(f"serving {args.target} on slot {args.slot!r}: {', '.join(sorted(set(names) | {'echo'}))}")
        while link.check():
            yoton.process_events(TICK)  # (events of the served object, if it uses any)
        raise CommandError(f"connection closed: {link.lost_reason}")
    finally:
        ctx.close()
