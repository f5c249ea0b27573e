"""Plain helpers shared by test modules (fixtures live in the conftest files)."""

from __future__ import annotations

import time

import yoton


def wait_until(cond, timeout: float = 5.0, what: str = "condition", pump: bool = False) -> None:
    """Poll ``cond()`` until true; raise AssertionError naming ``what`` at the deadline.

    With ``pump`` the yoton event queue is processed between polls (for
    signals and event-mode handlers).
    """
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if pump:
            yoton.process_events(False)
        time.sleep(0.002)


def link(binder, connector, timeout: float = 5.0):
    """``binder`` binds a fresh port on 127.0.0.1 and ``connector`` connects; return the bound connection."""
    conn = binder.bind("127.0.0.1:0")
    other = connector.connect(f"127.0.0.1:{conn.port1}", timeout=timeout)
    wait_until(lambda: conn.is_connected and other.is_connected, timeout, "the connection")
    return conn
