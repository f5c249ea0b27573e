"""Request/reply between our yoton and the original 2.2, over real TCP on 127.0.0.1.

Peers (tests/peer.py) run a replier with add(x, y), fail(msg), slow(t) and
who(i, t) in thread mode (op ``rep``) and post requests (ops ``req`` and
``req_many``). A remote failure comes back from a peer as
``{"exc_type": ..., "exc": text}``. Some tests drive OUR ReqChannel or
RepChannel in the test process against an original peer.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from interop_helpers import PeerProcess, link, wait_connections, wait_for

pytestmark = pytest.mark.timeout(60)

# (replier impl, requester impl); orig-orig is the control
REQ_PAIRS = [("orig", "ours"), ("ours", "orig"), ("orig", "orig"), ("ours", "ours")]
REQ_IDS = [f"rep_{r}-req_{q}" for r, q in REQ_PAIRS]


def hexid(peer: PeerProcess) -> str:
    """The peer's context id the way echo() reports it: hex(id)."""
    return hex(int(peer.id(), 16))


def outcome_error(reply: dict) -> str:
    assert "exc" in reply, f"expected a remote failure, got {reply!r}"
    return reply["exc"]


# -- both ends in peer subprocesses ---------------------------------------------------------


@pytest.mark.parametrize("rep_impl,req_impl", REQ_PAIRS, ids=REQ_IDS)
def test_requests_and_error_replies(peer, rep_impl, req_impl):
    r, q = peer(rep_impl, "R"), peer(req_impl, "Q")
    link(r, q)
    wait_connections([(r, 1), (q, 1)])
    r.call("rep", slot="calc", mode="thread")

    assert q.call("req", slot="calc", method="add", args=[2, 40], timeout=10) == {"result": 42}
    assert q.call("req", slot="calc", method="add", args=["a", "b"], timeout=10) == {"result": "ab"}
    assert q.call("req", slot="calc", method="add", args=[[1], [2, 3]], timeout=10) == {"result": [1, 2, 3]}
    assert q.call("req", slot="calc", method="slow", args=[0.05], timeout=10) == {"result": 0.05}

    text = outcome_error(q.call("req", slot="calc", method="fail", args=["kaboom 77"], timeout=10))
    assert "kaboom 77" in text
    text = outcome_error(q.call("req", slot="calc", method="no_such_thing", args=[], timeout=10))
    assert "no_such_thing" in text

    # echo is built in: (arg, hex(replier context id))
    reply = q.call("req", slot="calc", method="echo", args=["ping"], timeout=10)
    assert reply == {"result": {"__tuple__": ["ping", hexid(r)]}}

    # the replier still serves after the failures; each call ran once
    assert q.call("req", slot="calc", method="add", args=[1, 1], timeout=10) == {"result": 2}
    assert r.call("rep_calls", slot="calc")["calls"] == {"add": 4, "slow": 1, "fail": 1}


@pytest.mark.parametrize("rep_impl,req_impl", REQ_PAIRS, ids=REQ_IDS)
def test_many_requests_at_once(peer, rep_impl, req_impl):
    r, q = peer(rep_impl, "R"), peer(req_impl, "Q")
    link(r, q)
    wait_connections([(r, 1), (q, 1)])
    r.call("rep", slot="many", mode="thread", name="R")
    n = 15
    reply = q.call("req_many", slot="many", method="who", args_list=[[i] for i in range(n)], timeout=20)
    assert "timeout" not in reply, reply
    assert reply["outcomes"] == [{"result": [i, "R"]} for i in range(n)]
    assert r.call("rep_calls", slot="many")["calls"] == {"who": n}


