"""Hostile peers, round two: one peer must not silence, impersonate or bloat another.

The attacker is a raw socket that speaks the wire format (tests/transport's
RawClient); the victim is a context with real peers around it. Each test
measures what the attack would have broken: the victim's memory, and that
its real peers are still heard.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
from helpers import link, wait_until

import yoton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "transport"))
from transport_util import RawClient, package, pubsub_slot  # noqa: E402

from yoton.context import MAX_SEQ_JUMP, MAX_SOURCES  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SLOT_CONTEXT = 2


def _hand_id() -> int:
    return int.from_bytes(os.urandom(8), "little") | 1


@pytest.fixture
def attacker():
    made = []

    def connect(conn):
        """A raw client that completes the handshake with the bind ``conn``."""
        client = RawClient(conn.port1)
        client.id = _hand_id()
        assert client.handshake(client.id).startswith(b"YOTON!")
        wait_until(lambda: conn.is_connected, 5.0, "the attacker's connection")
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def _heard(sender_ctx, receiver_ctx, slot: str, timeout: float = 3.0) -> bool:
    """Whether a message published by ``sender_ctx`` reaches ``receiver_ctx``."""
    sub = yoton.SubChannel(receiver_ctx, slot)
    pub = yoton.PubChannel(sender_ctx, slot)
    try:
        pub.send("can you hear me")
        return sub.recv(timeout) == "can you hear me"
    finally:
        pub.close()
        sub.close()


def _settle(a, b):
    """Wait until b has seen a package from a (so a's id is in b's de-duplication map)."""
    assert _heard(a, b, "settle")


def test_made_up_source_ids_do_not_grow_the_deduplication_map_for_ever(ctx, attacker):
    victim = ctx()
    conn = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    n = MAX_SOURCES + 50_000
    slot = pubsub_slot("nobody-listens")
    evil.send(b"".join(package(slot, (i << 20) | 0xBAD, 1, b"x") for i in range(1, n + 1)))
    probe = yoton.SubChannel(victim, "probe")
    evil.send(package(pubsub_slot("probe"), evil.id, 1, b"last"))
    assert probe.recv(20.0) == "last"  # (all of the flood has been routed)
    assert len(victim.router._last_seq) <= MAX_SOURCES
    real = ctx()
    link(victim, real)  # a real peer is still served
    assert _heard(real, victim, "after-flood") and _heard(victim, real, "after-flood")


def test_nothing_is_forwarded_into_a_bind_that_has_no_peer_yet(ctx, attacker):
    victim = ctx()
    conn = victim.bind("127.0.0.1:0")
    waiting = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    junk = b"j" * 1000
    slot = pubsub_slot("junk")
    probe = yoton.SubChannel(victim, "junk")
    evil.send(b"".join(package(slot, evil.id, i, junk) for i in range(1, 5001)))  # broadcasts
    evil.send(b"".join(package(slot, evil.id, i, junk, dest_id=0x1234) for i in range(5001, 10001)))
    evil.send(package(slot, evil.id, 10001, b"last"))
    wait_until(lambda: probe.pending == 5001, 10.0, "the flood to be routed")
    assert victim.statistics()["queued_bytes"] == 0  # nothing kept for the future peer
    late = ctx()
    sub = yoton.SubChannel(late, "junk")
    late.connect(f"127.0.0.1:{waiting.port1}", timeout=3.0)
    wait_until(lambda: waiting.is_connected, 3.0, "the late peer")
    assert _heard(victim, late, "hello-late")
    assert sub.recv_all() == []  # it got none of the junk sent before it came


def test_a_peer_cannot_silence_a_direct_peer_by_forging_its_id(ctx, attacker):
    victim, real = ctx(), ctx()
    link(victim, real)
    _settle(real, victim)
    conn = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    probe = yoton.SubChannel(victim, "probe")
    # One 57-byte package in the real peer's name with the last sequence number.
    evil.send(package(pubsub_slot("x"), real.id, 2**64 - 1, b"x"))
    evil.send(package(pubsub_slot("x"), real.id, 2**64 - 2, b"y"))
    evil.send(package(pubsub_slot("x"), real.id, 1, b"z"))  # (an old number: a plain duplicate)
    evil.send(package(pubsub_slot("probe"), evil.id, 1, b"done"))
    assert probe.recv(5.0) == "done"
    assert victim.statistics()["refused"] == 2
    assert _heard(real, victim, "still-heard")
    assert real.connections[0].is_connected


def test_a_peer_cannot_silence_a_distant_context_with_a_sequence_jump(ctx, attacker):
    """victim - relay - far: far's id is not checked on a link (it is not a
    direct peer), but a jump past its numbering that would silence it is refused."""
    victim, relay, far = ctx(), ctx(), ctx()
    link(victim, relay)
    link(relay, far)
    _settle(far, victim)
    conn = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    probe = yoton.SubChannel(victim, "probe")
    evil.send(package(pubsub_slot("x"), far.id, 2**64 - 1, b"x"))
    evil.send(package(pubsub_slot("x"), far.id, far.router._seq + MAX_SEQ_JUMP + 10, b"x"))
    evil.send(package(pubsub_slot("probe"), evil.id, 1, b"done"))
    assert probe.recv(5.0) == "done"
    assert victim.statistics()["refused"] == 2
    assert _heard(far, victim, "still-heard-far")


def test_a_mesh_is_quiet_about_the_copies_it_drops(ctx, caplog):
    """In a triangle every package arrives twice; the relayed copies of a
    direct peer's packages are dropped without a warning."""
    a, b, c = ctx(), ctx(), ctx()
    link(a, b)
    link(b, c)
    link(c, a)
    subs = [yoton.SubChannel(x, "tri") for x in (b, c)]
    pub = yoton.PubChannel(a, "tri")
    with caplog.at_level(logging.WARNING, logger="yoton"):
        for i in range(2000):
            pub.send(str(i))
        for sub in subs:
            got = []
            wait_until(lambda: got.extend(sub.recv_all()) or len(got) >= 2000, 10.0, "the messages")
            assert got == [str(i) for i in range(2000)]
    assert [r.message for r in caplog.records] == []


