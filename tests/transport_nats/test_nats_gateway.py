"""Bridging: a context connected to TCP peers and to NATS forwards between them.

The gateway's NATS link subscribes to the whole network once the context
has another link; the router relays both ways and de-duplicates as in any
mesh. The last tests put a yoton 2.2 peer (a subprocess running the
original, tests/peer.py) behind the gateway.
"""

from __future__ import annotations

import pytest
from helpers import wait_until
from interop_helpers import PeerProcess

import yoton

pytestmark = pytest.mark.timeout(90)


class Calc(yoton.RepChannel):
    def add(self, x, y):
        return x + y

    def who(self):
        return hex(self._router.id)


def _is_gateway(conn) -> bool:
    link = conn._link
    return any(subject.endswith(".>") for subject, _ in list(link._subs))


def _gateway(ctx, nats_server, network, name="gw"):
    """A context bound on TCP and attached to NATS; returns (gateway, its bind, its NATS connection)."""
    gw = ctx()
    bound = gw.bind("127.0.0.1:0", name=f"{name}-tcp")
    nats_conn = gw.connect(nats_server.url, timeout=5, network=network, name=f"{name}-nats")
    return gw, bound, nats_conn


def test_tcp_peer_and_nats_context_through_a_gateway(ctx, nats_server, nats_ctx, network):
    gw, bound, gw_nats = _gateway(ctx, nats_server, network)
    t = ctx()  # TCP only
    t.connect(f"127.0.0.1:{bound.port1}", timeout=5)
    wait_until(lambda: bound.is_connected and _is_gateway(gw_nats), 5, "the gateway to hear the whole network")
    n, _ = nats_ctx(nats_server.url)  # NATS only

    # pub/sub both ways
    sub_t, sub_n = yoton.SubChannel(t, "down"), yoton.SubChannel(n, "up")
    pub_n, pub_t = yoton.PubChannel(n, "down"), yoton.PubChannel(t, "up")
    for i in range(100):
        pub_n.send(f"d{i}")
        pub_t.send(f"u{i}")
    down: list = []
    up: list = []
    wait_until(lambda: down.extend(sub_t.recv_all()) or up.extend(sub_n.recv_all()) or len(down) + len(up) >= 200, 5)
    assert down == [f"d{i}" for i in range(100)] and up == [f"u{i}" for i in range(100)]

    # req/rep both ways: a replier behind the gateway, and one on NATS
    rep_t, rep_n = Calc(t, "on-tcp"), Calc(n, "on-nats")
    rep_t.set_mode("thread")
    rep_n.set_mode("thread")
    req_n, req_t = yoton.ReqChannel(n, "on-tcp"), yoton.ReqChannel(t, "on-nats")
    assert req_n.add(1, 2).result(5) == 3 and req_n.who().result(5) == hex(t.id)
    assert req_t.add(3, 4).result(5) == 7 and req_t.who().result(5) == hex(n.id)

    # state: set behind the gateway, seen on NATS
    st_t, st_n = yoton.StateChannel(t, "level"), yoton.StateChannel(n, "level")
    st_t.send("high")
    assert wait_until(lambda: st_n.recv() == "high", 5, "the state")
    assert gw.statistics()["refused"] == 0


def test_two_gateways_into_one_mesh_deliver_once(ctx, nats_server, nats_ctx, network):
    # t is connected to two gateways: every package reaches NATS twice, and t
    # hears NATS's twice; the routers' de-duplication delivers each once.
    gw1, bound1, nats1 = _gateway(ctx, nats_server, network, "gw1")
    gw2, bound2, nats2 = _gateway(ctx, nats_server, network, "gw2")
    t = ctx()
    t.connect(f"127.0.0.1:{bound1.port1}", timeout=5)
    t.connect(f"127.0.0.1:{bound2.port1}", timeout=5)
    wait_until(lambda: _is_gateway(nats1) and _is_gateway(nats2), 5, "both gateways")
    n, _ = nats_ctx(nats_server.url)
    sub_n, sub_t = yoton.SubChannel(n, "up"), yoton.SubChannel(t, "down")
    pub_t, pub_n = yoton.PubChannel(t, "up"), yoton.PubChannel(n, "down")
    for i in range(100):
        pub_t.send(str(i))
        pub_n.send(str(i))
    up: list = []
    down: list = []
    wait_until(lambda: up.extend(sub_n.recv_all()) or down.extend(sub_t.recv_all()) or len(up) + len(down) >= 200, 5)
    # (a short quiet period: no second copies follow)
    assert not wait_until(lambda: sub_n.pending or sub_t.pending, 0.3, fail=False)
    assert up == [str(i) for i in range(100)] and down == [str(i) for i in range(100)]


@pytest.fixture
def orig_peer():
    made = []

    def start(name):
        peer = PeerProcess("orig", name)
        made.append(peer)
        return peer

    yield start
    for peer in made:
        peer.close()


def test_yoton_22_peer_reaches_a_nats_context_through_a_gateway(ctx, nats_server, nats_ctx, network, orig_peer):
    gw, bound, gw_nats = _gateway(ctx, nats_server, network)
    old = orig_peer("yoton-2.2")
    old.call("connect", addr=f"localhost:{bound.port1}")
    wait_until(lambda: bound.is_connected and _is_gateway(gw_nats), 10, "the gateway")
    n, _ = nats_ctx(nats_server.url)

    # 2.2 publishes, the NATS context receives; and back
    sub_n = yoton.SubChannel(n, "from-old")
    old.call("pub_many", slot="from-old", type="txt", msgs=["a", "b", "c"])
    got: list = []
    wait_until(lambda: got.extend(sub_n.recv_all()) or len(got) >= 3, 10, "2.2's messages")
    assert got == ["a", "b", "c"]
    old.call("sub", slot="to-old", type="txt")
    pub_n = yoton.PubChannel(n, "to-old")

    def heard():
        pub_n.send("hello 2.2")
        return old.call("recv", slot="to-old", type="txt", timeout=0.2).get("msg") == "hello 2.2"

    wait_until(heard, 10, "2.2 to hear the NATS context")

    # 2.2 serves a request from NATS, and asks NATS's replier
    old.call("rep", slot="old-calc", mode="thread")
    req_n = yoton.ReqChannel(n, "old-calc")
    assert req_n.add(20, 22).result(10) == 42
    rep_n = Calc(n, "new-calc")
    rep_n.set_mode("thread")
    assert old.call("req", slot="new-calc", method="add", args=[5, 6], timeout=10) == {"result": 11}

    # a state set by 2.2 reaches the NATS context
    st_n = yoton.StateChannel(n, "old-state")
    old.call("state_send", slot="old-state", type="txt", msg="from 2.2")
    assert wait_until(lambda: st_n.recv() == "from 2.2", 10, "2.2's state")