@pytest.mark.parametrize("requester", ["ours", "orig"])
def test_mixed_repliers_share_the_load(peer, context, requester):
    """An original and our replier (peers) serve one requester; the hub is our
    context in the test process, so packages between peers are routed by us."""
    hub = context()
    q = peer(requester, "Q")
    reps = {"orig": peer("orig", "R-orig"), "ours": peer("ours", "R-ours")}
    for p in [q, *reps.values()]:
        conn = hub.bind("localhost:0")
        p.call("connect", addr=f"localhost:{conn.port1}", timeout=5)
    wait_for(lambda: hub.connection_count == 3, 10, "three peers connected to the hub")
    for name, p in reps.items():
        p.call("rep", slot="shared", mode="thread", name=name)

    n = 30
    reply = q.call("req_many", slot="shared", method="who", args_list=[[i, 0.05] for i in range(n)], timeout=30)
    assert "timeout" not in reply, reply
    results = [o["result"] for o in reply["outcomes"]]
    assert [i for i, _ in results] == list(range(n))
    by_replier = Counter(name for _, name in results)
    calls = {name: p.call("rep_calls", slot="shared")["calls"].get("who", 0) for name, p in reps.items()}
    # every request answered exactly once, by the replier that says it served it
    assert calls == dict(by_replier), (calls, by_replier)
    assert sum(calls.values()) == n
    print("mixed repliers:", calls)
    assert calls["orig"] > 0 and calls["ours"] > 0, f"one replier got nothing: {calls}"


# -- our ReqChannel / RepChannel in the test process ------------------------------------------


@pytest.fixture
def our_requester_and_orig_replier(peer, context):
    import yoton

    ctx, o = context(), peer("orig")
    conn = ctx.connect(f"localhost:{o.bind()}", timeout=5)
    wait_for(lambda: conn.is_connected, 10, "our connection")
    assert o.call("wait_connections", count=1, timeout=10)["ok"]
    o.call("rep", slot="inproc", mode="thread", name="orig")
    return yoton.ReqChannel(ctx, "inproc"), o


def test_our_requester_against_orig_replier(our_requester_and_orig_replier):
    import yoton

    req, o = our_requester_and_orig_replier
    assert req.add(20, 22).result(10) == 42
    assert req.add((1, 2), (3,)).result(10) == (1, 2, 3)
    assert req.who(5).result(10) == [5, "orig"]
    assert req.echo({"k": [None, 1.5]}).result(10) == ({"k": [None, 1.5]}, hexid(o))
    with pytest.raises(yoton.RemoteError, match="orig says no"):
        req.fail("orig says no").result(10)
    with pytest.raises(yoton.RemoteError, match="missing_method"):
        req.missing_method().result(10)
    # many at once, from a plain thread (nobody runs our event loop)
    box = []
    thread = threading.Thread(target=lambda: box.append([f.result(20) for f in [req.add(i, i) for i in range(20)]]))
    thread.start()
    thread.join(25)
    assert box == [[2 * i for i in range(20)]]
    assert req.statistics()["pending_requests"] == 0


def test_our_auto_cancel_with_orig_replier_off(peer, context):
    import yoton

    ctx, o = context(), peer("orig")
    conn = ctx.connect(f"localhost:{o.bind()}", timeout=5)
    wait_for(lambda: conn.is_connected, 10, "our connection")
    # (the original cannot go back to 'thread' after leaving it, so start 'off')
    o.call("rep", slot="inproc", mode="off")
    req = yoton.ReqChannel(ctx, "inproc")
    f = req.add(1, 2)
    f.set_auto_cancel_timeout(0.6)
    with pytest.raises(yoton.CancelledError):
        f.result(10)
    o.call("rep_mode", slot="inproc", mode="thread")
    assert req.add(3, 4).result(10) == 7
    assert o.call("rep_calls", slot="inproc")["calls"] == {"add": 1}  # the cancelled one never ran


def _our_replier_for_an_orig_requester(context, peer, replier_class, slot):
    """Our context bound, a thread-mode ``replier_class`` on ``slot`` in it, and an
    original yoton 2.2 peer connected to it: ``(context, peer, replier)``."""
    ctx, o = context(), peer("orig")
    conn = ctx.bind("localhost:0")
    rep = replier_class(ctx, slot)
    rep.set_mode("thread")
    o.call("connect", addr=f"localhost:{conn.port1}", timeout=5)
    wait_for(lambda: conn.is_connected, 10, "the original to connect")
    return ctx, o, rep