def test_close_connection_in_another_peers_name_is_refused(ctx, attacker):
    victim, real = ctx(), ctx()
    link(victim, real)
    _settle(real, victim)
    conn = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    probe = yoton.SubChannel(victim, "probe")
    evil.send(package(SLOT_CONTEXT, real.id, 10**6, b"CLOSE_CONNECTION"))
    evil.send(package(pubsub_slot("probe"), evil.id, 1, b"done"))
    assert probe.recv(5.0) == "done"
    assert victim.connection_count == 2 and real.connections[0].is_connected
    assert _heard(real, victim, "still-linked")
    # In its own name it may ask (and its own link is what closes).
    evil.send(package(SLOT_CONTEXT, evil.id, 2, b"CLOSE_CONNECTION"))
    wait_until(lambda: not conn.is_alive, 5.0, "the attacker's own link to close")
    assert victim.connection_count == 1


def test_a_burst_of_serial_connects_is_not_held_up_by_a_short_backlog(ctx):
    """Binds listen with a backlog of 128: 100 connects made at once all
    complete without the kernel dropping SYNs (a backlog of 8 made some wait
    a 1 s retransmit)."""
    import socket
    import time

    victim = ctx()
    conn = victim.bind("127.0.0.1:0")
    t0 = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", conn.port1), timeout=5.0) for _ in range(100)]
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    assert elapsed < 0.9, f"100 connects took {elapsed:.2f} s"


def test_made_up_full_subscribers_do_not_grow_a_publishers_map(ctx, attacker):
    from yoton.channels.pubsub import MAX_BLOCKERS
    from yoton.wire.naming import slot_hash

    victim = ctx()
    conn = victim.bind("127.0.0.1:0")
    evil = attacker(conn)
    pub = yoton.PubChannel(victim, "news")
    slot = slot_hash("news.txt.sub-pub")  # where subscribers say 'full' / 'ok'

    probe = yoton.SubChannel(victim, "probe")
    evil.send(b"".join(package(slot, (i << 20) | 0xF00, 1, b"full") for i in range(1, 100_001)))
    evil.send(package(pubsub_slot("probe"), evil.id, 1, b"done"))
    assert probe.recv(10.0) == "done"
    assert len(pub._blockers) == MAX_BLOCKERS


# -- request/reply ------------------------------------------------------------------

REF = 2**63


def _reqrep_slots(base: str):
    from yoton.wire.naming import slot_hash

    return slot_hash(f"{base}.obj.req-rep"), slot_hash(f"{base}.obj.rep-req")


class Slow(yoton.RepChannel):
    def ping(self, x, delay=0.0):
        import time

        time.sleep(delay)
        return ("pong", x)


def _replier_under_attack(ctx, attacker, mode):
    """A Slow replier on slot "svc" (in ``mode``) whose context is linked to a requester
    context and bound for an attacker: ``(replier context, requester context, replier, attacker)``."""
    replier, requester = ctx(), ctx()
    link(replier, requester)
    svc = Slow(replier, "svc")
    svc.set_mode(mode)
    return replier, requester, svc, attacker(replier.bind("127.0.0.1:0"))


