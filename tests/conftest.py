"""Shared helpers for the in-process integration tests (real sockets on 127.0.0.1).

Fixtures:

* ``wait_for(pred, timeout=3.0, events=True)`` -> bool: poll ``pred`` until it is
  true or the deadline passes; with ``events`` it runs ``yoton.process_events``
  between polls (so signals are delivered), otherwise it only sleeps briefly.
* ``free_port()`` -> int: a TCP port on 127.0.0.1 that was free a moment ago.
* ``ctx(**kwargs)`` -> Context: a factory; every context made is closed at teardown.
* ``bind_free(context, name='')`` -> the waiting connection of a bind to a free port.
* ``settle(contexts)``: every context broadcasts a marker and waits for everyone
  else's; afterwards all packages sent earlier (like the NEW_CONNECTION context
  message of a ``connect``) have been handled everywhere.
* ``pair(a_kwargs=None, b_kwargs=None)`` -> (a, b, conn_a, conn_b): ``a`` bound,
  ``b`` connected to it, both ends connected and settled.
"""

from __future__ import annotations

import socket

import pytest
from helpers import wait_until

import yoton


def _wait_for(
    pred, timeout: float = 3.0, events: bool = True, what: str = "condition", pump: bool | None = None
) -> bool:
    """helpers.wait_until, returning False at the deadline (pumping events by default)."""
    return wait_until(pred, timeout, what, pump=events if pump is None else pump, fail=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def wait_for():
    """``wait_for(pred, timeout=3.0, events=True)``: poll until ``pred()`` or the deadline; returns the result."""
    return _wait_for


@pytest.fixture
def free_port():
    """``free_port()``: a port on 127.0.0.1 that nothing was bound to a moment ago."""
    return _free_port


@pytest.fixture
def ctx():
    """Factory for yoton contexts; all are closed at teardown."""
    made = []

    def make(*args, **kwargs):
        c = yoton.Context(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in reversed(made):
        try:
            c.close()
        except Exception:  # a broken close must not hide the test's own result
            pass


def _bind_free(context, name: str = ""):
    """Bind ``context`` to a free port on 127.0.0.1 (robust against races via max_tries)."""
    return context.bind(f"127.0.0.1:{_free_port()}", max_tries=16, name=name)


@pytest.fixture
def bind_free():
    """``bind_free(context, name='')``: bind to a free local port; returns the waiting connection."""
    return _bind_free


def _settle(contexts, timeout: float = 5.0) -> None:
    pubs = [yoton.PubChannel(c, "_yoton_test_settle") for c in contexts]
    subs = [yoton.SubChannel(c, "_yoton_test_settle") for c in contexts]
    try:
        for k, pub in enumerate(pubs):
            pub.send(str(k))
        got = [set() for _ in contexts]

        def done():
            for k, sub in enumerate(subs):
                got[k].update(sub.recv_all())
            return all(len(g) == len(contexts) - 1 for g in got)

        assert _wait_for(done, timeout, events=False), f"network did not settle: {got}"
    finally:
        for channel in pubs + subs:
            channel.close()


@pytest.fixture
def settle():
    """``settle(contexts)``: wait until every context heard a marker from every other."""
    return _settle


@pytest.fixture
def pair(ctx):
    """``pair(**context_kwargs)`` -> (a, b, conn_a, conn_b): ``a`` bound, ``b`` connected to it."""

    def make(a_kwargs=None, b_kwargs=None):
        a = ctx(**(a_kwargs or {}))
        b = ctx(**(b_kwargs or {}))
        ca = _bind_free(a, "bound")
        cb = b.connect(f"127.0.0.1:{ca.port1}", timeout=3.0, name="connected")
        assert _wait_for(lambda: ca.is_connected and cb.is_connected, 3.0, events=False)
        _settle([a, b])
        return a, b, ca, cb

    return make
