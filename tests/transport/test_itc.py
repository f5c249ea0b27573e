"""itc://NAME: contexts of one process linked without sockets, with TCP's semantics.

Both ends are real contexts of this process, each with its own I/O loop; what
is checked is what the README promises for TCP: order, closing with reasons,
flush, backpressure and stalls, the timedout/closed signals, the handshake's
checks, limits, and nothing left behind.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import pytest
from helpers import record
from transport_util import HOST, Resources, wait_for

import yoton
from yoton.errors import AuthenticationError, BindError, ConnectError, ConnectHandshakeError, FlushTimeout, WouldBlock

pytestmark = pytest.mark.timeout(60)

_names = iter(range(10**9))


def unique(prefix: str = "t") -> str:
    """An itc name no other test of this process uses."""
    return f"itc://{prefix}-{next(_names)}-{time.monotonic_ns()}"


def itc_pair(make_ctx, a_kwargs=None, b_kwargs=None):
    a, b = make_ctx(**(a_kwargs or {})), make_ctx(**(b_kwargs or {}))
    address = unique()
    bound = a.bind(address)
    conn = b.connect(address, timeout=3.0)
    assert wait_for(lambda: bound.is_connected and conn.is_connected)
    return a, b, bound, conn


def test_every_channel_kind_and_bodies_passed_by_reference(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx)
    assert isinstance(bound, yoton.ItcConnection) and isinstance(conn, yoton.ItcConnection)
    assert conn.id2 == a.id and bound.id2 == b.id and conn.pid2 == bound.pid1
    assert conn.hostname2 == bound.hostname1 == conn.hostname1 and conn.port == 0

    class Calc(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    Calc(a, "calc").set_mode("thread")
    assert yoton.ReqChannel(b, "calc").add(40, 2).result(5.0) == 42
    state_a, state_b = yoton.StateChannel(a, "st"), yoton.StateChannel(b, "st")
    state_a.send("on")
    assert wait_for(lambda: state_b.recv() == "on")
    sub, pub = yoton.SubChannel(a, "bin", yoton.BINARY), yoton.PubChannel(b, "bin", yoton.BINARY)
    big = bytes(range(256)) * (40 << 12)  # 10 MiB
    pub.send(big)
    got = sub.recv(5.0)
    assert got is big  # (no copy anywhere on the way)
    obj_sub, obj_pub = yoton.SubChannel(b, "obj", yoton.OBJECT), yoton.PubChannel(a, "obj", yoton.OBJECT)
    obj_pub.send({"k": (1, 2.5)})
    assert obj_sub.recv(5.0) == {"k": (1, 2.5)}
    st = conn.statistics()
    assert st["bytes_out"] > len(big) and st["state"] == "CONNECTED" and bound.statistics()["packages_in"] >= 3


def test_100000_messages_from_four_threads_keep_each_threads_order(make_ctx):
    n_threads, per_thread = 4, 25_000
    a, b, _, _ = itc_pair(make_ctx, {"queue_params": (200_000, "old")})
    sub = yoton.SubChannel(a, "many")
    sub.set_sync_mode(True)
    pub = yoton.PubChannel(b, "many")

    def send(t):
        for i in range(per_thread):
            pub.send(f"{t}:{i}")

    threads = [threading.Thread(target=send, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    got: list = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= n_threads * per_thread, 30.0), len(got)
    for thread in threads:
        thread.join(5.0)
    seqs: dict = {}
    for message in got:
        t, i = message.split(":")
        seqs.setdefault(t, []).append(int(i))
    assert len(got) == n_threads * per_thread
    assert all(seq == list(range(per_thread)) for seq in seqs.values())


def test_close_delivers_what_was_queued_then_both_ends_close_with_their_reasons(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx, {"queue_params": (20_000, "old")})
    sub = yoton.SubChannel(a, "last")
    pub = yoton.PubChannel(b, "last")
    ours, theirs = record(conn.closed), record(bound.closed)
    for i in range(10_000):
        pub.send(str(i))
    conn.close("bye now")  # (returns once closed: the queue went first)
    assert wait_for(lambda: ours and theirs)
    assert [e[2] for e in ours] == ["bye now"] and [e[2] for e in theirs] == ["Closed from other end."]
    assert sub.recv_all() == [str(i) for i in range(10_000)]
    assert not conn.is_alive and not bound.is_alive and a.connection_count == b.connection_count == 0


def test_close_on_problem_reaches_the_peer_as_dropped_and_a_context_close_as_closed(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx)
    theirs = record(bound.closed)
    conn.close_on_problem("gone")
    assert wait_for(lambda: theirs) and theirs[0][2] == "Other end dropped the connection."
    a, b, bound, conn = itc_pair(make_ctx)
    theirs = record(conn.closed)
    a.close()
    assert wait_for(lambda: theirs) and theirs[0][2] == "Closed from other end."
    assert bound.close_reason == "Closed by the context."


def test_flush_waits_for_the_peer_to_take_everything(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx)
    sub = yoton.SubChannel(a, "flush", yoton.BINARY)
    pub = yoton.PubChannel(b, "flush", yoton.BINARY)
    link = bound._link
    a.router.call_soon(a.router.hold_reading, link, "test")  # (the receiver takes nothing)
    assert wait_for(lambda: link.read_holds)
    pub.send(b"x" * 1000)
    with pytest.raises(FlushTimeout):
        conn.flush(0.3)
    a.router.release_reading(link, "test")
    conn.flush(3.0)
    b.flush(3.0)
    assert sub.recv(3.0) == b"x" * 1000


def test_backpressure_then_a_stall_when_the_peer_takes_nothing(make_ctx, caplog):
    kib = 1024
    a, b, bound, conn = itc_pair(make_ctx, {"queue_params": (100_000, "old")}, {"max_queue_bytes": 64 * kib})
    sub = yoton.SubChannel(a, "bp", yoton.BINARY)
    pub = yoton.PubChannel(b, "bp", yoton.BINARY)
    link = bound._link
    a.router.call_soon(a.router.hold_reading, link, "test")
    assert wait_for(lambda: link.read_holds)
    body = b"y" * 1000
    sent = 0
    with pytest.raises(WouldBlock):  # the queue fills: a sender that must not wait is told so
        while sent < 1000:
            pub.send(sent.to_bytes(4, "little") + body, block=False)
            sent += 1
    assert 50 < sent < 100, sent
    # a waiting sender waits while the peer may still take data; it takes some now
    a.router.release_reading(link, "test")
    for i in range(sent, sent + 500):
        pub.send(i.to_bytes(4, "little") + body, block=2.0)
    sent += 500
    got: list = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= sent, 5.0)
    assert [int.from_bytes(m[:4], "little") for m in got] == list(range(sent))  # nothing lost, in order
    # the peer stops taking for longer than the timeout: the connection stalls and discards, counted
    a.router.call_soon(a.router.hold_reading, link, "test")
    assert wait_for(lambda: link.read_holds)
    with caplog.at_level(logging.WARNING, logger="yoton"):
        t0 = time.monotonic()
        for _ in range(300):
            pub.send(body)  # (blocking sends: they must not wait for ever)
        took = time.monotonic() - t0
    assert took < conn.timeout + 3.0 and conn.statistics()["stalled"]
    assert b.statistics()["discarded_outgoing"] > 0
    assert any("discarding the oldest" in r.getMessage() for r in caplog.records)
    a.router.release_reading(link, "test")


def test_timedout_when_the_peers_loop_does_not_run_and_back_when_it_does(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx)
    timedout = record(conn.timedout)
    time.sleep(2 * conn.timeout)
    yoton.process_events()
    assert timedout == []  # (an idle link is not a silent one: its peer's loop says it runs)
    t0 = time.monotonic()
    stuck = conn.timeout + 1.5
    a.router.call_soon(time.sleep, stuck)  # the binding context's loop is stuck (as a stopped process)
    assert wait_for(lambda: len(timedout) >= 2, stuck + 5.0), timedout
    assert [e[2] for e in timedout] == [True, False]
    # (noticed after the timeout, and well before the loop runs again: generous for a loaded machine)
    assert conn.timeout - 0.3 <= timedout[0][0] - t0 < stuck, timedout[0][0] - t0
    assert conn.is_connected and not conn.is_timedout


def test_handshake_checks_self_connect_and_auth_keys(make_ctx):
    a = make_ctx()
    address = unique()
    bound = a.bind(address)
    with pytest.raises(ConnectHandshakeError, match="cannot connect to self"):
        a.connect(address, timeout=1.0)
    assert bound.is_waiting
    keyed = make_ctx(auth_key=b"secret")
    kaddress = unique()
    kbound = keyed.bind(kaddress)
    with pytest.raises(AuthenticationError, match="wrong key"):
        make_ctx(auth_key=b"guess").connect(kaddress, timeout=1.0)
    with pytest.raises(AuthenticationError, match="authentication failed"):
        make_ctx().connect(kaddress, timeout=1.0)
    with pytest.raises(AuthenticationError, match="requires an auth key"):
        make_ctx(auth_key=b"secret").connect(address, timeout=1.0)
    assert kbound.is_waiting and bound.is_waiting
    friend = make_ctx(auth_key="secret")
    friend.connect(kaddress, timeout=1.0)
    assert wait_for(lambda: kbound.is_connected)


def test_a_body_over_the_receivers_limit_closes_the_link_there(make_ctx):
    a, b, bound, conn = itc_pair(make_ctx, {"max_package_size": 1000})
    theirs, ours = record(bound.closed), record(conn.closed)
    yoton.PubChannel(b, "big", yoton.BINARY).send(b"z" * 2000)
    assert wait_for(lambda: theirs and ours)
    assert theirs[0][2] == "Package too large (2000 bytes; the limit is 1000)."
    assert ours[0][2] == "Other end dropped the connection."


def test_names_are_per_process_and_a_connect_waits_for_the_bind(make_ctx):
    address = unique()
    make_ctx().bind(address)
    with pytest.raises(BindError, match="another bind of this process"):
        make_ctx().bind(address)
    with pytest.raises(ConnectError, match="nothing bound to it"):
        make_ctx().connect(unique(), timeout=0.2)
    late = unique()
    binder = make_ctx()
    timer = threading.Timer(0.2, binder.bind, (late,))
    timer.start()
    conn = make_ctx().connect(late, timeout=3.0)
    timer.join()
    assert conn.is_connected and conn.id2 == binder.id
    with pytest.raises(ValueError, match="needs a name"):
        make_ctx().bind("itc://")


def test_max_connections_and_a_mesh_across_transports(make_ctx):
    hub = make_ctx()
    address = unique()
    first = hub.bind(address, max_connections=2)
    peers = [make_ctx() for _ in range(3)]
    for p in peers[:2]:
        p.connect(address, timeout=2.0)
    with pytest.raises(ConnectHandshakeError, match="max_connections=2"):
        peers[2].connect(address, timeout=2.0)
    assert wait_for(lambda: hub.connection_count == 2) and first.is_connected
    # itc and tcp links in one network: a package crosses both
    far = make_ctx()
    tcp = far.bind(f"{HOST}:0")
    peers[0].connect(f"{HOST}:{tcp.port}", timeout=3.0)
    assert wait_for(lambda: tcp.is_connected)
    sub = yoton.SubChannel(far, "mesh")
    time.sleep(0.05)
    yoton.PubChannel(peers[1], "mesh").send("peer1 -itc- hub -itc- peer0 -tcp- far")
    assert sub.recv(3.0) == "peer1 -itc- hub -itc- peer0 -tcp- far"


def test_a_context_with_itc_and_tcp_links_sends_each_its_own_form_in_order(make_ctx):
    # (the router queues Package objects on an itc link and (header, body) pairs on a tcp one)
    hub, near, far = make_ctx(), make_ctx(), make_ctx()
    address = unique()
    hub.bind(address)
    tcp = hub.bind(f"{HOST}:0")
    near.connect(address, timeout=2.0)
    far.connect(f"{HOST}:{tcp.port}", timeout=3.0)
    assert wait_for(lambda: hub.connection_count == 2 and tcp.is_connected)
    subs = [yoton.SubChannel(ctx, "both") for ctx in (near, far)]  # (their queues hold 10000)
    pub = yoton.PubChannel(hub, "both")
    for i in range(2000):
        pub.send(str(i))
    for sub in subs:
        got: list = []
        assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= 2000, 10.0), len(got)
        assert got == [str(i) for i in range(2000)]


def test_what_was_sent_before_the_link_came_goes_over_it_first(make_ctx):
    # (the startup queue holds (header, body) pairs: the itc link takes them as packages)
    a, b = make_ctx(), make_ctx()
    address = unique()
    b.bind(address)
    sub = yoton.SubChannel(b, "early")
    pub = yoton.PubChannel(a, "early")
    for i in range(50):
        pub.send(f"before {i}")
    a.connect(address, timeout=2.0)
    pub.send("after")
    got: list = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= 51, 5.0), got
    assert got == [f"before {i}" for i in range(50)] + ["after"]


def test_waiting_threads_do_not_poll_while_the_peer_is_in_this_process(make_ctx):
    # (a polling reader takes the GIL the peer's thread needs to answer: round trips took ~6x as long)
    a, b, bound, conn = itc_pair(make_ctx)
    tcp = a.bind(f"{HOST}:0")
    make_ctx().connect(f"{HOST}:{tcp.port}", timeout=3.0)
    assert wait_for(lambda: a.router.loop.no_spin == 1 and b.router.loop.no_spin == 1)  # (set on each loop side)
    conn.close()
    assert wait_for(lambda: a.router.loop.no_spin == 0 and b.router.loop.no_spin == 0)
    assert a.router.loop.spin == a.spin  # (the setting itself is left alone: TCP peers get it again)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts fds in /proc")
def test_a_pair_leaves_nothing_behind(make_ctx):
    a, b, _, _ = itc_pair(make_ctx)  # (warm-up: lazily made helpers)
    a.close()
    b.close()
    before = Resources()
    for _ in range(3):
        a, b = yoton.Context(), yoton.Context()
        address = unique()
        a.bind(address, max_connections=None)
        b.connect(address, timeout=2.0)
        yoton.PubChannel(a, "x").send("hi")
        a.close()
        b.close()
    before.assert_back()
