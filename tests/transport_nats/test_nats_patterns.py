"""Every yoton pattern across a real nats-server: contexts attached with ``connect("nats://...")``."""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
from helpers import wait_until
from nats_helpers import send_to_a_slow_reader

import yoton
from yoton.transport.nats import NatsConnection, slot_subject

pytestmark = pytest.mark.timeout(60)


class Calc(yoton.RepChannel):
    def add(self, x, y):
        return x + y

    def fail(self, text):
        raise ValueError(text)

    def slow(self, seconds):
        threading.Event().wait(seconds)
        return seconds

    def who(self, i, seconds=0.0):
        threading.Event().wait(seconds)
        return i, hex(self._router.id)


def test_connect_returns_a_nats_connection(nats_server, nats_ctx, network):
    a, conn = nats_ctx(nats_server.url, name="bus")
    assert isinstance(conn, NatsConnection)
    assert conn.is_connected and conn.is_alive and not conn.is_waiting
    assert a.connections["bus"] is conn and a.connection_count == 1
    assert conn.network == network and conn.servers == [nats_server.url]
    assert conn.server == nats_server.url
    assert (conn.hostname2, conn.port2) == ("127.0.0.1", nats_server.port)
    assert conn.id1 == a.id and conn.id2 == 0
    stats = conn.statistics()
    assert stats["state"] == "CONNECTED" and stats["network"] == network and stats["subscriptions"] >= 2


@pytest.mark.parametrize(
    "kind,messages",
    [
        ("text", ["hello", "wörld ☃ 😀", "x" * 5000, "last"]),
        ("binary", [b"\x00", bytes(range(256)), os.urandom(300_000), b"end"]),
        ("object", [42, 3.5, None, [1, "a", (2, None)], {"k": (1, 2.0)}, "é" * 100]),
    ],
)
def test_pubsub_each_message_type(nats_server, nats_ctx, kind, messages):
    mtype = {"text": yoton.TEXT, "binary": yoton.BINARY, "object": yoton.OBJECT}[kind]
    a, _ = nats_ctx(nats_server.url)
    b, _ = nats_ctx(nats_server.url)
    # made after connect: the channel's constructor returns once the server has its subscription
    sub = yoton.SubChannel(b, "news", mtype)
    assert _subscribed(b, sub)
    pub = yoton.PubChannel(a, "news", mtype)
    for m in messages:
        pub.send(m)
    got = [sub.recv(block=5) for _ in messages]
    assert got == messages


def _subscribed(context, channel) -> bool:
    """Whether the context's NATS link subscribed to the channel's incoming slot."""
    subject = slot_subject(channel.slot_incoming, context.connections[0].network)
    link = context.connections[0]._link
    return any(s == subject for s, _ in list(link._subs))


def test_a_stream_arrives_whole_and_in_order_across_slots(nats_server, nats_ctx):
    # Two slots, interleaved: each has a subscription of its own, and the
    # router drops a package numbered below one it has seen from the same
    # source -- so this fails if the link took the subscriptions' messages
    # in any order but the server's.
    b, _ = nats_ctx(nats_server.url)
    subs = [yoton.SubChannel(b, "left"), yoton.SubChannel(b, "right")]
    a, _ = nats_ctx(nats_server.url)
    pubs = [yoton.PubChannel(a, "left"), yoton.PubChannel(a, "right")]
    n = 3000
    for i in range(n):
        pubs[i % 2].send(str(i))
    got: list = [[], []]
    wait_until(lambda: [g.extend(s.recv_all()) for g, s in zip(got, subs)] and sum(map(len, got)) >= n, 15, "all")
    assert got[0] == [str(i) for i in range(0, n, 2)]
    assert got[1] == [str(i) for i in range(1, n, 2)]
    assert b.statistics()["refused"] == 0


def test_a_package_larger_than_max_payload_goes_in_pieces(nats_server, nats_ctx):
    a, ca = nats_ctx(nats_server.url)
    b, _ = nats_ctx(nats_server.url)
    max_payload = ca._link.nc.max_payload
    sub = yoton.SubChannel(b, "big", yoton.BINARY)
    pub = yoton.PubChannel(a, "big", yoton.BINARY)
    wait_until(lambda: _subscribed(b, sub), 5, "the subscription")
    big = os.urandom(2 * max_payload + 12345)
    pub.send(b"before")
    pub.send(big)
    pub.send(b"after")
    assert sub.recv(block=5) == b"before"
    assert sub.recv(block=10) == big
    assert sub.recv(block=5) == b"after"


