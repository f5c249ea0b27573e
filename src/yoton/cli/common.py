"""What the commands share: errors, options, the link to the network, and
how messages are read from the command line and written to standard output.

Only yoton's public API is used here (this is sugar on top of the library).
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import json
import math
import re
import ssl
import sys
import time
from typing import Any, Protocol

import yoton

#: Seconds a finite wait lasts when ``--timeout`` is not given (see the help).
DEFAULT_TIMEOUT = 5.0
#: "No limit" for the library calls that need a number of seconds.
FOREVER = 10.0**6
#: How often a command that waits for long looks after its link (peers coming
#: and going); the wait itself ends as soon as what it waits for arrives.
TICK = 0.05

TYPES = {"text": yoton.TEXT, "binary": yoton.BINARY, "object": yoton.OBJECT}


class CommandError(yoton.YotonError):
    """A command could not do its work: its text is the one line shown on stderr (exit code 1)."""


class UsageError(CommandError):
    """The command line is wrong in a way argparse cannot see (exit code 2, with the usage)."""


# -- option parsing -----------------------------------------------------------


class Commands(Protocol):
    """What each command module's ``add_parser(commands)`` is given: the
    ``yoton`` parser's sub-commands (``parser.add_subparsers()``)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """Add the sub-command ``name`` and return its parser."""
        ...


def seconds(text: str) -> float | None:
    """argparse type: a positive number of seconds, or ``inf`` (returned as None: no limit)."""
    word = text.strip().lower()
    if word in ("inf", "infinity", "none", "never"):
        return None
    try:
        value = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if math.isinf(value) and value > 0:
        return None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (or 'inf'), not {text!r}")
    return value


class _Unset:
    def __repr__(self) -> str:
        return "<not given>"


#: The default of ``--timeout``: each command decides what that means.
UNSET = _Unset()


