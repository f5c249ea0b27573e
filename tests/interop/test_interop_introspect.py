"""Introspection across a yoton 2.2 relay: 2.2 knows nothing of slots 3 and 4,
and forwards the monitor's query and the snapshots like any package."""

import pytest
from helpers import link, wait_until

from yoton.introspect import Monitor

pytestmark = pytest.mark.timeout(60)


def test_a_monitor_reaches_introspecting_contexts_behind_a_yoton_2_2_relay(peer, ctx):
    """M - A - R - C: A and C are ours with introspect=True, R is the original
    yoton 2.2 in a subprocess; the monitor on M hears A and C."""
    relay = peer("orig", "R")
    a, c, m = ctx(introspect=True), ctx(introspect=True), ctx()
    for ours in (a, c):
        port = relay.bind()
        ours.connect(f"127.0.0.1:{port}", timeout=5.0)
    wait_until(lambda: relay.call("info")["connection_count"] == 2, 10.0, "the relay's two peers")
    link(a, m)
    snaps = Monitor(m).query(10.0, expect=2)
    assert sorted(snap["id"] for snap in snaps) == sorted(f"{x.id:016x}" for x in (a, c))
    behind = next(snap for snap in snaps if snap["id"] == f"{c.id:016x}")
    assert [conn["peer"] for conn in behind["connections"]] == [relay.id()]
