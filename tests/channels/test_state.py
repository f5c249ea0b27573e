"""Integration tests of StateChannel between real contexts on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

import yoton


def _marker(a, b):
    """Pub on ``a`` / sub on ``b``: once a marker arrives, what ``a`` sent before it has arrived too."""
    pub, sub = yoton.PubChannel(a, "zz-state-marker"), yoton.SubChannel(b, "zz-state-marker")

    def sync(text="mark"):
        pub.send(text)
        assert sub.recv(3.0) == text

    return sync


def test_slot_names(ctx):
    state = yoton.StateChannel(ctx(), "Spam", yoton.OBJECT)
    assert state.slot_outgoing == "Spam.obj.state"
    assert state.slot_incoming == "Spam.obj.state"
    assert yoton.StateChannel(ctx(), "spam").slot_outgoing == "spam.txt.state"


def test_one_state_channel_per_slot(ctx):
    c = ctx()
    yoton.StateChannel(c, "only")
    with pytest.raises(ValueError):
        yoton.StateChannel(c, "ONLY")


def test_recv_is_nonblocking_and_returns_current_state(ctx):
    c = ctx()
    text = yoton.StateChannel(c, "s")
    obj = yoton.StateChannel(c, "o", yoton.OBJECT)
    binary = yoton.StateChannel(c, "b", yoton.BINARY)
    t0 = time.monotonic()
    assert text.recv() == "" and text.recv(True) == ""
    assert obj.recv() is None and binary.recv() == b""
    assert time.monotonic() - t0 < 0.2
    assert text.pending == 0
    text.send("current")
    obj.send({"x": [1, 2]})
    binary.send(b"\x01")
    assert text.recv() == "current" and text.recv() == "current"  # reading does not consume
    assert obj.recv() == {"x": [1, 2]} and binary.recv() == b"\x01"
    assert text.pending == 1


def test_state_propagates_both_ways(pair, wait_for):
    a, b, ca, cb = pair()
    sa, sb = yoton.StateChannel(a, "shared"), yoton.StateChannel(b, "Shared")
    sa.send("v1")
    assert wait_for(lambda: sb.recv() == "v1")
    sb.send("v2")
    assert wait_for(lambda: sa.recv() == "v2")
    assert sb.recv() == "v2"


def test_send_only_when_changed(pair):
    a, b, ca, cb = pair()
    sa, sb = yoton.StateChannel(a, "chg"), yoton.StateChannel(b, "chg")
    sync = _marker(a, b)
    yoton.process_events()
    arrivals = []
    sb.received.bind(lambda ch: arrivals.append(ch.recv()))
    sa.send("same")
    sync()
    yoton.process_events()
    assert arrivals == ["same"]
    for _ in range(5):
        sa.send("same")  # unchanged: nothing goes out
    sync()
    yoton.process_events()
    assert arrivals == ["same"]
    sa.send("new")
    sync()
    yoton.process_events()
    assert arrivals == ["same", "new"]
    # b received 'new': setting b's state to that same value is no change either
    arrivals_at_a = []
    sa.received.bind(lambda ch: arrivals_at_a.append(ch.recv()))
    sb.send("new")
    sync_back = _marker(b, a)
    sync_back()
    yoton.process_events()
    assert arrivals_at_a == []


def test_empty_messages_ignored(pair, wait_for):
    a, b, ca, cb = pair()
    sa, sb = yoton.StateChannel(a, "e"), yoton.StateChannel(b, "e")
    sync = _marker(a, b)
    sa.send("keep")
    assert wait_for(lambda: sb.recv() == "keep")
    yoton.process_events()
    arrivals = []
    sb.received.bind(lambda ch: arrivals.append(ch.recv()))
    sa.send("")
    sa.send(b"")
    assert sa.recv() == "keep"  # the local state is unchanged
    sync()
    yoton.process_events()
    assert arrivals == [] and sb.recv() == "keep"


def test_late_joiner_gets_state_from_bind_side(ctx, bind_free, wait_for):
    a, b = ctx(), ctx()
    conn = bind_free(a)
    sa = yoton.StateChannel(a, "late")
    sa.send("before you came")
    sb = yoton.StateChannel(b, "late")
    b.connect(f"127.0.0.1:{conn.port1}", timeout=3.0)
    assert wait_for(lambda: sb.recv() == "before you came")


def test_late_joiner_gets_state_resent_on_new_connection(ctx, bind_free, wait_for):
    """The state was already delivered before the newcomer's link existed, so only
    the NEW_CONNECTION re-send (forwarded by a context without a state channel) can reach it."""
    a, b, c = ctx(), ctx(), ctx()
    conn_a = bind_free(a)
    b.connect(f"127.0.0.1:{conn_a.port1}", timeout=3.0)
    assert wait_for(lambda: conn_a.is_connected, events=False)
    sa = yoton.StateChannel(a, "later")
    sa.send("established")
    a.flush(3.0)
    sync = _marker(a, b)
    sync()  # b has seen (and forwarded to nobody) the state package
    conn_b = bind_free(b)  # a new link, made after the state went by
    sc = yoton.StateChannel(c, "later")
    c.connect(f"127.0.0.1:{conn_b.port1}", timeout=3.0)
    assert wait_for(lambda: sc.recv() == "established")


def test_send_last_resends_current_state(pair, wait_for):
    a, b, ca, cb = pair()
    sa, sb = yoton.StateChannel(a, "last"), yoton.StateChannel(b, "last")
    sync = _marker(a, b)
    sa.send("value")
    assert wait_for(lambda: sb.recv() == "value")
    # a fresh channel on b knows nothing; sending the same value again does not help ...
    sb.close()
    sb2 = yoton.StateChannel(b, "last")
    sa.send("value")
    sync()
    assert sb2.recv() == ""
    # ... but send_last does
    sa.send_last()
    assert wait_for(lambda: sb2.recv() == "value")
    # nothing to re-send: no error, nothing sent
    empty = yoton.StateChannel(a, "nostate")
    empty.send_last()


def test_closed_state_channel(ctx):
    state = yoton.StateChannel(ctx(), "closed")
    state.send("x")
    state.close()
    with pytest.raises(yoton.ChannelClosedError):
        state.send("y")
    state.send_last()  # silently nothing
    assert state.recv() == "x"


def test_state_wrong_type_raises(ctx):
    state = yoton.StateChannel(ctx(), "typed", yoton.BINARY)
    with pytest.raises(ValueError, match="str"):
        state.send("text")
    assert state.recv() == b""


def test_received_signal_for_state(pair, wait_for):
    a, b, ca, cb = pair()
    sa, sb = yoton.StateChannel(a, "sig"), yoton.StateChannel(b, "sig")
    calls = []
    sb.received.bind(lambda ch: calls.append((ch, ch.recv())))
    sa.send("ping")
    assert wait_for(lambda: calls)
    assert calls == [(sb, "ping")]