def test_request_reply(nats_server, nats_ctx):
    r, _ = nats_ctx(nats_server.url)
    rep = Calc(r, "calc")
    rep.set_mode("thread")
    q, _ = nats_ctx(nats_server.url)
    req = yoton.ReqChannel(q, "calc")
    assert req.add(2, 40).result(5) == 42
    assert req.add("a", "b").result(5) == "ab"
    with pytest.raises(yoton.RemoteError, match="kaboom"):
        req.fail("kaboom").result(5)
    with pytest.raises(yoton.RemoteError, match="no_such"):
        req.no_such().result(5)
    assert req.echo("x").result(5) == ("x", hex(r.id))
    # a reply that takes too long: result() times out, the future still completes
    future = req.slow(0.5)
    with pytest.raises(yoton.TimeoutError):
        future.result(0.05)
    assert future.result(5) == 0.5


def test_request_without_replier_is_cancelled_and_cancel_works(nats_server, nats_ctx):
    q, _ = nats_ctx(nats_server.url)
    req = yoton.ReqChannel(q, "nobody-here")
    future = req.add(1, 2)
    future.set_auto_cancel_timeout(0.3)
    with pytest.raises(yoton.CancelledError):
        future.result(5)
    other = req.add(1, 2)
    assert other.cancel() and other.cancelled()


def test_load_balanced_over_two_repliers_each_request_answered_once(nats_server, nats_ctx):
    repliers = []
    for _ in range(2):
        context, _ = nats_ctx(nats_server.url)
        rep = Calc(context, "lb")
        rep.set_mode("thread")
        repliers.append((context, rep))
    q, _ = nats_ctx(nats_server.url)
    req = yoton.ReqChannel(q, "lb")
    n = 24
    futures = [req.who(i, 0.02) for i in range(n)]
    results = [f.result(15) for f in futures]
    assert [i for i, _ in results] == list(range(n))
    by = Counter(who for _, who in results)
    assert set(by) == {hex(c.id) for c, _ in repliers}, by  # both served
    # each request once, nowhere twice (a replier counts once its reply is sent)
    wait_until(lambda: sum(rep.statistics()["served"] for _, rep in repliers) >= n, 5, "the count")
    assert sum(rep.statistics()["served"] for _, rep in repliers) == n
    assert all(rep.statistics()["refused"] == 0 for _, rep in repliers)


def _streams(server) -> set:
    details = server.monitor("jsz?streams=true&accounts=true").get("account_details", [])
    return {s["name"] for account in details for s in account.get("stream_detail", [])}


def test_state_reaches_a_late_joiner_after_the_setter_left(nats_server, nats_ctx, network):
    a, _ = nats_ctx(nats_server.url)
    assert f"KV_yoton-{network}" not in _streams(nats_server)  # (made with the first state channel)
    state_a = yoton.StateChannel(a, "mood")
    assert f"KV_yoton-{network}" in _streams(nats_server)
    state_a.send("sunny")
    a.flush(5)  # (the server confirmed what was published)
    a.close()
    c = yoton.Context()
    try:
        state_c = yoton.StateChannel(c, "mood")
        c.connect(nats_server.url, timeout=5, network=network)
        assert wait_until(lambda: state_c.recv() == "sunny", 5, "the kept state")
        # and a live change still travels: the state goes both ways
        d, _ = nats_ctx(nats_server.url)
        state_d = yoton.StateChannel(d, "mood")
        wait_until(lambda: state_d.recv() == "sunny", 5, "the state at a second late joiner")
        state_d.send("rainy")
        assert wait_until(lambda: state_c.recv() == "rainy", 5, "the new state")
    finally:
        c.close()


def test_state_without_jetstream_travels_as_over_tcp(nats_servers, nats_ctx):
    server = nats_servers(jetstream=False)
    a, ca = nats_ctx(server.url)
    state_a = yoton.StateChannel(a, "mood")
    assert ca._link._kv is None  # (no JetStream: the server keeps nothing)
    state_a.send("sunny")
    c, _ = nats_ctx(server.url)  # a's channel re-sends it when c joins (NEW_CONNECTION)
    state_c = yoton.StateChannel(c, "mood")
    # (c's channel came after the connect: ask a to re-send, as a state channel does for a newcomer)
    state_a.send_last()
    assert wait_until(lambda: state_c.recv() == "sunny", 5, "the state")


