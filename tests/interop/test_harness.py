"""The interop harness itself, validated with the original on both ends."""

import pytest
from interop_helpers import PeerError, link, wait_connections


@pytest.mark.timeout(60)
def test_harness_orig_to_orig(peer):
    a, b = peer("orig", "A"), peer("orig", "B")
    link(a, b)
    wait_connections([(a, 1), (b, 1)])
    ia, ib = a.call("info"), b.call("info")
    assert ia["id"] != ib["id"] and ia["pid"] != ib["pid"]
    assert a.call("conn_info", conn=0)["id2"] == ib["id"]
    assert b.call("conn_info", conn=0)["id2"] == ia["id"]
    for p in (a, b):
        p.call("sub", slot="h", type="txt")
    a.call("pub_many", slot="h", type="txt", msgs=["one", "twö"])
    b.call("pub", slot="h", type="obj", msg={"__tuple__": [1, None]})
    assert b.call("recv_n", slot="h", type="txt", n=2, timeout=10) == {"msgs": ["one", "twö"]}
    # b published obj on 'h', a only subscribed txt: nothing arrives (different slot)
    assert a.call("recv", slot="h", type="txt", timeout=0.3) == {"timeout": True}


@pytest.mark.timeout(60)
def test_harness_reports_failures(peer):
    a = peer("orig")
    with pytest.raises(PeerError, match="unknown op"):
        a.call("no_such_op")
    with pytest.raises(PeerError, match="connect failed"):
        a.call("connect", addr="localhost:1", timeout=0.5)
    assert a.call("info")["connection_count"] == 0  # still alive after errors
    a.call("exit")
    with pytest.raises(PeerError, match="dead|exited"):
        a.call("info")


@pytest.mark.timeout(60)
def test_harness_runs_ours(peer):
    """The peer script really imports our package for impl='ours'."""
    a = peer("ours")
    assert "/src/yoton/" in a.call("info")["yoton"].replace("\\", "/")
