"""Limits of a Context against peers that misbehave: package size, bounded send
queues with discards counted, malformed packages.

Real sockets on 127.0.0.1. A "peer that does not read" is a hand-made yoton
peer on a plain socket with a tiny receive buffer that says hello and then
reads nothing until the test lets it; the send side is measured through
``Context.statistics()``, not through guesses about process memory.
"""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from helpers import link, wait_until

import yoton
from yoton.wire.codec import encode_object
from yoton.wire.naming import slot_hash

pytestmark = pytest.mark.timeout(60)

HEADER = struct.Struct("<7Q")
CONTROL = int.from_bytes(b"YOTON   ", "little")
PKG = HEADER.size + 1000  # bytes one flood package takes in a send queue


class RawPeer:
    """A hand-made yoton peer: hello, then it reads only when asked to."""

    def __init__(self, port: int, rcvbuf: int = 4096):
        self.id = int.from_bytes(os.urandom(8), "little") | 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: a small window
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"YOTON!%016x.4242\r\n" % self.id)
        self.sock, self.buf = sock, b""
        while b"\n" not in self.buf:
            data = sock.recv(4096)
            assert data, "the bind closed during the handshake"
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        assert line.startswith(b"YOTON!"), line
        self.packages: list = []  # (slot, source_seq, body) of packages with a body
        self.close_signal_last = False

    def send_package(self, slot: int, seq: int, body: bytes) -> None:
        self.sock.sendall(HEADER.pack(CONTROL, slot, self.id, seq, 0, 0, len(body)) + body)

    def read_to_end(self, timeout: float = 20.0) -> None:
        """Read and parse everything until the other end closes."""
        self.sock.settimeout(timeout)
        data = bytearray(self.buf)
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        pos = 0
        while len(data) - pos >= HEADER.size:
            control, slot, _, seq, _, _, length = HEADER.unpack_from(data, pos)
            assert control == CONTROL, "the stream lost track"
            if len(data) - pos - HEADER.size < length:
                break
            body = bytes(data[pos + HEADER.size : pos + HEADER.size + length])
            pos += HEADER.size + length
            if length:
                self.packages.append((slot, seq, body))
                self.close_signal_last = False
            elif slot == 1 and seq == 1:
                self.close_signal_last = True

    def bodies(self, slot: int) -> list:
        return [body for s, _, body in self.packages if s == slot]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_peer():
    made = []

    def make(port, **kwargs):
        peer = RawPeer(port, **kwargs)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


def _pubsub_slot(base: str, type_name: str = "bin") -> int:
    return slot_hash(f"{base}.{type_name}.pub-sub")


def _flood(pub, n: int, probe=None) -> int:
    """Publish n numbered 1000-byte messages; return the largest ``probe()`` seen meanwhile."""
    worst = 0
    for i in range(n):
        pub.send(b"%08d" % i + b"x" * 992)
        if probe is not None and i % 50 == 0:
            worst = max(worst, probe())
    return max(worst, probe()) if probe is not None else 0


def _numbers(bodies) -> list:
    return [int(body[:8]) for body in bodies]


# -- max_package_size --------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -5, True, 2.0, "1000"])
def test_max_package_size_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_package_size"):
        yoton.Context(max_package_size=bad)


def test_sending_over_max_package_size_raises_and_queues_nothing(ctx):
    a = ctx(max_package_size=1000)
    pub = yoton.PubChannel(a, "size", yoton.BINARY)
    pub.send(b"x" * 1000)  # at the limit: fine
    queued = a.statistics()["queued_bytes"]
    assert queued == HEADER.size + 1000
    with pytest.raises(ValueError, match=r"1001 bytes.*max_package_size is 1000"):
        pub.send(b"x" * 1001)
    state = yoton.StateChannel(a, "size")
    state.send("small")
    with pytest.raises(ValueError, match="max_package_size"):
        state.send("y" * 1001)
    assert state.recv() == "small"  # a refused state does not become ours
    req = yoton.ReqChannel(a, "size")
    with pytest.raises(ValueError, match="request too large"):
        req.echo("z" * 2000)
    assert req.statistics()["pending_requests"] == 0
    assert a.statistics()["discarded_outgoing"] == 0


class _Big(yoton.RepChannel):
    def big(self, n):
        return "x" * n