def test_sync_mode_is_lossless_with_a_slow_subscriber(nats_server, nats_ctx):
    a, _ = nats_ctx(nats_server.url)
    b, _ = nats_ctx(nats_server.url, context_kwargs={"queue_params": (50, "old")})
    sub = yoton.SubChannel(b, "flow")
    sub.set_sync_mode(True)
    pub = yoton.PubChannel(a, "flow")
    wait_until(lambda: _subscribed(a, pub), 5, "the publisher's status subscription")
    n = 600
    got = send_to_a_slow_reader(pub, sub, n, every=50, pause=0.01)
    assert got == [str(i) for i in range(n)]
    assert sub.statistics()["discarded"] == 0


def test_publisher_waits_for_a_full_sync_subscriber(nats_server, nats_ctx):
    a, _ = nats_ctx(nats_server.url)
    b, _ = nats_ctx(nats_server.url)
    sub = yoton.SubChannel(b, "full")
    sub.set_sync_mode(True)
    pub = yoton.PubChannel(a, "full")
    wait_until(lambda: _subscribed(a, pub) and _subscribed(b, sub), 5, "the subscriptions")
    n = 200_000
    with pytest.raises(yoton.WouldBlock):
        for i in range(n):
            pub.send(str(i), block=0.5)  # the subscriber reads nothing: its 'full' stops us
    assert wait_until(lambda: sub.pending >= 32, 5, "what was on its way")
    assert sub.pending < n and sub.statistics()["discarded"] == 0


def test_channels_made_and_closed_later_change_the_subscriptions(nats_server, nats_ctx):
    b, cb = nats_ctx(nats_server.url)
    before = cb.statistics()["subscriptions"]
    sub = yoton.SubChannel(b, "later")
    wait_until(lambda: cb.statistics()["subscriptions"] == before + 1, 5, "a subscription for the new channel")
    rep = Calc(b, "later-calc")
    wait_until(lambda: cb.statistics()["subscriptions"] == before + 3, 5, "two for a replier (all + any)")
    sub.close()
    rep.close()
    wait_until(lambda: cb.statistics()["subscriptions"] == before, 5, "the subscriptions dropped")


def test_flush_and_close(nats_server, nats_ctx):
    a, ca = nats_ctx(nats_server.url)
    b, _ = nats_ctx(nats_server.url)
    sub = yoton.SubChannel(b, "bye")
    pub = yoton.PubChannel(a, "bye")
    closed = []
    ca.closed.bind(lambda conn, reason: closed.append(reason))
    for i in range(100):
        pub.send(str(i))
    a.flush(5)
    assert ca.statistics()["queued_bytes"] == 0
    ca.close()
    assert not ca.is_connected and ca.close_reason == "Closed on command."
    wait_until(lambda: closed, 5, "the closed signal", pump=True)
    assert closed == ["Closed on command."]
    got: list = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= 100, 5, "the messages")
    assert got == [str(i) for i in range(100)]
    thread = ca._link.aio
    assert thread is None  # (its asyncio thread was let go)


def test_many_contexts_one_network(nats_server, nats_ctx):
    contexts = [nats_ctx(nats_server.url)[0] for _ in range(5)]
    subs = [yoton.SubChannel(c, "all") for c in contexts]
    pubs = [yoton.PubChannel(c, "all") for c in contexts]
    for sub, c in zip(subs, contexts):
        wait_until(lambda: _subscribed(c, sub), 5, "subscriptions")
    for k, pub in enumerate(pubs):
        pub.send(f"from {k}")
    for k, sub in enumerate(subs):
        got = set()
        wait_until(lambda: got.update(sub.recv_all()) or len(got) == 4, 5, "four messages")
        assert got == {f"from {j}" for j in range(5) if j != k}


def test_the_command_line_takes_nats_addresses(nats_server, ctx):
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[2] / "src"
    b = ctx()
    b.connect(nats_server.url, timeout=5)  # (the command line uses the default network)
    sub = yoton.SubChannel(b, "cli")
    out = subprocess.run(
        [sys.executable, "-m", "yoton", "pub", "--connect", nats_server.url, "cli"],
        input="hello\nworld\n",
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    assert out.returncode == 0, out.stderr
    got: list = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= 2, 5, "the lines")
    assert got == ["hello", "world"]
