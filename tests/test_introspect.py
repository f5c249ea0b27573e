"""Introspection: Context(introspect=True) answers a Monitor anywhere in its network.

Real contexts on 127.0.0.1 in this process; the monitor reaches them through
the one it is connected to, over relays that do not introspect themselves.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from helpers import link, wait_until

import yoton
from yoton.introspect import MAX_ANSWERS, QUERY_SLOT, SNAPSHOT_SLOT, Monitor, snapshot
from yoton.messages import OBJECT

pytestmark = pytest.mark.timeout(30)


def ids(snapshots) -> list:
    return [snap["id"] for snap in snapshots]


def hexid(context) -> str:
    return f"{context.id:016x}"


def test_the_monitor_reaches_every_introspecting_context_through_relays(ctx):
    """A - R - C, R not introspecting; the monitor M connects to A. One query
    reaches all; A and C answer, R only passes query and answers on."""
    a, r, c = ctx(introspect=True), ctx(), ctx(introspect=True)
    m = ctx()
    link(a, r)
    link(r, c)
    link(a, m)
    monitor = Monitor(m)
    snaps = monitor.query(5.0, expect=2)
    assert sorted(ids(snaps)) == sorted([hexid(a), hexid(c)])
    assert a.introspect and not r.introspect
    # Nothing else answers late: a second query gets the same two, no more.
    assert sorted(ids(monitor.query(0.3))) == sorted([hexid(a), hexid(c)])
    assert monitor.ignored == 0


def test_a_snapshot_holds_the_context_its_connections_and_channels(ctx, wait_for):
    a, b = ctx(introspect=True), ctx()
    conn = link(a, b)
    conn.name = "to-b"
    pub = yoton.PubChannel(a, "news")
    sub = yoton.SubChannel(b, "news")
    req, rep = yoton.ReqChannel(a, "calc"), yoton.RepChannel(b, "calc")
    rep.set_mode("thread")
    state = yoton.StateChannel(a, "mode")
    for i in range(5):
        pub.send(str(i))
    state.send("on")
    assert req.echo("x").result(5.0)[0] == "x"
    assert wait_for(lambda: sub.pending == 5, events=False)
    snap = Monitor(b).query(5.0, expect=1)[0]
    assert snap == {**snap, "version": 1, "id": hexid(a), "pid": os.getpid(), "host": socket.gethostname()}
    assert snap["statistics"] == {**snap["statistics"], "discarded_outgoing": 0, "refused": 0}
    (connection,) = snap["connections"]
    assert connection["name"] == "to-b" and connection["state"] == "CONNECTED"
    assert connection["peer"] == hexid(b) and connection["peer_pid"] == os.getpid()
    assert connection["local"] == f"127.0.0.1:{conn.port1}" and connection["remote"].startswith("127.0.0.1:")
    assert connection["packages_out"] >= 5 + 1 + 2 and connection["packages_in"] >= 2  # (the query came in too)
    assert connection["bytes_out"] > 0 and connection["bytes_in"] > 0 and connection["discarded"] == 0
    channels = {(ch["kind"], ch["slot"]): ch for ch in snap["channels"]}
    assert set(channels) == {
        ("PubChannel", "news.txt.pub-sub"),
        ("ReqChannel", "calc.obj.req-rep"),
        ("StateChannel", "mode.txt.state"),
    }
    assert channels[("PubChannel", "news.txt.pub-sub")]["sent"] == 5
    assert channels[("ReqChannel", "calc.obj.req-rep")]["sent"] == 1
    assert channels[("StateChannel", "mode.txt.state")]["sent"] == 1
    assert snap["connection_count"] == 1 and snap["channel_count"] == 3
    # The same as made here, where it lives.
    local = snapshot(a)
    assert local["id"] == snap["id"] and {(ch["kind"], ch["slot"]) for ch in local["channels"]} == set(channels)


def test_a_context_that_does_not_introspect_says_nothing(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    assert Monitor(b).query(0.3) == []


def test_queries_are_answered_at_most_max_answers_per_second(ctx):
    a, b = ctx(introspect=True), ctx()
    link(a, b)
    # A flood of queries sent by hand: the service answers a burst, then refuses.
    got = []

    class Snapshots:
        slot_outgoing = slot_incoming = "(test)"
        closed = False

        def close(self):
            pass

    b.router.register(Snapshots(), None, SNAPSHOT_SLOT, lambda pkgs, link=None: got.extend(pkgs))
    query = OBJECT.message_to_bytes(("yoton-introspect", 1))
    t0 = time.monotonic()
    for n in range(5 * MAX_ANSWERS):
        b.router.send(QUERY_SLOT, query, 0, n + 1, force=True)
    wait_until(lambda: len(got) >= MAX_ANSWERS, 5.0, "the first answers")
    service = a._introspection
    wait_until(lambda: service.answered + service.dropped == 5 * MAX_ANSWERS, 5.0, "every query")
    took = time.monotonic() - t0
    # The bucket: a burst of MAX_ANSWERS, then MAX_ANSWERS per second of the time it took.
    assert MAX_ANSWERS <= service.answered <= MAX_ANSWERS + took * MAX_ANSWERS + 1, (service.answered, took)
    if took < 1.0:  # (a quick machine: most of the flood refused)
        assert service.dropped > 2 * MAX_ANSWERS
    assert {pkg.dest_id for pkg in got} == {b.id}  # addressed to the asking context


def test_malformed_queries_and_snapshots_are_counted_not_fatal(ctx):
    a, b = ctx(introspect=True), ctx()
    link(a, b)
    monitor = Monitor(b)
    for body in (b"\xff\x00garbage", OBJECT.message_to_bytes(("something else", 1)), OBJECT.message_to_bytes(7)):
        b.router.send(QUERY_SLOT, body, 0, 1, force=True)
    # A forged snapshot for no query, and one claiming another context's id.
    a.router.send(SNAPSHOT_SLOT, OBJECT.message_to_bytes({"id": "x"}), b.id, 99, force=True)
    wait_until(lambda: a._introspection.dropped == 3, 5.0, "the bad queries to be refused")
    wait_until(lambda: monitor.ignored == 1, 5.0, "the unasked-for snapshot to be ignored")
    assert ids(monitor.query(5.0, expect=1)) == [hexid(a)]  # (still answering)


def test_a_large_body_on_the_query_slot_is_refused_without_decoding(ctx, monkeypatch):
    from yoton import introspect

    a, b = ctx(introspect=True), ctx()
    link(a, b)
    decoded = []
    real = introspect._decode
    monkeypatch.setattr(introspect, "_decode", lambda data: decoded.append(len(data)) or real(data))
    big = OBJECT.message_to_bytes([{} for _ in range(100_000)])  # (costly to decode, and no query)
    b.router.send(QUERY_SLOT, big, 0, 1, force=True)
    wait_until(lambda: a._introspection.dropped == 1, 5.0, "the large body to be refused")
    assert decoded == []


def test_the_service_outlives_a_close_and_a_new_connection(ctx):
    a, b = ctx(introspect=True), ctx()
    link(a, b)
    monitor = Monitor(b)
    assert ids(monitor.query(5.0, expect=1)) == [hexid(a)]
    a.close()
    link(a, b)
    assert ids(monitor.query(5.0, expect=1)) == [hexid(a)]


def test_connection_statistics_count_packages_both_ways(ctx, wait_for):
    a, b = ctx(), ctx()
    conn = link(a, b)
    other = b.connections[0]
    pub, sub = yoton.PubChannel(a, "count"), yoton.SubChannel(b, "count")
    before_out, before_in = conn.statistics()["packages_out"], other.statistics()["packages_in"]
    for i in range(10):
        pub.send(str(i))
    a.flush()
    assert wait_for(lambda: sub.pending == 10, events=False)
    assert conn.statistics()["packages_out"] == before_out + 10
    assert other.statistics()["packages_in"] == before_in + 10
