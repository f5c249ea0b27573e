"""Plain helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import time

import yoton


def wait_until(cond, timeout: float = 5.0, what: str = "condition", pump: bool = False, fail: bool = True) -> bool:
    """The tests' one way to wait: poll ``cond()`` until it is true or
    ``timeout`` seconds have passed; no test sleeps longer than it must.

    Returns True as soon as ``cond()`` is. At the deadline: raises
    AssertionError naming ``what``, or with ``fail=False`` returns
    ``bool(cond())``. With ``pump`` the yoton event queue is processed while
    waiting (signals, event-mode handlers), else the poll sleeps 2 ms.
    (The other wait helpers of tests/ are this one with other defaults.)
    """
    deadline = time.monotonic() + timeout
    while not cond():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            if cond():
                return True
            if fail:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return False
        if pump:
            yoton.process_events(min(0.01, remaining))
        else:
            time.sleep(min(0.002, remaining))
    return True


def link(binder, connector, timeout: float = 5.0):
    """``binder`` binds a fresh port on 127.0.0.1 and ``connector`` connects; return the bound connection."""
    conn = binder.bind("127.0.0.1:0")
    other = connector.connect(f"127.0.0.1:{conn.port1}", timeout=timeout)
    wait_until(lambda: conn.is_connected and other.is_connected, timeout, "the connection")
    return conn


class _Events(list):
    """A list a signal's handler appends to (it holds the handler: signals keep weak references)."""


def record(signal_, timed: bool = True) -> list:
    """Bind a handler to ``signal_`` and return the list it fills: one entry per
    emission, ``(time.monotonic(), *args)`` (or ``args`` with ``timed=False``)."""
    events = _Events()

    def handler(*args):
        events.append((time.monotonic(), *args) if timed else args)

    events.handler = handler  # (kept alive as long as the list)
    signal_.bind(handler)
    return events


def random_bytes(seed: int, n: int) -> bytes:
    """``n`` reproducible random bytes (``random.Random(seed).randbytes(n)``, which needs Python 3.9)."""
    import random

    return random.Random(seed).getrandbits(8 * n).to_bytes(n, "little") if n else b""