def limit(timeout: Any, default: Any) -> Any:
    """``timeout`` (seconds or None for no limit) if it was given, else ``default``."""
    return default if timeout is UNSET else timeout


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_link_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of every networked command: where (``--connect`` or
    ``--bind``), security, ``--timeout`` and ``--quiet``."""
    where = parser.add_argument_group("where (exactly one)")
    side = where.add_mutually_exclusive_group(required=True)
    side.add_argument(
        "--connect",
        metavar="ADDRESS",
        help="connect to a context bound at ADDRESS (host:port, tls://host:port, ipc://PATH, nats://host:port)",
    )
    side.add_argument(
        "--bind",
        metavar="ADDRESS",
        help="listen at ADDRESS for peers (host:port, tls://host:port, ipc://PATH; port 0 picks a free one)",
    )
    sec = parser.add_argument_group("security")
    sec.add_argument(
        "--auth-key-file",
        metavar="PATH",
        help="the shared auth key (both ends need it); one trailing newline is not part of it",
    )
    sec.add_argument(
        "--tls-ca",
        metavar="PATH",
        help="tls:// --connect: the CA certificate(s) to verify the server with (default: the "
        "system's); tls:// --bind: require client certificates signed by it",
    )
    sec.add_argument(
        "--tls-cert",
        metavar="PATH",
        help="tls:// --bind: the server's certificate chain (PEM; may hold the key too); "
        "tls:// --connect: a client certificate",
    )
    sec.add_argument("--tls-key", metavar="PATH", help="the private key of --tls-cert, if not in that file")
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=seconds,
        default=UNSET,
        help="limit of each wait in seconds, or 'inf' (see 'yoton --help')",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no banners on stderr (errors still)")


def add_type_options(parser: argparse.ArgumentParser, json_help: str) -> None:
    """Add ``--type`` and ``--json``, for the commands that carry messages."""
    parser.add_argument(
        "--type",
        choices=sorted(TYPES),
        default="text",
        help="the message type (part of the slot: both ends must agree; default text)",
    )
    parser.add_argument("--json", action="store_true", help=json_help)


# -- values on the command line and on stdout ---------------------------------------

_LITERAL_START = tuple("[({'\"")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)


def parse_value(text: str, use_json: bool = False) -> Any:
    """A value given as text: a Python literal (JSON with ``use_json``).

    Text that is not a literal is taken as the string itself (``hello``,
    ``1.2.3``), unless it starts with a bracket or a quote, which says a
    literal was meant: then :class:`CommandError` ("bad literal").
    """
    stripped = text.strip()
    try:
        return json.loads(stripped) if use_json else ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        if stripped.startswith(_LITERAL_START):
            kind = "JSON" if use_json else "Python literal"
            why = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc) or type(exc).__name__
            raise CommandError(f"bad {kind} {_short(text)}: {why}") from None
        return text


def parse_args_kwargs(words: list[str], use_json: bool = False) -> tuple[list, dict]:
    """Request arguments: ``NAME=VALUE`` is a keyword argument, anything else positional."""
    args, kwargs = [], {}
    for word in words:
        match = _KEYWORD.fullmatch(word)
        if match:
            kwargs[match.group(1)] = parse_value(match.group(2), use_json)
        else:
            args.append(parse_value(word, use_json))
    return args, kwargs


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Formats:
    """How messages of one type are read from text and written as text.

    * text: as they are.
    * object: Python literals (``repr`` out, :func:`parse_value` in), JSON with ``--json``.
    * binary: Python bytes literals (``b'\\x00ok'``): out always, in when the
      text is one (else its UTF-8 bytes, or a stdin line's own bytes); with
      ``--json``, base64 strings both ways.
    """

    def __init__(self, type_name: str, use_json: bool):
        self.type_name = type_name
        self.message_type = TYPES[type_name]
        self.json = use_json

    def parse(self, item: str | bytes) -> Any:
        """A message from a command-line word (str) or a stdin line (bytes, no newline)."""
        if self.type_name == "binary":
            text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            if self.json:
                try:
                    return base64.b64decode(text.strip(), validate=True)
                except (binascii.Error, ValueError):
                    raise CommandError(f"bad base64 {_short(text)}") from None
            if text.strip().startswith(("b'", 'b"', "B'", 'B"')):
                value = parse_value(text)
                if isinstance(value, bytes):
                    return value
            return item if isinstance(item, bytes) else item.encode("utf-8", "surrogateescape")
        text = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        if self.type_name == "object":
            return parse_value(text, self.json)
        return text

    def plain(self, message: Any) -> str:
        """A message as one piece of text for stdout (text as it is; else a literal)."""
        if self.type_name == "text":
            return message
        return repr(message)

    def jsonable(self, message: Any) -> Any:
        """A message as a JSON-encodable value (binary: base64 text)."""
        if self.type_name == "binary":
            return base64.b64encode(message).decode("ascii")
        return message

    def show(self, message: Any) -> str:
        """A message as text for stdout: :meth:`plain`, or JSON with ``--json``."""
        return dumps(self.jsonable(message)) if self.json else self.plain(message)


def dumps(value: Any) -> str:
    """JSON on one line; :class:`CommandError` for what JSON cannot hold."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise CommandError(f"cannot be written as JSON: {exc}") from None


class Output:
    """Standard output: the data only, flushed after every item."""

    def __init__(self) -> None:
        self.stream = sys.stdout
        try:
            self.stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]  # (a replaced stdout may lack it)
        except (AttributeError, ValueError):
            pass

    def line(self, text: str) -> None:
        """Write ``text`` and a newline, and flush."""
        self.stream.write(text + "\n")
        self.stream.flush()


class Say:
    """Banners and warnings on stderr, prefixed with the command's name."""

    def __init__(self, prog: str, quiet: bool = False):
        self.prog = prog
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        """A banner (nothing with ``--quiet``)."""
        if not self.quiet:
            self.warn(text)

    def warn(self, text: str) -> None:
        """A line that shows also with ``--quiet``."""
        sys.stderr.write(f"{self.prog}: {text}\n")
        sys.stderr.flush()


# -- waiting ------------------------------------------------------------------


