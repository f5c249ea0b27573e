"""Fixtures for interop tests: peers running the original yoton 2.2 or ours."""

from __future__ import annotations

import sys

import pytest
from interop_helpers import SRC, PeerProcess

# The test process itself uses ours (src layout, maybe not installed).
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


@pytest.fixture
def peer():
    """Factory: ``peer("orig" | "ours", name="")`` -> a started PeerProcess, killed at teardown."""
    started: list[PeerProcess] = []

    def start(impl: str, name: str = "") -> PeerProcess:
        p = PeerProcess(impl, name)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        p.close()


@pytest.fixture
def context(ctx):
    """Factory for contexts of OUR yoton in the test process (tests/conftest.py's ``ctx``)."""
    return ctx
