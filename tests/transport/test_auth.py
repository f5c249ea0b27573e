"""Context(auth_key=...): mutual challenge-response after the yoton handshake.

Both ends of a real TCP connection on 127.0.0.1; the peer without the key is
refused on both sides with the reason "authentication failed", nothing it
sent is delivered, and a keyed bind keeps waiting for a proper peer.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

import yoton
from yoton.wire.protocol import format_hello

KEY = b"correct horse battery staple"


def connect_pair(ctx, bind_free, wait_for, a_kwargs, b_kwargs):
    a, b = ctx(**a_kwargs), ctx(**b_kwargs)
    bound = bind_free(a)
    conn = b.connect(f"127.0.0.1:{bound.port1}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected and conn.is_connected, 3.0)
    return a, b, bound, conn


def refusals(caplog):
    return [r.getMessage() for r in caplog.records if "refused client" in r.getMessage()]


@pytest.mark.parametrize("key_a, key_b", [(KEY, KEY), ("sésame", "sésame".encode())])
def test_same_key_connects_and_carries_every_channel_kind(ctx, bind_free, wait_for, key_a, key_b):
    a, b, bound, conn = connect_pair(ctx, bind_free, wait_for, {"auth_key": key_a}, {"auth_key": key_b})
    pub, sub = yoton.PubChannel(a, "news", yoton.OBJECT), yoton.SubChannel(b, "news", yoton.OBJECT)
    state_a, state_b = yoton.StateChannel(a, "st"), yoton.StateChannel(b, "st")
    rep = yoton.RepChannel(a, "svc")
    rep.set_mode("thread")
    req = yoton.ReqChannel(b, "svc")
    state_a.send("ready")
    assert wait_for(lambda: state_b.recv() == "ready", 3.0)
    assert req.echo(7).result(5) == (7, hex(a.id))
    msgs = [{"n": i, "data": "x" * i} for i in range(100)]
    for m in msgs:
        pub.send(m)
    assert [sub.recv(3) for _ in msgs] == msgs


def test_wrong_key_is_refused_on_both_sides_and_bind_keeps_waiting(ctx, bind_free, wait_for, caplog):
    caplog.set_level(logging.INFO, logger="yoton")
    a = ctx(auth_key=KEY)
    sub = yoton.SubChannel(a, "news")
    bound = bind_free(a)
    intruder = ctx(auth_key=b"guess")
    pub = yoton.PubChannel(intruder, "news")
    pub.send("injected")  # waits in the startup queue: must never reach `a`
    with pytest.raises(yoton.AuthenticationError, match="authentication failed") as info:
        intruder.connect(f"127.0.0.1:{bound.port1}", timeout=3.0)
    assert isinstance(info.value, OSError) and "wrong key" in str(info.value)
    assert intruder.connection_count == 0
    assert wait_for(lambda: any("authentication failed" in m for m in refusals(caplog)), 3.0), refusals(caplog)
    assert bound.is_waiting

    friend = ctx(auth_key=KEY)
    conn = friend.connect(f"127.0.0.1:{bound.port1}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected and conn.is_connected, 3.0)
    yoton.PubChannel(friend, "news").send("welcome")
    assert sub.recv(3) == "welcome"
    assert sub.recv(False) == "" and sub.pending == 0  # nothing from the intruder


def test_peer_without_key_cannot_connect_to_keyed_bind(ctx, bind_free, wait_for, caplog):
    caplog.set_level(logging.INFO, logger="yoton")
    a = ctx(auth_key=KEY)
    sub = yoton.SubChannel(a, "news")
    bound = bind_free(a)
    plain = ctx()
    yoton.PubChannel(plain, "news").send("injected")
    # The plain side sees a yoton hello, then an auth challenge it cannot answer.
    try:
        conn = plain.connect(f"127.0.0.1:{bound.port1}", timeout=3.0)
    except yoton.ConnectError as exc:  # (if the refusal arrives before the hello is read)
        assert "authentication failed" in str(exc) or "closed" in str(exc)
    else:
        assert wait_for(lambda: not conn.is_alive, 3.0)
        assert conn.close_reason == "authentication failed (the other end requires an auth key)"
    assert wait_for(lambda: any("authentication failed" in m for m in refusals(caplog)), 3.0), refusals(caplog)
    assert bound.is_waiting
    # (the refusal is logged after the last byte from that client was handled)
    assert sub.pending == 0


def test_keyed_connect_to_plain_bind_raises(ctx, bind_free, wait_for):
    plain = ctx()
    bound = bind_free(plain)
    closed = []
    bound.closed.bind(lambda conn, reason: closed.append(reason))
    keyed = ctx(auth_key=KEY)
    with pytest.raises(yoton.AuthenticationError, match="authentication failed"):
        keyed.connect(f"127.0.0.1:{bound.port1}", timeout=3.0)
    # the plain bind accepted the hello, then saw the challenge instead of a package
    assert wait_for(lambda: closed, 3.0)
    assert closed == ["authentication failed (the other end requires an auth key)"]


def read_line(sock, deadline=3.0):
    sock.settimeout(deadline)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def test_raw_client_with_forged_proof_gets_error_line_and_is_dropped(ctx, bind_free, wait_for):
    a = ctx(auth_key=KEY)
    bound = bind_free(a)
    with socket.create_connection(("127.0.0.1", bound.port1), timeout=3) as s:
        s.sendall(format_hello(0x1234, 1) + b"AUTH?" + b"ab" * 16 + b"\r\n")
        assert read_line(s).startswith(b"YOTON!")
        assert read_line(s).startswith(b"AUTH?")
        assert read_line(s).startswith(b"AUTH!")
        s.sendall(b"AUTH!" + b"00" * 32 + b"\r\n")
        assert read_line(s) == b"ERROR: authentication failed.\r\n"
        assert s.recv(100) == b""  # closed by the bind
    assert bound.is_waiting


def test_silent_client_after_hello_is_dropped_at_the_deadline(ctx, bind_free, wait_for, caplog, monkeypatch):
    from yoton.transport import stream

    monkeypatch.setattr(stream, "HANDSHAKE_DEADLINE", 0.5)  # (3 s by default: the test is about the rule)
    caplog.set_level(logging.INFO, logger="yoton")
    a = ctx(auth_key=KEY)
    bound = bind_free(a)
    with socket.create_connection(("127.0.0.1", bound.port1), timeout=3) as s:
        s.sendall(format_hello(0x1234, 1))  # ... and never answers the challenge
        start = time.monotonic()
        s.settimeout(10)
        while s.recv(4096):
            pass
        assert time.monotonic() - start < 3
    assert any("authentication failed (no proof" in m for m in refusals(caplog)), refusals(caplog)
    assert bound.is_waiting


@pytest.mark.parametrize("bad", [b"", "", 42, bytearray(b"x")])
def test_bad_auth_key_values(bad):
    with pytest.raises(ValueError, match="auth_key"):
        yoton.Context(auth_key=bad)