class Deadline:
    """The end of a wait of ``seconds`` (None: no end)."""

    def __init__(self, seconds_: float | None) -> None:
        self.seconds = seconds_
        self.end = None if seconds_ is None else time.monotonic() + seconds_

    def left(self) -> float | None:
        """Seconds left (0 when passed), or None for no limit."""
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        """Whether the wait is over."""
        return self.end is not None and time.monotonic() >= self.end

    def slice(self, most: float = TICK) -> float:
        """How long to wait now: at most ``most`` and not past the end."""
        left = self.left()
        return most if left is None else min(most, left)

    def describe(self) -> str:
        """``'5 s'`` (for messages)."""
        return f"{self.seconds:g} s"


class _Marked(yoton.MessageType):
    """A message type that is ``inner`` on the wire but receives :data:`NOTHING`
    (not ``''`` / ``b''`` / None, which may be real messages) when nothing came."""

    def __init__(self, inner: yoton.MessageType):
        self.inner = inner

    def message_type_name(self) -> str:
        """The inner type's name (so the slot is the same)."""
        return self.inner.message_type_name()

    def message_to_bytes(self, message: Any) -> bytes:
        """As the inner type."""
        return self.inner.message_to_bytes(message)

    def message_from_bytes(self, data: bytes | bytearray | memoryview) -> Any:
        """As the inner type."""
        return self.inner.message_from_bytes(data)

    def empty_message(self) -> Any:
        """:data:`NOTHING`."""
        return NOTHING


NOTHING = object()


def marked(message_type: yoton.MessageType) -> yoton.MessageType:
    """``message_type`` with :data:`NOTHING` as what ``recv`` returns when nothing came."""
    return _Marked(message_type)


# -- the context and its link to the network ----------------------------------------


def read_auth_key(path: str) -> bytes:
    """The key in ``path``, without one trailing newline (``\\n`` or ``\\r\\n``)."""
    try:
        with open(path, "rb") as f:
            key = f.read()
    except OSError as exc:
        raise CommandError(f"cannot read --auth-key-file {path}: {exc.strerror or exc}") from None
    if key.endswith(b"\n"):
        key = key[:-2] if key.endswith(b"\r\n") else key[:-1]
    if not key:
        raise CommandError(f"--auth-key-file {path} holds no key")
    return key


def make_context(args: argparse.Namespace, **kwargs: Any) -> yoton.Context:
    """A Context with the auth key of ``--auth-key-file`` (if given)."""
    path = getattr(args, "auth_key_file", None)
    if path:
        kwargs["auth_key"] = read_auth_key(path)
    return yoton.Context(**kwargs)