def test_a_reply_over_max_package_size_comes_back_as_a_remote_error(ctx):
    a, b = ctx(max_package_size=2000), ctx()
    link(a, b)
    rep = _Big(a, "big")
    rep.set_mode("thread")
    req = yoton.ReqChannel(b, "big")
    assert req.big(10).result(5.0) == "x" * 10
    with pytest.raises(yoton.RemoteError, match="reply too large"):
        req.big(5000).result(5.0)
    assert req.big(20).result(5.0) == "x" * 20  # the replier goes on serving


def test_a_peer_sending_over_our_max_package_size_is_cut_off_and_others_are_served(ctx):
    b = ctx(max_package_size=1000)
    a, c = ctx(), ctx()
    to_a = link(b, a)
    to_c = link(b, c)
    reasons = []
    to_a.closed.bind(lambda conn, reason: reasons.append(reason))
    sub = yoton.SubChannel(b, "limit", yoton.BINARY)
    pub_a, pub_c = yoton.PubChannel(a, "limit", yoton.BINARY), yoton.PubChannel(c, "limit", yoton.BINARY)
    pub_a.send(b"a" * 1000)
    assert sub.recv(3.0) == b"a" * 1000
    pub_a.send(b"A" * 2000)  # fine for a, too large for b
    wait_until(lambda: reasons, 5.0, "the connection to a to close", pump=True)
    assert "too large" in reasons[0] and "2000" in reasons[0] and "1000" in reasons[0], reasons
    assert not to_a.is_alive and to_c.is_connected
    pub_c.send(b"from c")
    assert sub.recv(3.0) == b"from c"
    assert sub.recv(False) == b""  # nothing of the oversized package was delivered


# -- malformed packages ------------------------------------------------------------


def test_bad_object_payload_raises_in_recv_and_breaks_nothing(ctx, raw_peer):
    """An OBJECT body that does not decode is the receiver's to see (ValueError
    from recv, the message consumed); the stream is intact, so the connection
    stays, as do the channel and the other peers."""
    b, c = ctx(), ctx()
    to_c = link(b, c)
    sub = yoton.SubChannel(b, "obj", yoton.OBJECT)
    target = b.bind("127.0.0.1:0")
    peer = raw_peer(target.port1)
    wait_until(lambda: target.is_connected, 3.0, "the hand-made peer")
    slot = _pubsub_slot("obj", "obj")
    peer.send_package(slot, 1, b"\xfe\xff not an object")
    peer.send_package(slot, 2, encode_object([1, "two"]))
    wait_until(lambda: sub.pending == 2, 3.0, "both packages")
    with pytest.raises(ValueError):
        sub.recv(False)
    assert sub.recv(False) == [1, "two"]
    assert target.is_connected and to_c.is_connected
    yoton.PubChannel(c, "obj", yoton.OBJECT).send({"from": "c"})
    assert sub.recv(3.0) == {"from": "c"}


def test_bad_header_from_one_peer_closes_only_that_connection(ctx, raw_peer):
    b, c = ctx(), ctx()
    to_c = link(b, c)
    sub = yoton.SubChannel(b, "hdr", yoton.BINARY)
    target = b.bind("127.0.0.1:0")
    reasons = []
    target.closed.bind(lambda conn, reason: reasons.append(reason))
    peer = raw_peer(target.port1)
    wait_until(lambda: target.is_connected, 3.0, "the hand-made peer")
    peer.send_package(_pubsub_slot("hdr"), 1, b"ok")
    peer.sock.sendall(b"N" * HEADER.size)  # control field wrong: the stream is lost
    assert sub.recv(3.0) == b"ok"
    wait_until(lambda: reasons, 3.0, "the connection to close", pump=True)
    assert reasons == ["Lost track of the stream."]
    assert to_c.is_connected
    yoton.PubChannel(c, "hdr", yoton.BINARY).send(b"still here")
    assert sub.recv(3.0) == b"still here"


# -- bounded send queues -----------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, False, 1.0])
def test_max_queue_bytes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_queue_bytes"):
        yoton.Context(max_queue_bytes=bad)


@pytest.mark.parametrize("mode, kept", [("old", range(15, 25)), ("new", range(0, 10))])
def test_startup_queue_is_bounded(ctx, mode, kept):
    a = ctx(queue_params=(100, mode), max_queue_bytes=10 * PKG)
    pub = yoton.PubChannel(a, "startup", yoton.BINARY)
    _flood(pub, 25)  # no connection yet: all into the startup queue
    assert a.statistics() == {"queued_bytes": 10 * PKG, "discarded_outgoing": 15, "refused": 0}
    b = ctx()
    sub = yoton.SubChannel(b, "startup", yoton.BINARY)
    link(a, b)  # the startup queue goes to the first connection
    got = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= 10, 5.0, "the kept messages")
    assert _numbers(got) == list(kept)
    wait_until(lambda: a.statistics()["queued_bytes"] == 0, 3.0, "the send queue to be written")
    assert a.statistics()["discarded_outgoing"] == 15


