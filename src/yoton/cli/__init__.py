"""The ``yoton`` command line (also ``python -m yoton``).

Commands: ``sub``, ``pub``, ``req``, ``state``, ``serve`` and ``monitor``
join a yoton network with ``--connect ADDRESS`` or ``--bind ADDRESS``;
``bench`` measures this machine; ``demo`` shows two processes talking.
``yoton --help`` and ``yoton COMMAND --help`` explain each; the README has
examples.

Each command lives in a module of this package with an ``add_parser``
function that registers it (:data:`COMMAND_MODULES`); the shared options
come from :func:`~yoton.cli.common.add_link_options` and
``add_type_options``, and :class:`~yoton.cli.common.Link` joins the network
as they say, so a new command is one more module and one more entry.

Standard output carries only data; banners, progress and errors go to
standard error. Exit codes: 0 done, 1 error (one line on stderr, no
traceback), 2 usage, 130 interrupted (Ctrl-C), 141 standard output closed
by its reader.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

import yoton

from .common import CommandError, UsageError

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: The modules that register commands, in the order ``--help`` lists them.
COMMAND_MODULES = ("pubsub", "reqrep", "state", "monitor", "bench", "demo")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141

EPILOG = """\
addresses:
  host:port (localhost:7000), host:name (a name hashed to a port: localhost:news),
  tls://host:port (TLS; see --tls-* in each command's help), ipc://PATH (a Unix
  socket), nats://host:port (through a NATS server; --connect only, needs the
  nats extra). With --bind, port 0 picks a free port; the banner on stderr
  says which.

output:
  Standard output carries only data (messages, results, state values), one
  per line, flushed at once; banners, progress and errors go to stderr.

waits (--timeout S limits each one; 'inf' for no limit):
  connecting (--connect)              default 5 s: "could not connect"
  a peer to arrive (--bind)           default no limit (pub, req, state)
  sub: the next message               default no limit; S s of silence end it
  pub / state VALUE: sending out      default 5 s
  req: the reply / state: the value   default 5 s
  monitor: the answers to each query  --interval (default 1 s)

exit codes:
  0 done, 1 error (one line on stderr), 2 usage, 130 interrupted (Ctrl-C),
  141 standard output closed by its reader (e.g. '| head')
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``yoton`` with every command registered."""
    parser = argparse.ArgumentParser(
        prog="yoton",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talk to a yoton network from the shell: subscribe, publish, call repliers, "
        "read and set state, serve an object, watch the network, benchmark.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"yoton {yoton.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
    return parser


def _interrupted() -> int:
    # A second Ctrl-C while closing down ends the process at once (no traceback).
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    except (ValueError, OSError):  # (not the main thread)
        pass
    return EXIT_INTERRUPTED


def _stdout_gone() -> int:
    # Python would complain when it flushes stdout at exit: point it at devnull.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def main(argv: list[str] | None = None) -> int:
    """Run the ``yoton`` command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # (exits with 2 on usage errors, 0 for --help)
        try:
            return args.run(args) or EXIT_OK
        except UsageError as exc:
            args.parser.error(str(exc))  # exits with 2
            raise  # (not reached)
        except CommandError as exc:
            return _fail(args, str(exc))
        except yoton.RemoteError as exc:
            return _fail(args, "remote error: " + _one_line(str(exc)))
        except (yoton.YotonError, OSError, ValueError) as exc:
            if isinstance(exc, BrokenPipeError):
                return _stdout_gone()
            return _fail(args, _one_line(str(exc)) or type(exc).__name__)
        except Exception as exc:  # (a bug, or the served object's import: still one line)
            return _fail(args, f"{type(exc).__name__}: {_one_line(str(exc))}")
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        return _stdout_gone()


def _one_line(text: str) -> str:
    """``'first line (the rest, joined)'`` -- a remote error is text and a location."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[0] + (f" ({'; '.join(line.rstrip('.') for line in lines[1:])})" if len(lines) > 1 else "")


def _fail(args: argparse.Namespace, message: str) -> int:
    sys.stderr.write(f"{args.parser.prog}: {message}\n")
    sys.stderr.flush()
    return EXIT_ERROR
