"""A context with an auth_key against the original yoton 2.2 (which has none).

The original must be refused both ways, nothing it sends may be delivered,
and a keyed bind must keep waiting for a proper peer.
"""

import logging

import pytest
from interop_helpers import wait_for

pytestmark = pytest.mark.timeout(60)

KEY = b"only-for-friends"


def test_orig_cannot_get_into_a_keyed_bind(peer, context, caplog):
    import yoton

    caplog.set_level(logging.INFO, logger="yoton")
    ours = context(auth_key=KEY)
    sub = yoton.SubChannel(ours, "feed")
    bound = ours.bind("localhost:0")
    o = peer("orig")
    o.call("pub", slot="feed", type="txt")
    # yoton 2.2 finishes its half of the handshake (it sees our hello), then
    # finds our challenge where it expects packages; we refuse it.
    o.call("connect", addr=f"localhost:{bound.port1}", timeout=5)
    o.call("pub", slot="feed", type="txt", msg="injected")

    def refused():
        return [r.getMessage() for r in caplog.records if "refused client" in r.getMessage()]

    wait_for(lambda: any("authentication failed" in m for m in refused()), 10, "the refusal")
    assert bound.is_waiting and sub.pending == 0

    friend = context(auth_key=KEY)
    conn = friend.connect(f"localhost:{bound.port1}", timeout=5)
    wait_for(lambda: conn.is_connected and bound.is_connected, 5, "the friend's connection")
    yoton.PubChannel(friend, "feed").send("hello friend")
    assert sub.recv(5) == "hello friend"
    assert sub.pending == 0


def test_keyed_connect_to_an_orig_bind_raises(peer, context):
    import yoton

    o = peer("orig")
    port = o.bind()
    ours = context(auth_key=KEY)
    with pytest.raises(yoton.AuthenticationError, match="authentication failed"):
        ours.connect(f"localhost:{port}", timeout=5)
    assert ours.connection_count == 0