def test_a_forged_reply_does_not_complete_a_request(ctx, attacker):
    from yoton.wire.codec import encode_object

    requester, replier = ctx(), ctx()
    link(requester, replier)
    Slow(replier, "svc").set_mode("thread")
    conn = requester.bind("127.0.0.1:0")
    evil = attacker(conn)
    req = yoton.ReqChannel(requester, "svc")
    _, rep_slot = _reqrep_slots("svc")
    future = req.ping(1, 0.3)  # request number 1: the replier takes 0.3 s
    forged = encode_object(("forged", 1))
    for source in (evil.id, _hand_id()):  # in its own name and in an invented one
        evil.send(package(rep_slot, source, 10 + (source & 0xFF), forged, dest_id=requester.id, dest_seq=1))
    evil.send(package(rep_slot, evil.id, 1000, forged, dest_id=0, dest_seq=1))  # (broadcast)
    assert future.result(5.0) == ("pong", 1)


def test_a_forged_decline_does_not_send_a_taken_request_elsewhere(ctx, attacker, monkeypatch):
    """'req~' only puts back a direct request, and only from the replier it went to."""
    monkeypatch.setattr("yoton.channels.reqrep.DIRECT_WINDOW", 60.0)  # (a loaded machine may be slow)
    requester, replier = ctx(), ctx()
    link(requester, replier)
    svc = Slow(replier, "svc")
    svc.set_mode("thread")
    conn = requester.bind("127.0.0.1:0")
    evil = attacker(conn)
    req = yoton.ReqChannel(requester, "svc")
    _, rep_slot = _reqrep_slots("svc")
    assert req.ping(0).result(5.0) == ("pong", 0)  # (the next goes straight to the replier)
    taken = req.ping(1, 0.3)
    assert taken.running() and req.statistics()["direct"] == 1
    n = taken._request_id
    for source in (evil.id, replier.id):  # from the attacker, and in the replier's name
        evil.send(package(rep_slot, source, 10 + (source & 0xFF), b"req~", dest_id=requester.id, dest_seq=REF + n))
    assert taken.result(5.0) == ("pong", 1)
    assert req.statistics()["declined"] == 0
    wait_until(lambda: svc.statistics()["served"] == 2, 5.0, "the served counter (counted after the reply)")
    assert svc.statistics()["served"] == 2


def test_forged_invitations_do_not_crowd_out_a_real_replier(ctx, attacker):
    """'req+' in made-up names (a relay's packages carry any source id) must not
    fill the requester's list of repliers that take direct requests."""
    from yoton.channels.reqrep import MAX_DIRECT

    requester, replier = ctx(), ctx()
    conn = requester.bind("127.0.0.1:0")
    evil = attacker(conn)
    req = yoton.ReqChannel(requester, "svc")
    _, rep_slot = _reqrep_slots("svc")
    evil.send(
        b"".join(
            package(rep_slot, _hand_id(), 1, b"req+", dest_id=requester.id, dest_seq=REF + 1) for _ in range(MAX_DIRECT)
        )
    )
    wait_until(lambda: req.statistics()["received"] >= MAX_DIRECT, 5.0, "the forged invitations")
    link(requester, replier)
    Slow(replier, "svc").set_mode("thread")
    assert [req.ping(i).result(5.0) for i in range(3)] == [("pong", i) for i in range(3)]
    assert req.statistics()["direct"] >= 1


def test_a_decline_in_the_name_of_a_replier_that_is_gone_is_not_taken(ctx, attacker):
    """Once the replier is no direct peer any more, its id is anyone's (a relayed
    package may carry it): a 'req~' in its name must not send elsewhere a request
    it may have served already; the request fails as for a replier gone."""
    import threading

    requester, replier = ctx(), ctx()
    link(requester, replier)
    started = threading.Event()

    class Held(yoton.RepChannel):
        def ping(self, x, hold=False):
            if hold:
                started.set()
                threading.Event().wait(0.5)  # (served while its context closes)
            return ("pong", x)

    Held(replier, "svc").set_mode("thread")
    conn = requester.bind("127.0.0.1:0")
    evil = attacker(conn)
    req = yoton.ReqChannel(requester, "svc")
    _, rep_slot = _reqrep_slots("svc")
    assert req.ping(0).result(5.0) == ("pong", 0)
    taken = req.ping(1, True)
    assert taken.running() and req.statistics()["direct"] == 1
    assert started.wait(5.0)
    replier_id = replier.id
    replier.close()
    wait_until(lambda: not requester.router.is_direct_peer(replier_id), 5.0, "the replier to go")
    decline = package(rep_slot, replier_id, 10**6, b"req~", dest_id=requester.id, dest_seq=REF + taken._request_id)
    evil.send(decline)
    with pytest.raises(yoton.RemoteError, match="connection closed before it answered"):
        taken.result(5.0)
    assert req.statistics()["declined"] == 0