def test_orig_requester_against_our_replier(peer, context):
    import yoton

    served = []

    class OurReplier(yoton.RepChannel):
        def add(self, x, y):
            served.append(("add", x, y))
            return x + y

        def fail(self, msg):
            served.append(("fail", msg))
            raise KeyError(msg)

        def unencodable(self):
            return object()

    ctx, o, rep = _our_replier_for_an_orig_requester(context, peer, OurReplier, "back")

    assert o.call("req", slot="back", method="add", args=[1, 2], timeout=10) == {"result": 3}
    assert o.call("req", slot="back", method="add", args=[{"__tuple__": [1]}, {"__tuple__": [2]}], timeout=10) == {
        "result": {"__tuple__": [1, 2]}
    }
    assert "from ours" in outcome_error(o.call("req", slot="back", method="fail", args=["from ours"], timeout=10))
    assert "nothing_here" in outcome_error(o.call("req", slot="back", method="nothing_here", args=[], timeout=10))
    outcome_error(o.call("req", slot="back", method="unencodable", args=[], timeout=10))
    assert o.call("req", slot="back", method="echo", args=["e"], timeout=10) == {
        "result": {"__tuple__": ["e", hex(ctx.id)]}
    }
    reply = o.call("req_many", slot="back", method="add", args_list=[[i, 1] for i in range(20)], timeout=20)
    assert reply["outcomes"] == [{"result": i + 1} for i in range(20)]
    assert served.count(("fail", "from ours")) == 1
    assert len([s for s in served if s[0] == "add"]) == 22


def test_our_event_mode_replier_serves_orig_requester(peer, context):
    import yoton

    class EventReplier(yoton.RepChannel):
        def where(self):
            return threading.current_thread().name

    ctx, o = context(), peer("orig")
    conn = ctx.bind("localhost:0")
    rep = EventReplier(ctx, "evt")
    rep.set_mode("event")
    o.call("connect", addr=f"localhost:{conn.port1}", timeout=5)
    wait_for(lambda: conn.is_connected, 10, "the original to connect")

    # the peer call blocks this thread, so pump our event loop in another one
    stop = threading.Event()

    def pump():
        while not stop.is_set():
            yoton.process_events(0.01)

    pumper = threading.Thread(target=pump, name="test-pumper", daemon=True)
    pumper.start()
    try:
        assert o.call("req", slot="evt", method="where", args=[], timeout=10) == {"result": "test-pumper"}
    finally:
        stop.set()
        pumper.join(5)


# -- direct requests (ours only) with 2.2 peers around ---------------------------------------


def test_an_orig_relay_between_our_requester_and_replier_carries_the_2_2_exchange(peer, context):
    """Our requester and our replier meet through an original context: they are
    no direct peers, so every request takes the 2.2 exchange through it."""
    import yoton

    relay = peer("orig", "X")
    a, b = context(), context()
    conn_a = a.connect(f"localhost:{relay.bind()}", timeout=5)
    conn_b = b.connect(f"localhost:{relay.bind()}", timeout=5)
    wait_for(lambda: conn_a.is_connected and conn_b.is_connected, 10, "both of ours connected to the relay")
    assert relay.call("wait_connections", count=2, timeout=10)["ok"]

    class Adder(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    rep = Adder(b, "via")
    rep.set_mode("thread")
    req = yoton.ReqChannel(a, "via")
    assert [req.add(i, 1).result(10) for i in range(10)] == [i + 1 for i in range(10)]
    assert req.statistics()["direct"] == 0 and rep.statistics()["direct"] == 0
    assert rep.statistics()["served"] == 10 and rep.statistics()["refused"] == 0


def test_an_orig_requester_takes_our_invitation_for_the_acknowledgement_harmlessly(peer, context):
    """A 2.2 requester directly connected to our replier gets 'req+' (it takes it
    for the acknowledgement) and, when that replier closes, 'req_' (ignored):
    each request is served once, and it goes on with the next replier."""
    import yoton

    calls = []

    class Adder(yoton.RepChannel):
        def add(self, x, y):
            calls.append((x, y))
            return x + y

    ctx, o, rep = _our_replier_for_an_orig_requester(context, peer, Adder, "inv")
    for i in range(5):
        assert o.call("req", slot="inv", method="add", args=[i, 1], timeout=10) == {"result": i + 1}
    stats = rep.statistics()
    assert (stats["served"], stats["refused"], stats["direct"], stats["declined"]) == (5, 0, 0, 0)
    rep.close()  # (sends 'req_' to the original requester it invited)
    successor = Adder(ctx, "inv")
    successor.set_mode("thread")
    assert o.call("req", slot="inv", method="add", args=[9, 1], timeout=10) == {"result": 10}
    assert calls == [(i, 1) for i in range(5)] + [(9, 1)]
