"""Fixtures for the NATS transport tests: real nats-server processes on 127.0.0.1.

* ``nats_server``: one JetStream-enabled server for the whole session (per
  xdist worker); tests keep apart by network name (the ``network`` fixture).
* ``nats_servers(**kwargs)``: a factory of servers of the test's own
  (to kill, restart, configure); all are killed at teardown.
* ``nats_cluster(size=3, jetstream=False)``: a cluster whose routes are up.
* ``network``: a network name no other test uses.
* ``nats_ctx(url, **connect_options)``: a Context connected to ``url`` on the
  test's network (closed at teardown), returning ``(context, connection)``.

Every test here is skipped, with the reason, when nats-py or a runnable
nats-server binary is missing.
"""

from __future__ import annotations

import itertools
import os

import pytest
from nats_helpers import server_binary, start_cluster, start_server, why_no_nats

_WHY = why_no_nats()
_names = itertools.count()


def pytest_collection_modifyitems(config, items):
    if _WHY is None:
        return
    skip = pytest.mark.skip(reason=f"NATS tests need nats-py and nats-server: {_WHY}")
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nats_binary():
    """Path of the nats-server binary."""
    return server_binary()


@pytest.fixture(scope="session")
def nats_server(nats_binary, tmp_path_factory):
    """A JetStream-enabled nats-server shared by this worker's tests."""
    server = start_server(nats_binary, tmp_path_factory.mktemp("nats-shared"))
    yield server
    server.stop()


@pytest.fixture
def nats_servers(nats_binary, tmp_path):
    """``nats_servers(**NatsServer kwargs)`` -> a started server of this test's own."""
    made = []

    def make(**kwargs):
        server = start_server(nats_binary, tmp_path / f"s{len(made)}", **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def nats_cluster(nats_binary, tmp_path):
    """``nats_cluster(size=3, jetstream=False)`` -> started nodes, routes up; all killed at teardown."""
    made = []

    def make(size: int = 3, jetstream: bool = False):
        nodes = start_cluster(nats_binary, tmp_path / f"cluster{len(made)}", size, jetstream)
        made.extend(nodes)
        return nodes

    yield make
    for node in made:
        node.stop()


@pytest.fixture
def network():
    """A network name of this test's own (tests share the session's server)."""
    return f"t{os.getpid()}x{next(_names)}"


@pytest.fixture
def nats_ctx(ctx, network):
    """``nats_ctx(url, **options)`` -> (context, connection) attached to ``url`` on the test's network."""

    def make(url, context_kwargs=None, **options):
        options.setdefault("network", network)
        options.setdefault("timeout", 5.0)
        context = ctx(**(context_kwargs or {}))
        conn = context.connect(url, **options)
        return context, conn

    return make
