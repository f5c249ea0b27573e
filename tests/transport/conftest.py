"""Fixtures for the transport tests (real sockets on 127.0.0.1)."""

from __future__ import annotations

import pytest

import yoton
from transport_util import RawClient


@pytest.fixture
def make_ctx():
    """Factory for contexts; all are closed at teardown."""
    made = []

    def make(**kwargs):
        ctx = yoton.Context(**kwargs)
        made.append(ctx)
        return ctx

    yield make
    for ctx in reversed(made):
        try:
            ctx.close()
        except Exception:  # a broken close must not hide the test's own result
            pass


@pytest.fixture
def raw_client():
    """Factory ``raw_client(port)`` -> RawClient; all are closed at teardown."""
    made = []

    def make(port, timeout=5.0):
        client = RawClient(port, timeout)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