def _ssl_context(args: argparse.Namespace, binding: bool) -> ssl.SSLContext:
    try:
        if binding:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.tls_cert, args.tls_key)
            if args.tls_ca:
                context.load_verify_locations(cafile=args.tls_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        else:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(f for f in (args.tls_cert, args.tls_key, args.tls_ca) if f)
        raise CommandError(f"cannot load the TLS files ({files}): {exc.strerror or exc}") from None
    return context


class Link:
    """The command's place in the network: one ``connect``, or a ``bind``.

    With ``keep_listening`` a bind takes peers one after another (and at the
    same time): whenever its waiting bind got a peer or went, :meth:`check`
    binds again on the same port. Peers coming and going are told on stderr.
    """

    def __init__(self, ctx: yoton.Context, args: argparse.Namespace, say: Say, keep_listening: bool = False) -> None:
        self.ctx = ctx
        self.say = say
        self.binding = args.bind is not None
        self.address = args.bind if self.binding else args.connect
        self.keep_listening = keep_listening and self.binding
        self.tls = self.address.strip().lower().startswith("tls://")
        self.timeout = args.timeout
        self.ssl_context = None
        security = [name for name in ("tls_ca", "tls_cert", "tls_key") if getattr(args, name, None)]
        if security and not self.tls:
            names = ", ".join("--" + n.replace("_", "-") for n in security)
            raise UsageError(f"{names}: only for tls:// addresses")
        if self.tls:
            if self.binding and not args.tls_cert:
                raise UsageError("a tls:// --bind needs --tls-cert (the server's certificate)")
            if args.tls_key and not args.tls_cert:
                raise UsageError("--tls-key needs --tls-cert")
            self.ssl_context = _ssl_context(args, self.binding)
        self.conns: list = []
        self._told: set = set()  # connections whose arrival was told
        self.peer_came = False  #: whether a peer connected at some time (maybe gone again)
        self.host = ""
        self.port = 0
        self.lost_reason: str | None = None

    @property
    def shown(self) -> str:
        """Where we are bound (``[tls://]host:port``)."""
        return f"{'tls://' if self.tls else ''}{self.host}:{self.port}"

    def open(self) -> None:
        """Connect (waiting at most ``--timeout``, default 5 s) or bind (returns at once)."""
        try:
            if self.binding:
                self._bind(self.address)
                self.host, self.port = self.conns[0].hostname1, self.conns[0].port1
                self.say(f"bound to {self.shown}, waiting for " + ("peers" if self.keep_listening else "a peer"))
            else:
                timeout = limit(self.timeout, DEFAULT_TIMEOUT)
                conn = self.ctx.connect(
                    self.address, timeout=FOREVER if timeout is None else timeout, ssl_context=self.ssl_context
                )
                self.conns.append(conn)
                self._told.add(conn)
                self.say(f"connected to {conn.hostname2}:{conn.port2} (pid {conn.pid2})")
        except ValueError as exc:  # a malformed address
            raise CommandError(str(exc)) from None

    def _bind(self, address: str) -> None:
        self.conns.append(self.ctx.bind(address, ssl_context=self.ssl_context))

    @property
    def connected(self) -> bool:
        """Whether some peer is connected now."""
        return any(c.is_connected for c in self.conns)

    def check(self) -> bool:
        """Look after the link; return False once it is lost for good.

        Lost: the connection of a ``--connect`` closed, or the peer of a bind
        without ``keep_listening`` left (:attr:`lost_reason` says why).
        """
        for conn in self.conns:
            if conn.is_connected and conn not in self._told:
                self._told.add(conn)
                self.peer_came = True
                self.say(f"peer connected from {conn.hostname2}:{conn.port2} (pid {conn.pid2})")
        for conn in list(self.conns):
            if not conn.is_alive:
                self.conns.remove(conn)
                reason = (conn.close_reason or "closed").rstrip(".")
                if self.binding and conn in self._told:
                    self.say(f"peer left: {reason}")
                elif self.binding and conn.pid2:  # (came and went between two checks)
                    self.peer_came = True
                    self.say(f"peer (pid {conn.pid2}) connected and left: {reason}")
                self.lost_reason = reason
        if self.keep_listening:
            if not any(c.is_waiting for c in self.conns):
                try:
                    self._bind(f"{'tls://' if self.tls else ''}{self.host}:{self.port}")
                except OSError as exc:
                    if not self.conns:
                        raise CommandError(f"cannot bind {self.shown} again: {exc}") from None
            return True
        return bool(self.conns)

    def wait_peer(self, deadline: Deadline) -> None:
        """With ``--bind``: wait until a peer is connected, or came and went
        (:class:`CommandError` at the deadline). A peer that left before we
        looked may have been sent what was sent before it came: the caller's
        :func:`flush` (or its reads) then say whether that went out -- out to
        the network, as for a connected peer; not whether the peer read it."""
        while not self.connected:
            if not self.check():
                if self.peer_came:
                    return
                raise CommandError(f"the link closed: {self.lost_reason}")
            if deadline.passed():
                raise CommandError(f"timed out: no peer connected to {self.shown} within {deadline.describe()}")
            time.sleep(deadline.slice(0.01))
        self.check()  # (tell it)


def flush(ctx: yoton.Context, link: Link, timeout: float | None) -> None:
    """Wait until everything sent was written to the network; CommandError if it was not."""
    try:
        ctx.flush(FOREVER if timeout is None else timeout)
    except yoton.FlushTimeout:
        raise CommandError(
            f"timed out: what was sent did not go out within {timeout:g} s (is the peer reading?)"
        ) from None
    stats = ctx.statistics()
    if stats["queued_bytes"] or stats["discarded_outgoing"]:
        link.check()
        raise CommandError(f"connection closed before everything went out: {link.lost_reason or 'lost'}")
