"""Fixtures for the transport tests (real sockets on 127.0.0.1)."""

from __future__ import annotations

import pytest
from transport_util import RawClient


@pytest.fixture
def make_ctx(ctx):
    """The ``ctx`` factory of tests/conftest.py, under the name the transport tests use."""
    return ctx


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
