"""The receive queue of a channel: bounded in count (queue_params) and in bytes
(Context max_queue_bytes), the discard mode applied to both, discards counted.

Real sockets on 127.0.0.1: a publisher in one context, the subscriber under
test in another (``pair``). The subscriber does not read until everything has
arrived, so what the queue kept is deterministic.
"""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

import yoton

pytestmark = pytest.mark.timeout(60)


def _flood(pub, sizes):
    """Publish BINARY messages of the given sizes; message i starts with its index."""
    sent = []
    for i, size in enumerate(sizes):
        tag = b"%d:" % i
        message = tag + b"x" * (size - len(tag))
        pub.send(message)
        sent.append(message)
    return sent


def _arrived(sub, n):
    """Until pending + discarded reaches n: every package was either queued or counted."""
    wait_until(
        lambda: (lambda s: s["pending"] + s["discarded"] >= n)(sub.statistics()),
        5.0,
        f"{n} packages to be queued or counted as discarded",
    )


@pytest.mark.parametrize("mode, kept", [("old", range(15, 20)), ("new", range(0, 5))])
def test_byte_cap_applies_the_discard_mode(pair, mode, kept):
    # Room for 1000 messages by count, but only 5000 bytes: five of 1000 bytes.
    a, b, _, _ = pair(b_kwargs={"queue_params": (1000, mode), "max_queue_bytes": 5000})
    assert b.max_queue_bytes == 5000
    pub, sub = yoton.PubChannel(a, "bytes", yoton.BINARY), yoton.SubChannel(b, "bytes", yoton.BINARY)
    sent = _flood(pub, [1000] * 20)
    _arrived(sub, 20)
    assert sub.statistics() == {"pending": 5, "pending_bytes": 5000, "discarded": 15, "received": 20, "sent": 0}
    assert sub.recv_all() == [sent[i] for i in kept]
    assert sub.statistics() == {"pending": 0, "pending_bytes": 0, "discarded": 15, "received": 20, "sent": 0}
    # Room again: the next message is queued, not discarded.
    pub.send(b"after")
    assert sub.recv(3.0) == b"after"
    assert sub.statistics()["discarded"] == 15


@pytest.mark.parametrize("mode, kept", [("old", [1, 2]), ("new", [0, 1])])
def test_byte_cap_with_mixed_sizes(pair, mode, kept):
    a, b, _, _ = pair(b_kwargs={"queue_params": (1000, mode), "max_queue_bytes": 5000})
    pub, sub = yoton.PubChannel(a, "mixed", yoton.BINARY), yoton.SubChannel(b, "mixed", yoton.BINARY)
    sent = _flood(pub, [3000, 1000, 2500])  # 3000 + 1000 fit; + 2500 does not
    _arrived(sub, 3)
    stats = sub.statistics()
    assert stats["discarded"] == 1 and stats["pending_bytes"] == sum(len(sent[i]) for i in kept)
    assert sub.recv_all() == [sent[i] for i in kept]


@pytest.mark.parametrize("mode", ["old", "new"])
def test_count_bound_still_applies_under_the_byte_cap(pair, mode):
    a, b, _, _ = pair(b_kwargs={"queue_params": (3, mode), "max_queue_bytes": 10**6})
    pub, sub = yoton.PubChannel(a, "count", yoton.BINARY), yoton.SubChannel(b, "count", yoton.BINARY)
    sent = _flood(pub, [10] * 8)
    _arrived(sub, 8)
    assert sub.statistics() == {"pending": 3, "pending_bytes": 30, "discarded": 5, "received": 8, "sent": 0}
    assert sub.recv_all() == (sent[-3:] if mode == "old" else sent[:3])


@pytest.mark.parametrize("mode", ["old", "new"])
def test_a_package_larger_than_the_cap_still_fits_an_empty_queue(pair, mode):
    a, b, _, _ = pair(b_kwargs={"queue_params": (1000, mode), "max_queue_bytes": 1000})
    pub, sub = yoton.PubChannel(a, "big", yoton.BINARY), yoton.SubChannel(b, "big", yoton.BINARY)
    small = _flood(pub, [400, 400])
    big = b"B" * 3000
    pub.send(big)
    _arrived(sub, 3)
    if mode == "old":  # the older ones make room, the big one stays alone
        assert sub.statistics() == {"pending": 1, "pending_bytes": 3000, "discarded": 2, "received": 3, "sent": 0}
        assert sub.recv_all() == [big]
    else:  # the queue was not empty: the big one is the one discarded
        assert sub.statistics() == {"pending": 2, "pending_bytes": 800, "discarded": 1, "received": 3, "sent": 0}
        assert sub.recv_all() == small
    pub.send(big)  # into an empty queue: kept in both modes
    assert sub.recv(3.0) == big
    assert sub.statistics()["pending_bytes"] == 0


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1000", None])
def test_max_queue_bytes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="max_queue_bytes"):
        yoton.Context(max_queue_bytes=bad)


def test_default_max_queue_bytes_is_256_mib(ctx):
    assert ctx().max_queue_bytes == 256 << 20
    assert yoton.SubChannel(ctx(), "d").statistics() == {
        "pending": 0,
        "pending_bytes": 0,
        "discarded": 0,
        "received": 0,
        "sent": 0,
    }


def test_byte_count_stays_exact_with_a_reader_racing_the_io_thread(pair):
    """The count has no lock: the I/O thread appends and discards while a reader
    pops. It must neither drift nor let the queue past its cap, and every
    message must be received or counted as discarded."""
    cap, size, n = 20_000, 100, 20_000
    a, b, _, _ = pair(b_kwargs={"queue_params": (10**6, "old"), "max_queue_bytes": cap})
    pub, sub = yoton.PubChannel(a, "race", yoton.BINARY), yoton.SubChannel(b, "race", yoton.BINARY)
    received, worst = [], [0]
    done = threading.Event()

    def reader():
        while not done.is_set() or sub.pending:
            worst[0] = max(worst[0], sub.statistics()["pending_bytes"])
            received.extend(sub.recv_all())
            if len(received) % 7 == 0:
                message = sub.recv(0.01)
                if message:
                    received.append(message)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(n):
            pub.send(b"%08d" % i + b"x" * (size - 8))
        wait_until(
            lambda: len(received) + sub.statistics()["discarded"] >= n, 20.0, "every message to be received or counted"
        )
    finally:
        done.set()
        thread.join(10.0)
    stats = sub.statistics()
    assert len(received) + stats["discarded"] == n
    assert stats["pending"] == 0 and stats["pending_bytes"] == 0
    assert worst[0] <= cap
    numbers = [int(m[:8]) for m in received]
    assert numbers == sorted(numbers) and numbers[-1] == n - 1  # in order; the newest is never discarded
