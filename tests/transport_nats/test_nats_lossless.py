"""Lossless mode (``connect(..., lossless=True)``): packages go through a JetStream stream.

Publishers wait until the stream stored each message; every context reads
the stream through a durable pull consumer of its own, so what was published
while it was cut off (or while it held reading) comes later, in order, and
the router drops what it saw twice.
"""

from __future__ import annotations

import pytest
from helpers import wait_until
from nats_helpers import Proxy, send_to_a_slow_reader

import yoton

pytestmark = pytest.mark.timeout(90)


class Calc(yoton.RepChannel):
    def add(self, x, y):
        return x + y


def _collect(sub, n, timeout):
    got: list = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= n, timeout, f"{n} messages")
    return got


def test_patterns_in_lossless_mode(nats_server, nats_ctx):
    a, ca = nats_ctx(nats_server.url, lossless=True)
    b, _ = nats_ctx(nats_server.url, lossless=True)
    assert ca.statistics()["subscriptions"] == 0  # (all comes through the stream's consumer)
    sub = yoton.SubChannel(b, "ll")
    pub = yoton.PubChannel(a, "ll")
    for i in range(500):
        pub.send(str(i))
    assert _collect(sub, 500, 10) == [str(i) for i in range(500)]
    rep = Calc(b, "ll-calc")
    rep.set_mode("thread")
    req = yoton.ReqChannel(a, "ll-calc")
    assert [req.add(i, 1).result(5) for i in range(10)] == list(range(1, 11))


def test_without_jetstream_lossless_mode_is_refused(nats_servers, ctx):
    server = nats_servers(jetstream=False)
    c = ctx()
    with pytest.raises(yoton.ConnectError, match="lossless mode needs JetStream"):
        c.connect(server.url, timeout=3, lossless=True)
    assert len(c.connections_all) == 0


def test_nothing_lost_across_a_server_restart(nats_servers, nats_ctx):
    server = nats_servers()  # (its JetStream store survives the restart)
    options = dict(lossless=True, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    a, ca = nats_ctx(server.url, **options)
    b, cb = nats_ctx(server.url, **options)
    sub = yoton.SubChannel(b, "restart")
    pub = yoton.PubChannel(a, "restart")
    for i in range(100):
        pub.send(str(i))
    got = _collect(sub, 100, 10)
    server.stop()
    for i in range(100, 200):  # sent while the server is down: they wait in a's send queue
        pub.send(str(i))
    server.start()
    got += _collect(sub, 100, 15)
    assert got == [str(i) for i in range(200)]
    assert ca.statistics()["reconnects"] == 1 and cb.statistics()["reconnects"] == 1


def test_a_subscriber_that_was_cut_off_gets_what_it_missed(nats_server, nats_ctx):
    # b reaches the server through a proxy that cuts it off for a while; what a
    # publishes meanwhile waits in the stream for b's consumer
    proxy = Proxy(nats_server.port)
    try:
        a, _ = nats_ctx(nats_server.url, lossless=True)
        b, cb = nats_ctx(proxy.url, lossless=True, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        sub = yoton.SubChannel(b, "away")
        pub = yoton.PubChannel(a, "away")
        pub.send("0")
        got = _collect(sub, 1, 10)
        proxy.cut()
        wait_until(lambda: cb.server == "", 5, "b to notice")
        for i in range(1, 300):
            pub.send(str(i))
        a.flush(5)  # (all stored: the stream has them, b has none)
        assert sub.pending == 0
        proxy.mend()
        got += _collect(sub, 299, 10)
        assert got == [str(i) for i in range(300)]
        assert cb.statistics()["reconnects"] == 1
    finally:
        proxy.close()


def test_replicated_in_a_cluster(nats_cluster, nats_ctx, network):
    nodes = nats_cluster(jetstream=True)
    address = ",".join(n.url for n in nodes)
    # (deadlines, not waits: a replicated stream's group elects its leader first,
    # which takes seconds on a loaded machine running three servers)
    a, ca = nats_ctx(address, lossless=True, replicas=3, timeout=25)
    b, _ = nats_ctx(address, lossless=True, replicas=3, timeout=25)
    sub = yoton.SubChannel(b, "r3")
    pub = yoton.PubChannel(a, "r3")
    for i in range(100):
        pub.send(str(i))
    assert _collect(sub, 100, 25) == [str(i) for i in range(100)]
    streams = nodes[0].monitor("jsz?streams=true&accounts=true&config=true")
    found = [
        s
        for account in streams.get("account_details", [])
        for s in account.get("stream_detail", [])
        if s["name"] == f"yoton-{network}"
    ]
    assert found and found[0]["config"]["num_replicas"] == 3


def test_a_slow_sync_subscriber_holds_the_consumer_not_the_memory(nats_server, nats_ctx):
    a, _ = nats_ctx(nats_server.url, lossless=True)
    b, cb = nats_ctx(nats_server.url, lossless=True, context_kwargs={"queue_params": (20, "old")})
    sub = yoton.SubChannel(b, "slow")
    sub.set_sync_mode(True)
    pub = yoton.PubChannel(a, "slow")
    n = 400
    got = send_to_a_slow_reader(pub, sub, n, every=40, pause=0.02)
    assert got == [str(i) for i in range(n)]
    assert cb.statistics()["discarded_incoming"] == 0 and sub.statistics()["discarded"] == 0


def test_while_down_senders_wait_and_nothing_is_discarded(nats_servers, nats_ctx):
    server = nats_servers()
    a, ca = nats_ctx(server.url, lossless=True, max_reconnect_attempts=-1, context_kwargs={"max_queue_bytes": 20_000})
    pub = yoton.PubChannel(a, "wait")
    server.stop()
    wait_until(lambda: ca.server == "", 5, "the link to notice")
    with pytest.raises(yoton.WouldBlock):
        for _ in range(1000):
            pub.send("x" * 100, block=False)
    # longer than the connection's timeout: a core link would be stalled and discard by now
    assert not wait_until(lambda: ca.statistics()["stalled"], 1.0, fail=False)
    with pytest.raises(yoton.WouldBlock):
        pub.send("y" * 100, block=0.2)
    assert ca.statistics()["discarded"] == 0 and a.statistics()["discarded_outgoing"] == 0
