"""What other NATS clients publish on yoton's subjects: the link counts what is
not yoton's, drops it, and goes on receiving yoton's traffic."""

from __future__ import annotations

import asyncio

import pytest
from helpers import wait_until

import yoton
from yoton.transport.nats import PART_HEADER, slot_subject
from yoton.wire.frames import CONTROL, HEADER
from yoton.wire.naming import slot_hash

pytestmark = pytest.mark.timeout(60)


def publish_raw(url: str, *messages) -> None:
    """Publish ``(subject, data, options)`` messages with a bare nats-py client, and flush."""

    async def run():
        import nats

        nc = await nats.connect(url)
        try:
            for subject, data, options in messages:
                await nc.publish(subject, data, **options)
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(run())


_START = {"headers": {PART_HEADER: "start"}}


def frame(slot_name: str, body: bytes, source: int = 0x5EED, seq: int = 1, length: int | None = None) -> bytes:
    """A yoton frame (header and body) for the slot named ``slot_name``, from a made-up source."""
    slot = slot_hash(slot_name.strip().lower())
    return HEADER.pack(CONTROL, slot, source, seq, 0, 0, len(body) if length is None else length) + body


def _pair(nats_server, nats_ctx, **receiver_options):
    """A publisher and a subscriber context on the test's network, subscribed to "news":
    ``(pub, sub, the subscriber's connection)``."""
    b, cb = nats_ctx(nats_server.url, **receiver_options)
    sub = yoton.SubChannel(b, "news")
    a, _ = nats_ctx(nats_server.url)
    pub = yoton.PubChannel(a, "news")
    return pub, sub, cb


def test_a_message_with_a_reply_subject_is_counted_and_reading_goes_on(nats_server, nats_ctx):
    pub, sub, conn = _pair(nats_server, nats_ctx)
    pub.send("one")
    assert sub.recv(block=5) == "one"
    subject = slot_subject(sub.slot_incoming, conn.network)
    # In the core mode a reply subject means nothing to yoton: a package with one is a package.
    publish_raw(
        nats_server.url,
        (subject, b"garbage", {"reply": "_INBOX.x"}),
        (subject, frame(sub.slot_incoming, b"relayed"), {"reply": "_INBOX.y"}),
    )
    pub.send("two")
    # (two publishers, two connections to the server: NATS keeps no order between them)
    assert sorted([sub.recv(block=5), sub.recv(block=5)]) == ["relayed", "two"]
    wait_until(lambda: conn.statistics()["malformed"] == 1, 5, "the garbage to be counted")


def test_a_failure_handling_one_message_does_not_stop_the_reading(nats_server, nats_ctx, monkeypatch):
    pub, sub, conn = _pair(nats_server, nats_ctx)
    link = conn._link
    arrived = link._arrived
    failed = []

    def fail_once(packages, nbytes):
        if not failed and any(bytes(p.data) == b"lost to the bug" for p in packages):
            failed.append(packages)
            raise RuntimeError("a bug while taking a message")
        arrived(packages, nbytes)

    monkeypatch.setattr(link, "_arrived", fail_once)
    pub.send("lost to the bug")
    wait_until(lambda: failed, 5, "the failure")  # (else both could travel in one NATS message)
    pub.send("after")
    assert sub.recv(block=5) == "after"
    assert conn.statistics()["malformed"] == 1


def test_a_first_piece_longer_than_its_header_says_is_refused(nats_server, nats_ctx):
    pub, sub, conn = _pair(nats_server, nats_ctx)
    subject = slot_subject(sub.slot_incoming, conn.network)
    publish_raw(nats_server.url, (subject, frame(sub.slot_incoming, b"x" * 100, length=10), _START))
    pub.send("after")
    assert sub.recv(block=5) == "after"
    # (the raw message came over another connection: it may arrive after "after")
    wait_until(lambda: conn.statistics()["malformed"] == 1, 5, "the long piece to be refused")
    assert conn._link.partial() is None


def test_large_packages_being_put_together_count_against_the_receive_bound(nats_server, nats_ctx):
    bound = 1 << 20
    b, conn = nats_ctx(nats_server.url, context_kwargs={"max_queue_bytes": bound})
    sub, big_sub = yoton.SubChannel(b, "news"), yoton.SubChannel(b, "big", yoton.BINARY)
    a, _ = nats_ctx(nats_server.url)
    pub, big = yoton.PubChannel(a, "news"), yoton.PubChannel(a, "big", yoton.BINARY)
    subject = slot_subject(sub.slot_incoming, conn.network)
    # Eight beginnings of 10 MB packages that never go on, 300 kB each: the
    # bound holds three of them, so the five oldest are dropped and counted.
    piece = 300_000
    publish_raw(
        nats_server.url,
        *[(subject, frame(sub.slot_incoming, b"x" * piece, seq=seq, length=10 << 20), _START) for seq in range(1, 9)],
    )
    pub.send("after")
    assert sub.recv(block=5) == "after"
    link = conn._link
    # (the raw pieces came over another connection: they may arrive after "after")
    wait_until(lambda: conn.statistics()["discarded_incoming"] == 5, 5, "the oldest beginnings to be dropped")
    assert sorted(seq for _, seq in link._partials) == [6, 7, 8]
    # A package larger than the bound still gets through (the others give way).
    data = bytes(range(256)) * ((2 * bound) // 256)
    big.send(data)
    assert big_sub.recv(block=10) == data
    assert conn.statistics()["discarded_incoming"] == 8 and not link._partials