def test_a_flood_of_direct_requests_is_served_one_at_a_time_or_declined(ctx, attacker):
    from yoton.wire.codec import encode_object

    replier, requester, svc, evil = _replier_under_attack(ctx, attacker, "thread")
    req_slot, _ = _reqrep_slots("svc")
    body = b"req=" + encode_object(("ping", ("x", 0.01), {}))
    n = 2000
    evil.send(
        b"".join(package(req_slot, evil.id, i, body, dest_id=replier.id, dest_seq=REF + i) for i in range(1, n + 1))
    )
    # never invited (it announced nothing): every one is declined, no queue grows
    wait_until(lambda: svc.statistics()["declined"] >= n - 10, 20.0, "the direct requests to be declined")
    assert len(svc._work) <= 1
    req = yoton.ReqChannel(requester, "svc")
    assert req.ping(1).result(5.0) == ("pong", 1)  # a real requester is served as usual
    stats = svc.statistics()
    wait_until(lambda: svc.statistics()["direct"] + svc.statistics()["declined"] == n, 5.0, "every direct request")
    assert stats["declined"] >= n - 10


def test_a_stream_of_announcements_never_followed_by_requests_does_not_starve_real_requesters(ctx, attacker):
    import threading
    import time

    replier, requester, svc, evil = _replier_under_attack(ctx, attacker, "thread")
    req_slot, _ = _reqrep_slots("svc")
    stop = threading.Event()

    def announce():  # ~5,000 announcements a second, none ever followed by its request
        n = 0
        while not stop.is_set():
            evil.send_tolerant(
                b"".join(package(req_slot, evil.id, n + i + 1, b"req?", dest_seq=REF + n + i + 1) for i in range(50))
            )
            n += 50
            stop.wait(0.01)

    flood = threading.Thread(target=announce)
    flood.start()
    try:
        req = yoton.ReqChannel(requester, "svc")
        for i in range(4):
            t0 = time.monotonic()
            assert req.ping(i).result(4.0) == ("pong", i)  # (yoton 2.2 and before: cancelled after 10 s)
            assert time.monotonic() - t0 < 2.5
        assert svc.statistics()["offers"] <= 256  # its announcements are kept within the bound
    finally:
        stop.set()
        flood.join()


@pytest.mark.parametrize("mode", ["thread", "event"])
def test_request_bodies_that_were_not_acknowledged_are_not_queued(ctx, attacker, mode):
    from yoton.wire.codec import encode_object

    replier, requester, svc, evil = _replier_under_attack(ctx, attacker, mode)
    req_slot, _ = _reqrep_slots("svc")
    body = encode_object(("ping", ("x" * 300,), {}))
    n = 50_000
    evil.send(b"".join(package(req_slot, evil.id, i, body, dest_id=replier.id, dest_seq=i) for i in range(1, n + 1)))
    wait_until(lambda: svc.statistics()["refused"] == n, 20.0, "the bodies to be refused")
    assert len(svc._work) == 0
    assert yoton.events._events.pending() < 100  # (event mode, no loop running: no events piled up)
    req = yoton.ReqChannel(requester, "svc")
    future = req.ping(1)
    wait_until(lambda: future.done(), 5.0, "the real request", pump=True)
    assert future.result(0) == ("pong", 1)
    assert svc.statistics()["served"] == 1


