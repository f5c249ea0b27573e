"""Binds: ports the system chooses, port walks that fail with reasons, and one bind for many peers.

Real sockets on 127.0.0.1 between contexts of this process (the yoton 2.2
peer on a many-peer bind is in tests/interop/test_interop_network.py).
"""

from __future__ import annotations

import gc
import logging
import socket
import sys
import time
import tracemalloc

import pytest
from helpers import record as record_timed
from transport_util import HOST, Resources, wait_for

import yoton
from yoton.errors import BindError, ConnectError, ConnectHandshakeError

pytestmark = pytest.mark.timeout(60)


def record(signal_) -> list:
    return record_timed(signal_, timed=False)


# -- ports ----------------------------------------------------------------------------------


def test_port_zero_takes_a_free_port_and_connect_reaches_it(make_ctx):
    a, b = make_ctx(), make_ctx()
    conn = a.bind("localhost:0")
    assert conn.port > 0 and conn.port == conn.port1
    with socket.socket() as probe:  # the port is really ours: nobody else may bind it
        with pytest.raises(OSError):
            probe.bind((HOST, conn.port))
    other = b.connect(f"localhost:{conn.port}", timeout=3.0)
    assert wait_for(lambda: conn.is_connected) and other.port == conn.port
    sub, pub = yoton.SubChannel(b, "port0"), yoton.PubChannel(a, "port0")
    pub.send("reached")
    assert sub.recv(3.0) == "reached"


