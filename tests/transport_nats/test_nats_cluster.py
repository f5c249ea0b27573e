"""A three-node NATS cluster: contexts on different nodes, and a node killed mid-stream."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

import yoton

pytestmark = pytest.mark.timeout(90)


class Calc(yoton.RepChannel):
    def add(self, x, y):
        return x + y


def _address(nodes, first: int) -> str:
    """The cluster's address, node ``first`` first (with dont_randomize, the one a context uses)."""
    order = nodes[first:] + nodes[:first]
    return ",".join(node.url for node in order)


def test_contexts_on_different_nodes(nats_cluster, nats_ctx):
    nodes = nats_cluster()
    a, ca = nats_ctx(_address(nodes, 0), dont_randomize=True)
    b, cb = nats_ctx(_address(nodes, 2), dont_randomize=True)
    assert ca.server == nodes[0].url and cb.server == nodes[2].url
    sub = yoton.SubChannel(b, "news")
    rep = Calc(b, "calc")
    rep.set_mode("thread")
    # (b's subscriptions reach node 1 over the route: wait until a's messages get through)
    pub = yoton.PubChannel(a, "news")
    req = yoton.ReqChannel(a, "calc")
    wait_until(lambda: pub.send("probe") or sub.recv(False) == "probe", 5, "interest to cross the route")
    sub.recv_all()
    for i in range(200):
        pub.send(str(i))
    got: list = []
    wait_until(lambda: got.extend(m for m in sub.recv_all() if m != "probe") or len(got) >= 200, 5, "the messages")
    assert got == [str(i) for i in range(200)]
    assert [req.add(i, i).result(5) for i in range(20)] == [2 * i for i in range(20)]


def test_node_killed_mid_stream(nats_cluster, nats_ctx):
    nodes = nats_cluster()
    # the publisher is attached to node 1, the subscriber to node 3
    a, ca = nats_ctx(_address(nodes, 0), dont_randomize=True, reconnect_time_wait=0.05)
    b, cb = nats_ctx(_address(nodes, 2), dont_randomize=True, reconnect_time_wait=0.05)
    sub = yoton.SubChannel(b, "stream")
    pub = yoton.PubChannel(a, "stream")
    wait_until(lambda: pub.send("-1") or sub.recv(False) == "-1", 5, "interest to cross the route")
    sub.recv_all()
    signals: list = []
    ca.timedout.bind(lambda conn, flag: signals.append(("timedout", flag)))
    ca.closed.bind(lambda conn, reason: signals.append(("closed", reason)))
    stop = threading.Event()
    sent = [0]

    def stream():
        while not stop.is_set():
            pub.send(str(sent[0]))
            sent[0] += 1
            stop.wait(0.001)

    got: list = []
    publisher = threading.Thread(target=stream, daemon=True)
    publisher.start()
    try:
        wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= 200, 10, "the stream to flow")
        nodes[0].stop()  # mid-stream: the publisher's node dies
        wait_until(lambda: ca.statistics()["reconnects"] >= 1, 10, "the publisher to reconnect")
        assert ca.server in (nodes[1].url, nodes[2].url)
        mark = sent[0]
        wait_until(lambda: got.extend(sub.recv_all()) or (got and int(got[-1]) >= mark + 200), 10, "the stream after")
    finally:
        stop.set()
        publisher.join(5)
    numbers = [int(m) for m in got if m != "-1"]  # (late probes)
    # in order, nothing twice; what was in flight when the node died may be lost (core NATS: at most once)
    assert numbers == sorted(set(numbers))
    assert numbers[0] == 0 and numbers[-1] >= mark + 200
    lost = sent[0] - len(numbers)
    after = [n for n in numbers if n >= mark]
    assert after == list(range(mark, after[-1] + 1))  # once reconnected, nothing lost
    assert not [s for s in signals if s[0] == "closed"]  # the link stayed up
    assert ca.is_connected and cb.is_connected
    print(f"sent {sent[0]}, received {len(numbers)}, lost {lost}, signals {signals}")


def test_subscriber_node_killed_the_subscriber_moves_on(nats_cluster, nats_ctx):
    nodes = nats_cluster()
    a, ca = nats_ctx(_address(nodes, 0), dont_randomize=True, reconnect_time_wait=0.05)
    b, cb = nats_ctx(_address(nodes, 2), dont_randomize=True, reconnect_time_wait=0.05)
    state_b = yoton.StateChannel(b, "level")
    state_a = yoton.StateChannel(a, "level")
    state_a.send("1")
    wait_until(lambda: state_b.recv() == "1", 5, "the state")
    nodes[2].stop()
    wait_until(lambda: cb.statistics()["reconnects"] >= 1, 10, "the subscriber to reconnect")
    assert cb.server in (nodes[0].url, nodes[1].url)
    # its subscriptions came along (nats-py renews them): new states arrive
    wait_until(lambda: state_a.send(str(time_token())) or state_b.recv() == state_a.recv(), 10, "a new state")


_tokens = iter(range(2, 10**9))


def time_token() -> int:
    return next(_tokens)