def test_a_request_that_comes_too_late_is_answered_with_an_error(ctx, attacker):
    """A requester that sends its request more than ACK_TIMEOUT after the
    acknowledgement does not wait for ever: the replier answers with an error."""
    import time

    from yoton.channels.reqrep import ACK_TIMEOUT
    from yoton.wire.codec import decode_object, encode_object

    replier = ctx()
    Slow(replier, "svc").set_mode("thread")
    conn = replier.bind("127.0.0.1:0")
    slow = attacker(conn)  # a requester by hand, slow to follow up
    req_slot, rep_slot = _reqrep_slots("svc")
    slow.send(package(req_slot, slow.id, 1, b"req?", dest_seq=REF + 7))
    fields, body = slow.read_package(5.0)  # (first, to a direct peer: "I take direct requests")
    assert (fields[1], fields[4], fields[5], body) == (rep_slot, slow.id, REF + 7, b"req+")
    fields, body = slow.read_package(5.0)
    assert (fields[1], fields[4], fields[5], body) == (rep_slot, slow.id, REF + 7, b"req!")
    time.sleep(ACK_TIMEOUT * 1.5 + 0.2)  # (the scenario: later than the replier waits, ticks included)
    slow.send(package(req_slot, slow.id, 2, encode_object(("ping", (1,), {})), dest_id=replier.id, dest_seq=7))
    fields, body = slow.read_package(5.0)
    tag, text = decode_object(body)
    assert (fields[4], fields[5], tag) == (slow.id, 7, "yoton_ERROR_HANDLING_REQUEST")
    assert "stopped waiting" in text


def test_a_reply_is_decoded_by_the_thread_that_asks_for_it(ctx, monkeypatch):
    import threading

    import yoton.channels.reqrep as reqrep

    a, b = ctx(), ctx()
    link(a, b)
    Slow(a, "svc").set_mode("thread")
    seen = []
    real = reqrep.decode_object

    def spy(data, *args, **kwargs):
        seen.append(threading.current_thread())
        return real(data, *args, **kwargs)

    monkeypatch.setattr(reqrep, "decode_object", spy)
    req = yoton.ReqChannel(b, "svc")
    future = req.ping(list(range(1000)))
    wait_until(future.done, 5.0, "the reply")
    caller = threading.current_thread()
    requester_side = [t for t in seen if t is caller or t.name.startswith(f"yoton-io-{b.id:016x}")]
    assert requester_side == []  # not decoded on arrival, on the loop side
    assert future.result(0) == ("pong", list(range(1000)))
    assert seen[-1] is caller


# -- the request server --------------------------------------------------------------


@pytest.mark.parametrize("async_val", [False, True])
def test_silent_clients_hold_up_neither_the_request_server_nor_its_threads(async_val):
    import socket
    import threading
    import time

    server = yoton.RequestServer("127.0.0.1:0", async_val=async_val, client_timeout=10.0, max_clients=64)
    server.start()
    try:
        host, port = server.address
        threads_before = threading.active_count()
        silent = [socket.create_connection((host, port), timeout=5.0) for _ in range(200)]
        t0 = time.monotonic()
        assert yoton.do_request(f"{host}:{port}", "hello", 5.0) == "Requested: hello\r\n"
        assert time.monotonic() - t0 < 1.0  # (was: after every silent client's 10 s)
        assert threading.active_count() <= threads_before + 2  # no thread per client
        assert len(server._clients) <= 64
        for sock in silent:
            sock.close()
    finally:
        server.stop(join=True)


def test_a_request_body_still_on_its_way_after_the_acknowledgement_wait_is_served(ctx, attacker):
    """The replier's wait for an acknowledged request (ACK_TIMEOUT) counts
    from the acknowledgement, but a large body that keeps coming gets the
    time it needs: a 2 MB request trickling in over 1.5 s is served (400 MB
    over loopback failed that way)."""
    import time

    from yoton.channels.reqrep import ACK_TIMEOUT
    from yoton.wire.codec import decode_object, encode_object

    class Sizer(yoton.RepChannel):
        def size(self, blob):
            return len(blob)

    replier = ctx()
    Sizer(replier, "svc").set_mode("thread")
    conn = replier.bind("127.0.0.1:0")
    slow = attacker(conn)  # a requester by hand, with a slow link
    req_slot, rep_slot = _reqrep_slots("svc")
    slow.send(package(req_slot, slow.id, 1, b"req?", dest_seq=REF + 3))
    bodies = [slow.read_package(5.0)[1] for _ in range(2)]
    assert bodies == [b"req+", b"req!"]
    request = package(
        req_slot, slow.id, 2, encode_object(("size", ("x" * (2 << 20),), {})), dest_id=replier.id, dest_seq=3
    )
    t0 = time.monotonic()
    piece = len(request) // 50 + 1
    for i in range(0, len(request), piece):  # in 50 pieces over 2.5 s
        slow.send(request[i : i + piece])
        time.sleep(0.05)  # (the scenario: a slow link)
    assert time.monotonic() - t0 > 2 * ACK_TIMEOUT
    fields, body = slow.read_package(5.0)
    assert (fields[4], fields[5], decode_object(body)) == (slow.id, 3, 2 << 20)
