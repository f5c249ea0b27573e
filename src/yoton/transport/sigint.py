"""Ctrl-C and yoton's I/O in the main thread.

A ``KeyboardInterrupt`` raised between two bytecodes of an I/O pass would
leave a package half-parsed or half-routed, or drop events epoll has already
reported (one-shot: never reported again); raised in the middle of a send it
could leave a connection's write lock held, or a write half booked, which
corrupts the stream. So when the main thread does yoton I/O -- it waits in
:meth:`IOLoop.run_until <yoton.transport.ioloop.IOLoop.run_until>` (serving
the loop) or writes a package itself (inside :class:`MainSending`) -- Ctrl-C
waits for the end of that block.

How: the first time the main thread comes to do such I/O, yoton replaces
Python's *default* SIGINT handler with :func:`sigint_handler`, which raises
``KeyboardInterrupt`` like the default, except while the main thread is
inside such a block: then it records the signal, wakes the loop (if the main
thread waits in it) and the block raises it when it ends. A program with a
SIGINT handler of its own keeps it; its main thread then does not serve the
loop (it waits to be woken), and its handler decides what Ctrl-C does.

Rules for this module: the handler takes no lock (it may interrupt the main
thread holding one); state is module-level and touched by the main thread
and the handler only.
"""

from __future__ import annotations

import signal
import threading
from threading import get_ident
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:
    from .ioloop import IOLoop

__all__ = [
    "MAIN_THREAD",
    "MAIN_IDENT",
    "MainSending",
    "MainServing",
    "main_may_serve",
    "serve_enter",
    "serve_exit",
    "sigint_handler",
    "shield_enter",
    "shield_exit",
]

MAIN_THREAD = threading.main_thread()
#: Its ``threading.get_ident()``: ``get_ident() == MAIN_IDENT`` is the main-thread
#: test without a Python-level call (``threading.current_thread()`` is one).
MAIN_IDENT = MAIN_THREAD.ident

_serving_loop: IOLoop | None = None  # the IOLoop whose run_until() the main thread is in
_sending = 0  # > 0 while the main thread is inside MainSending
_pending: tuple | None = None  # (signum, frame) held back until the block ends

try:  # signal.getsignal() converts to an enum first: ~5 us, once per wait
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover (not CPython)
    _getsignal = signal.getsignal


def sigint_handler(signum: int, frame: FrameType | None) -> None:
    """yoton's SIGINT handler: KeyboardInterrupt, as Python's default, but
    raised only once the main thread has finished a yoton I/O pass or send."""
    global _pending
    loop = _serving_loop
    if loop is None and not _sending:
        signal.default_int_handler(signum, frame)
    _pending = (signum, frame)
    if loop is not None:
        loop.wake_from_signal()  # (takes no lock: we may have interrupted the main thread holding one)


def main_may_serve() -> bool:
    """Install :func:`sigint_handler` if SIGINT has Python's default handler;
    return whether the main thread may do yoton I/O (main thread only)."""
    try:
        handler = _getsignal(signal.SIGINT)
        if handler is signal.default_int_handler:
            signal.signal(signal.SIGINT, sigint_handler)
            return True
    except (ValueError, OSError):  # not the main interpreter
        return False
    return handler is sigint_handler


def interrupted() -> bool:
    """Whether a Ctrl-C waits for the main thread's block to end."""
    return _pending is not None


def shield_enter() -> bool:
    """Begin a block in which Ctrl-C waits (main thread only, the caller
    checked); False if yoton's handler is not the one installed (nothing
    then waits). A True must be followed by :func:`shield_exit`."""
    global _sending
    if _sending or _getsignal(signal.SIGINT) is sigint_handler or main_may_serve():
        _sending += 1
        return True
    return False


def shield_exit(undo: Callable[[Any], object] | None = None, arg: Any = None) -> None:
    """End a block begun by :func:`shield_enter` (that returned True). If a
    Ctrl-C came meanwhile, ``undo(arg)`` runs first, still shielded (a reader
    puts back what the interrupt keeps from its caller), then KeyboardInterrupt
    is raised."""
    global _sending, _pending
    if _pending is not None and undo is not None and _sending == 1 and _serving_loop is None:
        undo(arg)
    _sending -= 1
    # No Python call from here to the caller's next one: Python runs signal
    # handlers only at calls (and loop jumps), so a Ctrl-C arriving now is
    # raised there, after the caller has what we return.
    if not _sending and _serving_loop is None and _pending is not None:
        pending, _pending = _pending, None
        signal.default_int_handler(*pending)


class MainSending:
    """``with MainSending():`` around a send's locks and writes, in any thread:
    in the main thread, Ctrl-C waits for the end of the block (it raises
    KeyboardInterrupt there), as it does for an I/O pass."""

    __slots__ = ("_on",)

    def __enter__(self) -> MainSending:
        global _sending
        # (main_may_serve's usual answer first, without the call)
        self._on = on = get_ident() == MAIN_IDENT and bool(
            _sending or _getsignal(signal.SIGINT) is sigint_handler or main_may_serve()
        )
        if on:
            _sending += 1
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        global _sending, _pending
        if self._on:
            _sending -= 1
            if not _sending and _serving_loop is None and _pending is not None:
                pending, _pending = _pending, None
                signal.default_int_handler(*pending)
        return False


class MainServing:
    """``with MainServing(loop):`` around the main thread's run_until(): Ctrl-C
    wakes the loop and is raised when the block ends (main thread only; the
    caller checked :func:`main_may_serve`)."""

    __slots__ = ("_loop",)

    def __init__(self, loop: IOLoop) -> None:
        self._loop = loop

    def __enter__(self) -> MainServing:
        global _serving_loop
        _serving_loop = self._loop
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        serve_exit()
        return False


def serve_enter(loop: IOLoop) -> bool:
    """:func:`main_may_serve` and, if it may, the start of a :class:`MainServing`
    block for ``loop``, in one call (main thread only); a True must be
    followed by :func:`serve_exit`."""
    global _serving_loop
    if _getsignal(signal.SIGINT) is sigint_handler or main_may_serve():
        _serving_loop = loop
        return True
    return False


def serve_exit() -> None:
    """End a block begun by :func:`serve_enter`: a Ctrl-C that came meanwhile is raised now."""
    global _serving_loop, _pending
    _serving_loop = None
    if _pending is not None:
        pending, _pending = _pending, None
        signal.default_int_handler(*pending)
