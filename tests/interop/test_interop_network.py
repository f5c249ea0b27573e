"""yoton 2.2 peers and what is new in the network: reconnecting to a 2.2 bind,
2.2 peers on a bind that takes many peers.

The wire does not change for either: a re-dial is a new TCP connection with
the usual hello (and our ``NEW_CONNECTION`` after it); a bind that takes many
peers answers each hello as a one-peer bind does, and refuses one too many
with an ``ERROR:`` line, which 2.2 takes as a failed handshake.
"""

from __future__ import annotations

import pytest
from interop_helpers import killed_and_restarted, wait_for

import yoton
from yoton import ReconnectPolicy

pytestmark = pytest.mark.timeout(90)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_reconnecting_to_a_22_bind_killed_and_started_again():
    policy = ReconnectPolicy(initial_delay=0.02, max_delay=0.2, attempt_timeout=2.0)
    killed_and_restarted("orig", f"localhost:{_free_port()}", policy)


def test_22_peers_on_a_bind_that_takes_many_peers(peer, context):
    ctx = context()
    first = ctx.bind("localhost:0", max_connections=3)
    accepted: list = []
    first.accepted.bind(lambda bind_conn, conn: accepted.append(conn))

    class Calc(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    Calc(ctx, "calc").set_mode("thread")
    news, inbox = yoton.PubChannel(ctx, "news"), yoton.SubChannel(ctx, "inbox")
    olds = [peer("orig", f"orig-{k}") for k in range(2)]
    new = peer("ours", "ours")
    for p in olds + [new]:
        p.call("sub", slot="news", type="txt")
        assert p.call("connect", addr=f"localhost:{first.port}", timeout=5.0)["is_connected"]
    assert wait_for(lambda: len(accepted) == 3, 10.0) and accepted[0] is first
    assert sorted(c.pid2 for c in ctx.connections) == sorted(p.pid for p in olds + [new])
    news.send("to everyone")
    for p in olds + [new]:
        assert p.call("recv", slot="news", type="txt")["msg"] == "to everyone"
        p.call("pub", slot="inbox", type="txt", msg=f"from {p.name}")
    got: list = []
    assert wait_for(lambda: got.extend(inbox.recv_all()) or len(got) >= 3, 10.0)
    assert sorted(got) == sorted(f"from {p.name}" for p in olds + [new])
    # the 2.2 peers reach each other through our bind, and call our replier
    olds[1].call("sub", slot="chat", type="txt")
    olds[0].call("pub", slot="chat", type="txt", msg="relayed")
    assert olds[1].call("recv", slot="chat", type="txt", timeout=5.0)["msg"] == "relayed"
    assert olds[0].call("req", slot="calc", method="add", args=[40, 2], timeout=10.0)["result"] == 42
    # full: a fourth (2.2) peer is refused at its hello, and fails at once
    extra = peer("orig", "orig-extra")
    with pytest.raises(AssertionError, match="connect failed"):
        extra.call("connect", addr=f"localhost:{first.port}", timeout=3.0)
    # a 2.2 peer leaves: its place is taken by the next one
    leaving = next(c for c in ctx.connections if c.pid2 == olds[0].pid)
    olds[0].call("close")
    assert wait_for(lambda: not leaving.is_alive, 5.0) and leaving.close_reason  # (2.2 may reset: any reason)
    assert extra.call("connect", addr=f"localhost:{first.port}", timeout=5.0)["is_connected"]
    assert wait_for(lambda: len(accepted) == 4, 5.0) and accepted[3].pid2 == extra.pid
    assert ctx.connection_count == 3