def _three_taken_ports() -> tuple:
    """Three consecutive ports held by listening sockets: what a port walk of 3 tries meets."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((HOST, 0))
            start = s.getsockname()[1]
        if start > 65000:
            continue
        held = []
        try:
            for port in range(start, start + 3):
                s = socket.socket()
                held.append(s)
                s.bind((HOST, port))
                s.listen(1)
            return start, held
        except OSError:
            for s in held:
                s.close()
    pytest.skip("found no three consecutive free ports")


def test_exhausted_port_walk_says_which_ports_were_tried_and_why(make_ctx, caplog):
    start, held = _three_taken_ports()
    try:
        with caplog.at_level(logging.INFO, logger="yoton"), pytest.raises(BindError) as info:
            make_ctx().bind(f"localhost:{start}", max_tries=3)
    finally:
        for s in held:
            s.close()
    text = str(info.value)
    assert f"any of the 3 ports tried (ports {start}, {start + 1}, {start + 2} (3): Address already in use" in text
    assert "Bind to port 0" in text and "ipc://" in text, text
    lines = [r.getMessage() for r in caplog.records if "cannot bind" in r.getMessage()]
    ports = range(start, start + 3)
    assert lines == [f"yoton: cannot bind to 127.0.0.1 port {p}: Address already in use (EADDRINUSE)" for p in ports]
    assert isinstance(info.value, OSError)


def test_a_host_that_is_not_ours_fails_at_once_without_walking_the_ports(make_ctx):
    with pytest.raises(BindError) as info:
        make_ctx().bind("192.0.2.1:0", max_tries=50)  # (TEST-NET-1: never an address of this machine)
    text = str(info.value)
    assert "192.0.2.1 port 0" in text and "EADDRNOTAVAIL" in text, text
    assert "Bind to port 0" not in text  # (that would not help)


# -- one bind, many peers ------------------------------------------------------------------


def test_a_default_bind_serves_one_peer_and_stops_listening(make_ctx):
    a = make_ctx()
    conn = a.bind("localhost:0")
    accepted = record(conn.accepted)
    make_ctx().connect(f"localhost:{conn.port}", timeout=3.0)
    assert wait_for(lambda: accepted) and accepted == [(conn, conn)]
    with pytest.raises(ConnectError) as info:  # refused at the TCP level, as with yoton 2.2
        make_ctx().connect(f"localhost:{conn.port}", timeout=0.3)
    assert not isinstance(info.value, ConnectHandshakeError)
    assert a.connection_count == 1 and not a.router.listeners


def test_max_connections_admits_that_many_refuses_more_with_a_reason_and_takes_one_when_a_place_frees(make_ctx):
    a = make_ctx()
    first = a.bind("localhost:0", max_connections=3, name="server")
    accepted = record(first.accepted)
    clients = [make_ctx() for _ in range(4)]
    mine = [c.connect(f"localhost:{first.port}", timeout=3.0) for c in clients[:3]]
    assert wait_for(lambda: len(accepted) == 3)
    assert accepted[0] == (first, first)
    others = [conn for _, conn in accepted[1:]]
    assert all(isinstance(c, yoton.TcpConnection) and c is not first and c.name == "server" for c in others)
    assert sorted(c.id2 for c in a.connections) == sorted(c.id for c in clients[:3])
    assert all(c.port == first.port for c in a.connections)
    with pytest.raises(ConnectHandshakeError, match=r"takes no more peers \(max_connections=3\)"):
        clients[3].connect(f"localhost:{first.port}", timeout=2.0)
    # a peer leaves (the first one, even): its place is free again
    closed = record(first.closed)
    clients[0].close()
    assert wait_for(lambda: closed) and closed[0][1] == "Closed from other end."
    late = clients[3].connect(f"localhost:{first.port}", timeout=3.0)
    assert wait_for(lambda: len(accepted) == 4) and accepted[3][1].id2 == clients[3].id
    assert late.is_connected and a.connection_count == 3
    for c in mine[1:]:
        assert c.is_connected
    # close() on the bind's connection stops the bind; its other peers stay
    first.close()
    assert wait_for(lambda: not a.router.listeners)
    with pytest.raises(ConnectError):
        make_ctx().connect(f"localhost:{first.port}", timeout=0.3)
    assert a.connection_count == 3


def test_a_context_connecting_twice_to_a_many_peer_bind_gets_two_live_connections(make_ctx):
    """A hello carrying the id of a peer whose link still hears from it is a
    second connection, not a re-dial: the live link is not taken over."""
    server, client = make_ctx(), make_ctx()
    first = server.bind("localhost:0", max_connections=5)
    accepted = record(first.accepted)
    c1 = client.connect(f"localhost:{first.port}", timeout=3.0, name="c1")
    assert wait_for(lambda: len(accepted) == 1)
    c2 = client.connect(f"localhost:{first.port}", timeout=3.0, name="c2")
    assert wait_for(lambda: len(accepted) == 2)
    assert c1.is_connected and c2.is_connected
    assert server.connection_count == 2 and all(c.id2 == client.id for c in server.connections)
    assert all(c.statistics()["reconnects"] == 0 for c in server.connections)
    pub, sub = yoton.PubChannel(client, "twice"), yoton.SubChannel(server, "twice")
    back, back_sub = yoton.PubChannel(server, "back"), yoton.SubChannel(client, "back")
    for i in range(20):
        pub.send(f"m{i}")
        back.send(f"b{i}")
    assert [sub.recv(3.0) for _ in range(20)] == [f"m{i}" for i in range(20)]  # (each once: de-duplicated)
    assert [back_sub.recv(3.0) for _ in range(20)] == [f"b{i}" for i in range(20)]
    assert c1.is_connected and c2.is_connected and server.connection_count == 2


def test_closing_a_bind_still_waiting_stops_it_listening(make_ctx):
    a = make_ctx()
    first = a.bind("localhost:0", max_connections=None)
    first.close()
    assert not first.is_alive and wait_for(lambda: not a.router.listeners)
    with pytest.raises(ConnectError):
        make_ctx().connect(f"localhost:{first.port}", timeout=0.3)


def test_fifty_peers_on_one_bind_exchange_pubsub_and_reqrep(make_ctx):
    n = 50
    server = make_ctx()
    first = server.bind("localhost:0", max_connections=None)
    accepted = record(first.accepted)

    class Calc(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    rep = Calc(server, "calc")
    rep.set_mode("thread")
    news = yoton.PubChannel(server, "news")
    inbox = yoton.SubChannel(server, "inbox")
    clients = [make_ctx() for _ in range(n)]
    subs = [yoton.SubChannel(c, "news") for c in clients]
    pubs = [yoton.PubChannel(c, "inbox") for c in clients]
    reqs = [yoton.ReqChannel(c, "calc") for c in clients]
    t0 = time.monotonic()
    for c in clients:
        c.connect(f"localhost:{first.port}", timeout=5.0)
    assert wait_for(lambda: len(accepted) == n, 10.0), f"{len(accepted)} of {n} admitted"
    connect_time = time.monotonic() - t0
    assert server.connection_count == n and len({c.id2 for c in server.connections}) == n
    news.send("to all")
    assert all(sub.recv(5.0) == "to all" for sub in subs)
    for k, pub in enumerate(pubs):
        pub.send(f"from {k}")
    got: list = []
    assert wait_for(lambda: got.extend(inbox.recv_all()) or len(got) >= n, 10.0), f"{len(got)} of {n}"
    assert sorted(got) == sorted(f"from {k}" for k in range(n))
    futures = [req.add(k, 1000) for k, req in enumerate(reqs)]
    assert [f.result(10.0) for f in futures] == [k + 1000 for k in range(n)]
    # the peers form one network through the bind: what one publishes reaches the others
    chats = [yoton.SubChannel(c, "chat") for c in clients[1:]]
    yoton.PubChannel(clients[0], "chat").send("relayed")
    assert all(chat.recv(5.0) == "relayed" for chat in chats)
    print(f"{n} peers connected in {connect_time:.2f} s")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts fds in /proc")
def test_peers_coming_and_going_leave_nothing_behind(make_ctx):
    server = make_ctx()
    first = server.bind("localhost:0", max_connections=None)
    pub = yoton.PubChannel(server, "churn")
    address = f"localhost:{first.port}"

    def round_(k: int, size: int) -> None:
        clients = [yoton.Context() for _ in range(size)]
        try:
            subs = [yoton.SubChannel(c, "churn") for c in clients]
            for c in clients:
                c.connect(address, timeout=5.0)
            assert wait_for(lambda: server.connection_count >= size, 5.0)
            time.sleep(0.01)  # (the NEW_CONNECTION messages)
            pub.send(f"round {k}")
            assert all(sub.recv(5.0) == f"round {k}" for sub in subs)
        finally:
            for i, c in enumerate(clients):
                if i % 2:
                    c.close()
                else:  # half of them vanish without a goodbye: their sockets just close
                    for conn in c.connections:
                        conn.close_on_problem()
                    c.close()
        assert wait_for(lambda: server.connection_count == 0, 5.0), server.connections
        assert wait_for(lambda: not first._link.acceptor.links, 5.0)
        yoton.process_events()  # (the subscribers' 'received' events)

    round_(0, 10)  # (warm-up: lazily made helpers, caches)
    gc.collect()
    before = Resources()
    tracemalloc.start()
    try:
        round_(1, 10)
        gc.collect()
        base, _ = tracemalloc.get_traced_memory()
        for k in range(2, 8):
            round_(k, 10)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    before.assert_back()
    assert not server.router.links and len(server.router.listeners) == 1  # (still listening)
    growth = after - base
    # 60 more peers came and went. What may stay: the routing's de-duplication entry per
    # source it heard of (bounded by MAX_SOURCES) and a dict or set grown a size. One link
    # left behind would hold far more than the allowance (its read buffer alone is 256 KiB).
    assert growth < 60 * 1024, f"{growth} bytes more after 60 more peers came and went"
    print(f"memory after 60 more peers: {growth:+d} bytes")