@pytest.mark.parametrize("mode", ["old", "new"])
def test_send_queue_to_a_peer_that_does_not_read_stays_bounded(ctx, raw_peer, mode):
    """The sender waits while the peer reads nothing; once the connection has
    stalled (nothing taken for its timeout) its queue discards by the mode."""
    cap, n = 256 * 1024, 12_000  # 12 MB: more than the kernel buffers and the cap together
    a = ctx(queue_params=(100, mode), max_queue_bytes=cap)
    conn = a.bind("127.0.0.1:0")
    pub = yoton.PubChannel(a, "flood", yoton.BINARY)
    peer = raw_peer(conn.port1)
    wait_until(lambda: conn.is_connected, 3.0, "the hand-made peer")
    conn.timeout = 0.5

    worst = _flood(pub, n, lambda: a.statistics()["queued_bytes"])
    stats = a.statistics()
    discarded = stats["discarded_outgoing"]
    assert worst <= cap * 5 // 4 + 256 * 1024 + PKG, f"{worst} bytes queued, the cap is {cap}"
    assert discarded > 0, stats

    # The peer starts reading: everything not discarded arrives, in order.
    reader = threading.Thread(target=peer.read_to_end)
    reader.start()
    try:
        a.flush(10.0)
        assert a.statistics() == {"queued_bytes": 0, "discarded_outgoing": discarded, "refused": 0}
        pub.send(b"%08d" % n + b"x" * 992)  # accepted after the flood and delivered by the close
        conn.close()
    finally:
        reader.join(20.0)
    got = _numbers(peer.bodies(_pubsub_slot("flood")))
    assert len(got) + discarded == n + 1, (len(got), discarded)
    assert got == sorted(set(got))
    assert got[-1] == n and peer.close_signal_last
    if mode == "old":
        assert n - 1 in got  # the newest stays, the oldest not yet written went
    else:
        assert got[0] == 0  # the first stays, the newest went


@pytest.mark.parametrize("mode", ["old", "new"])
def test_a_relay_to_a_peer_that_does_not_read_stays_bounded_and_releases_its_upstream(ctx, raw_peer, mode):
    """b relays a's packages to a peer that does not read: b holds reading from
    a while its queue to that peer is full; once that connection has stalled,
    b discards for it (bounded and counted) and a, which b reads fine again,
    loses nothing."""
    cap, n = 256 * 1024, 12_000
    a = ctx()
    b = ctx(queue_params=(100, mode), max_queue_bytes=cap)
    link(b, a)
    a.connections[0].timeout = 10.0  # (a's sender waits while b holds: it must not give up)
    target = b.bind("127.0.0.1:0")
    peer = raw_peer(target.port1)
    wait_until(lambda: target.is_connected, 3.0, "the hand-made peer")
    target.timeout = 0.5
    done = yoton.SubChannel(b, "done", yoton.BINARY)
    pub = yoton.PubChannel(a, "flood", yoton.BINARY)
    worst = _flood(pub, n, lambda: b.statistics()["queued_bytes"])
    yoton.PubChannel(a, "done", yoton.BINARY).send(b"done")
    assert done.recv(10.0) == b"done"  # b has routed all of the flood (one stream, in order)
    discarded = b.statistics()["discarded_outgoing"]
    assert discarded > 0
    # the cap, one read forwarded at once, and what the writer holds
    assert max(worst, b.statistics()["queued_bytes"]) <= cap + 2 * 256 * 1024 + PKG
    assert a.statistics()["discarded_outgoing"] == 0

    reader = threading.Thread(target=peer.read_to_end)
    reader.start()
    try:
        b.flush(10.0)
        target.close()
    finally:
        reader.join(20.0)
    got = _numbers(peer.bodies(_pubsub_slot("flood")))
    done_seen = len(peer.bodies(_pubsub_slot("done")))
    assert len(got) + done_seen + discarded == n + 1
    assert got == sorted(set(got)) and peer.close_signal_last
    if mode == "old":
        assert done_seen == 1  # the newest always stays
    else:
        assert got[0] == 0
