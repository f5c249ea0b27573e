"""A bind facing clients that are not (well-behaved) yoton peers, over real sockets.

What must hold: a bind answers non-yoton clients with an ``ERROR:`` line,
drops them and goes on waiting; a silent client is dropped after the
handshake deadline without blocking the bind; a connected peer that sends a
bad header (wrong control bytes, absurd length) is disconnected with a reason
and without allocating what it claims; the rest of the context is unaffected.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time

import pytest
from transport_util import (
    CONTROL,
    HEADER,
    HTTP_REQUEST,
    NOT_YOTON,
    address,
    check_pubsub,
    fd_count,
    package,
    pubsub_slot,
    rss_bytes,
    wait_for,
)

import yoton

pytestmark = pytest.mark.timeout(30)

BIND = "127.0.0.1:0"
TWO_GIB = 2**31
MiB = 1 << 20


def _hand_id() -> int:
    """A context id for a hand-made peer (never equal to a real one)."""
    return int.from_bytes(os.urandom(8), "little") | 1


def _garbage(size: int) -> bytes:
    """Random bytes without a newline (so the bind never sees a complete line)."""
    return os.urandom(size).replace(b"\n", b"x")


def _record_closed(conn) -> list:
    reasons: list = []
    conn.closed.bind(lambda c, reason: reasons.append(reason))
    return reasons


def _connected_pair(make_ctx, bind_ctx=None):
    """Return (binding context, its connection, peer context) connected over TCP."""
    ctx = bind_ctx if bind_ctx is not None else make_ctx()
    conn = ctx.bind(BIND)
    peer = make_ctx()
    peer.connect(address(conn), timeout=2.0)
    assert wait_for(lambda: conn.is_connected, 2.0)
    return ctx, conn, peer


# 1 ---------------------------------------------------------------------------


def test_http_client_gets_error_line_and_bind_keeps_waiting(make_ctx, raw_client):
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    client = raw_client(conn.port1)
    client.send(HTTP_REQUEST)
    data, how = client.read_until_closed(3.0)
    assert data == NOT_YOTON
    assert how == "eof"
    assert conn.is_waiting and not conn.is_connected

    peer = make_ctx()
    peer_conn = peer.connect(address(conn), timeout=2.0)
    assert peer_conn.is_connected
    assert wait_for(lambda: conn.is_connected, 2.0)
    check_pubsub(ctx, peer, "http")


# 2 ---------------------------------------------------------------------------


def test_silent_client_is_dropped_after_deadline_and_does_not_block_bind(make_ctx, raw_client, monkeypatch):
    from yoton.transport import stream

    monkeypatch.setattr(stream, "HANDSHAKE_DEADLINE", 1.5)  # (3 s by default: the test is about the rule)
    ctx = make_ctx()
    lonely = ctx.bind(BIND)  # a silent client alone: dropped by the deadline
    shared = ctx.bind(BIND)  # a silent client, then a real peer on the same bind

    t_lonely = time.monotonic()
    silent_lonely = raw_client(lonely.port1, timeout=8.0)
    t_shared = time.monotonic()
    silent_shared = raw_client(shared.port1, timeout=8.0)

    # The real peer is served while the silent client still sits on the bind.
    peer = make_ctx()
    peer.connect(address(shared), timeout=2.0)
    assert wait_for(lambda: shared.is_connected, 2.0)
    check_pubsub(ctx, peer, "silent")
    assert time.monotonic() - t_shared < 1.2, "the silent client could not have been dropped yet"

    # The silent client on the lonely bind is dropped after the handshake deadline.
    data, how = silent_lonely.read_until_closed(8.0)
    elapsed = time.monotonic() - t_lonely
    assert how in ("eof", "reset"), f"silent client still connected after {elapsed:.1f} s"
    assert 1.3 <= elapsed <= 4.5, f"silent client dropped after {elapsed:.2f} s"
    assert not data.startswith(b"YOTON!")
    # The other silent client is gone too (its bind stopped listening when it got its peer).
    _, how = silent_shared.read_until_closed(max(0.1, t_shared + 4.5 - time.monotonic()))
    assert how in ("eof", "reset")

    # The lonely bind is still waiting and serves a real peer.
    assert lonely.is_waiting
    peer2 = make_ctx()
    peer2.connect(address(lonely), timeout=2.0)
    assert wait_for(lambda: lonely.is_connected, 2.0)
    check_pubsub(ctx, peer2, "silent-after")
    assert shared.is_connected


# 3 ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300, 1000, 20000])
def test_garbage_without_newline_is_dropped(make_ctx, raw_client, size):
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    client = raw_client(conn.port1)
    client.send_tolerant(_garbage(size))
    data, how = client.read_until_closed(2.0)
    # Closed at once (well before the handshake deadline), not waiting for a newline.
    assert how in ("eof", "reset")
    assert data in (b"", NOT_YOTON)
    if how == "eof":
        assert data == NOT_YOTON
    assert conn.is_waiting

    peer = make_ctx()
    peer.connect(address(conn), timeout=2.0)
    assert wait_for(lambda: conn.is_connected, 2.0)
    check_pubsub(ctx, peer, f"garbage{size}")


def test_bad_hello_lines_are_refused(make_ctx, raw_client):
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    for line, answer in [
        (b"YOTON!nothex.12\r\n", b"ERROR: could not parse id.\r\n"),
        (b"YOTON!%016x\r\n" % 5, b"ERROR: could not parse id.\r\n"),
        (b"hello\r\n", NOT_YOTON),
        (b"\r\n", NOT_YOTON),
    ]:
        client = raw_client(conn.port1)
        client.send(line)
        data, how = client.read_until_closed(2.0)
        assert (data, how) == (answer, "eof"), line
    # A client that hangs up half-way through its hello is dropped too.
    client = raw_client(conn.port1)
    client.send(b"YOTON!0123")
    client.sock.shutdown(1)
    assert client.read_until_closed(2.0)[1] in ("eof", "reset")
    assert conn.is_waiting
    peer = make_ctx()
    peer.connect(address(conn), timeout=2.0)
    check_pubsub(ctx, peer, "badhello")


# 4 ---------------------------------------------------------------------------


def test_header_claiming_2gib_closes_connection_without_allocating(make_ctx, raw_client):
    ctx = make_ctx()
    assert ctx.max_package_size == 1 << 30
    # A real connection on the same context, open throughout.
    _, real_conn, real_peer = _connected_pair(make_ctx, ctx)
    real_reasons = _record_closed(real_conn)
    check_pubsub(ctx, real_peer, "before-attack")

    target = ctx.bind(BIND)
    reasons = _record_closed(target)
    rss_before = rss_bytes()

    hand_id = _hand_id()
    client = raw_client(target.port1)
    answer = client.handshake(hand_id)
    assert answer == b"YOTON!%016x.%d\r\n" % (ctx.id, os.getpid())
    assert wait_for(lambda: target.is_connected, 2.0)
    assert target.id2 == hand_id and target.pid2 == 4242
    client.send(struct.pack("<7Q", 2314885729178898265, 100, hand_id, 1, 0, 0, TWO_GIB))

    _, how = client.read_until_closed(3.0)
    assert how == "eof"
    assert wait_for(lambda: reasons, 3.0), "closed signal did not fire"
    assert len(reasons) == 1
    reason = reasons[0]
    assert "large" in reason.lower() and str(TWO_GIB) in reason, reason
    assert target.close_reason == reason and not target.is_alive
    growth = rss_bytes() - rss_before
    assert growth < 50 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"

    # The other connection was not affected.
    assert real_conn.is_connected and not real_reasons
    check_pubsub(ctx, real_peer, "after-attack")

    # The context binds again and serves a new real peer.
    fresh = ctx.bind(BIND)
    new_peer = make_ctx()
    new_peer.connect(address(fresh), timeout=2.0)
    assert wait_for(lambda: fresh.is_connected, 2.0)
    check_pubsub(ctx, new_peer, "fresh-bind")
    assert target not in ctx.connections_all
    assert len(ctx.connections) == 2


def test_max_package_size_is_the_limit(make_ctx, raw_client):
    ctx = make_ctx(max_package_size=1000)
    sub = yoton.SubChannel(ctx, "limit")
    conn = ctx.bind(BIND)
    reasons = _record_closed(conn)
    hand_id = _hand_id()
    client = raw_client(conn.port1)
    client.handshake(hand_id)
    slot = pubsub_slot("limit")
    client.send(package(slot, hand_id, 1, b"a" * 1000))  # at the limit: fine
    assert sub.recv(3.0) == "a" * 1000
    client.send(HEADER.pack(CONTROL, slot, hand_id, 2, 0, 0, 1001))  # body never sent
    assert client.read_until_closed(3.0)[1] == "eof"
    assert wait_for(lambda: reasons, 3.0)
    assert "1001" in reasons[0] and "1000" in reasons[0], reasons


# 5 ---------------------------------------------------------------------------


def test_wrong_control_bytes_lose_track_of_stream(make_ctx, raw_client):
    ctx = make_ctx()
    _, real_conn, real_peer = _connected_pair(make_ctx, ctx)
    real_reasons = _record_closed(real_conn)

    target = ctx.bind(BIND)
    reasons = _record_closed(target)
    hand_id = _hand_id()
    client = raw_client(target.port1)
    client.handshake(hand_id)
    assert wait_for(lambda: target.is_connected, 2.0)
    client.send(struct.pack("<7Q", int.from_bytes(b"NOTYOTON", "little"), 100, hand_id, 1, 0, 0, 4) + b"abcd")

    assert client.read_until_closed(3.0)[1] in ("eof", "reset")
    assert wait_for(lambda: reasons, 3.0)
    assert reasons == ["Lost track of the stream."]
    assert target.close_reason == "Lost track of the stream."

    assert real_conn.is_connected and not real_reasons
    check_pubsub(ctx, real_peer, "after-lost-track")


def test_bad_header_in_same_write_as_hello_closes_the_connection(make_ctx, raw_client):
    """Bytes after the hello belong to the package stream, even in the same read."""
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    reasons = _record_closed(conn)
    hand_id = _hand_id()
    client = raw_client(conn.port1)
    client.send(b"YOTON!%016x.1\r\n" % hand_id + b"x" * HEADER.size)
    data, how = client.read_until_closed(3.0)
    assert data.startswith(b"YOTON!%016x." % ctx.id)
    assert how in ("eof", "reset")
    assert wait_for(lambda: reasons, 3.0)
    assert reasons == ["Lost track of the stream."]


# 6 ---------------------------------------------------------------------------


def test_memory_threads_and_fds_stay_flat_across_many_attacks(make_ctx, raw_client):
    ctx = make_ctx()
    waiting = ctx.bind(BIND)  # HTTP and garbage clients all go to this one
    rng = random.Random(1234)
    oversized_reasons: list = []

    def http():
        client = raw_client(waiting.port1)
        client.send(HTTP_REQUEST)
        data, how = client.read_until_closed(3.0)
        client.close()
        assert (data, how) == (NOT_YOTON, "eof")

    def garbage():
        client = raw_client(waiting.port1)
        client.send_tolerant(_garbage(rng.randint(257, 6000)))
        _, how = client.read_until_closed(3.0)
        client.close()
        assert how in ("eof", "reset")

    def oversized():
        conn = ctx.bind(BIND)
        conn.closed.bind(lambda c, reason: oversized_reasons.append(reason))
        client = raw_client(conn.port1)
        hand_id = _hand_id()
        client.handshake(hand_id)
        client.send(struct.pack("<7Q", CONTROL, 100, hand_id, 1, 0, 0, rng.choice([TWO_GIB, 2**63, 2**64 - 1])))
        _, how = client.read_until_closed(3.0)
        client.close()
        assert how == "eof"
        assert wait_for(lambda: conn.close_reason is not None, 3.0)
        assert "too large" in conn.close_reason

    attacks = [http, garbage, oversized]
    for attack in attacks * 3:  # warm up (buffers, lazily made objects)
        attack()
    assert wait_for(lambda: len(oversized_reasons) == 3, 3.0)

    threads_before = threading.active_count()
    fds_before = fd_count()
    rss_before = rss_bytes()
    start = time.monotonic()
    for i in range(200):
        attacks[i % 3]()
    expected = 3 + sum(1 for i in range(200) if attacks[i % 3] is oversized)
    assert wait_for(lambda: len(oversized_reasons) == expected, 3.0), len(oversized_reasons)
    assert time.monotonic() - start < 8.0

    assert wait_for(lambda: threading.active_count() == threads_before and fd_count() == fds_before, 3.0), (
        f"threads {threads_before} -> {threading.active_count()}, fds {fds_before} -> {fd_count()}"
    )
    growth = rss_bytes() - rss_before
    assert growth < 30 * MiB, f"RSS grew by {growth / MiB:.1f} MiB"
    assert [c for c in ctx.connections_all] == [waiting]

    peer = make_ctx()
    peer.connect(address(waiting), timeout=2.0)
    assert wait_for(lambda: waiting.is_connected, 2.0)
    check_pubsub(ctx, peer, "after-200")


# 7 ---------------------------------------------------------------------------


def test_hand_made_peer_exchanges_packages(make_ctx, raw_client):
    ctx = make_ctx()
    sub = yoton.SubChannel(ctx, "handmade")
    pub = yoton.PubChannel(ctx, "fromus", yoton.OBJECT)
    conn = ctx.bind(BIND)
    hand_id = _hand_id()
    client = raw_client(conn.port1)
    client.handshake(hand_id)

    client.send(package(pubsub_slot("handmade"), hand_id, 1, "héllo".encode()))
    assert sub.recv(3.0) == "héllo"
    # The same sequence number again is a duplicate; the next one is delivered.
    client.send(
        package(pubsub_slot("handmade"), hand_id, 1, b"dup") + package(pubsub_slot("handmade"), hand_id, 2, b"two")
    )
    assert sub.recv(3.0) == "two"
    assert sub.recv(False) == ""

    # And our packages are framed as the hand-made peer expects.
    pub.send([1, "a"])
    fields, body = client.read_package()
    control, slot, source_id, source_seq, dest_id, dest_seq, length = fields
    assert control == CONTROL
    assert slot == pubsub_slot("fromus", "obj")
    assert source_id == ctx.id and source_seq >= 1
    assert (dest_id, dest_seq) == (0, 0)
    assert body == bytes.fromhex("6c02690100000000000000730161") and length == len(body)


def test_hand_made_peer_may_send_hello_packages_and_close_at_once(make_ctx, raw_client):
    ctx = make_ctx()
    sub = yoton.SubChannel(ctx, "burst")
    conn = ctx.bind(BIND)
    reasons = _record_closed(conn)
    hand_id = _hand_id()
    client = raw_client(conn.port1)
    close_signal = struct.pack("<7Q", CONTROL, 1, 0, 1, 0, 0, 0)
    client.send(
        b"YOTON!%016x.7\r\n" % hand_id
        + package(pubsub_slot("burst"), hand_id, 1, b"one")
        + package(pubsub_slot("burst"), hand_id, 2, b"two")
        + close_signal
    )
    assert sub.recv(3.0) == "one"
    assert sub.recv(3.0) == "two"
    assert wait_for(lambda: reasons, 3.0)
    assert reasons == ["Closed from other end."]


def test_client_that_resets_right_after_hello_does_not_wedge_the_bind(make_ctx, raw_client):
    """A client that says hello and resets at once must not leave a dead bind behind.

    Depending on when the reset lands, the bind either keeps waiting (it saw
    the client gone before accepting it) or accepts it and then closes with
    a reason. What must never happen: a bind that looks WAITING but refuses
    connections.
    """
    ctx = make_ctx()
    peer = make_ctx()
    for round_ in range(5):
        conn = ctx.bind(BIND)
        client = raw_client(conn.port1)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.send(b"YOTON!%016x.7\r\n" % _hand_id())
        client.close()  # RST
        try:
            peer.connect(address(conn), timeout=1.0)
        except yoton.ConnectError:
            assert wait_for(lambda: not conn.is_alive, 2.0), f"round {round_}: bind wedged: {conn!r}"
            assert conn.close_reason, conn
            continue
        assert wait_for(lambda: conn.is_connected, 2.0)
        check_pubsub(ctx, peer, f"after-reset{round_}")


# 8 ---------------------------------------------------------------------------


def test_self_connect_is_refused_and_bind_keeps_waiting(make_ctx):
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    with pytest.raises(yoton.YotonError) as info:
        ctx.connect(address(conn), timeout=1.0)
    assert "self" in str(info.value)
    assert isinstance(info.value, yoton.HandshakeError)
    assert conn.is_waiting
    assert ctx.connection_count == 0 and list(ctx.connections_all) == [conn]

    peer = make_ctx()
    peer.connect(address(conn), timeout=2.0)
    assert wait_for(lambda: conn.is_connected, 2.0)
    check_pubsub(ctx, peer, "after-self")
