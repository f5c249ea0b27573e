"""Integration tests of PubChannel / SubChannel between real contexts on 127.0.0.1."""

from __future__ import annotations

import gc
import itertools
import threading
import time
import weakref

import pytest

import yoton


def _marker_pair(a, b):
    """A TEXT pub on ``a`` and sub on ``b`` on a separate slot: once a marker sent
    after something else has arrived, that something (same connection, FIFO) has too."""
    return yoton.PubChannel(a, "zz-marker"), yoton.SubChannel(b, "zz-marker")


def _sync_point(pub, sub, text="mark"):
    pub.send(text)
    assert sub.recv(3.0) == text


# ---------------------------------------------------------------------------
# Slots
# ---------------------------------------------------------------------------


def test_slot_names(ctx):
    c = ctx()
    pub = yoton.PubChannel(c, "Foo ")
    sub = yoton.SubChannel(c, "Foo ", yoton.OBJECT)
    assert pub.slot_outgoing == "Foo .txt.pub-sub"
    assert pub.slot_incoming == "Foo .txt.sub-pub"
    assert sub.slot_outgoing == "Foo .obj.sub-pub"
    assert sub.slot_incoming == "Foo .obj.pub-sub"
    assert pub.message_type.message_type_name() == "txt"
    assert yoton.PubChannel(c, "b", yoton.BINARY).slot_outgoing == "b.bin.pub-sub"


def test_slots_are_case_insensitive(pair):
    a, b, ca, cb = pair()
    pub = yoton.PubChannel(a, "NEWS")
    sub = yoton.SubChannel(b, "news")
    pub.send("extra")
    assert sub.recv(3.0) == "extra"
    assert sub.slot_incoming == "news.txt.pub-sub"  # reported as given


def test_two_subs_on_one_slot_in_a_context_refused(ctx):
    c = ctx()
    yoton.SubChannel(c, "dup")
    with pytest.raises(ValueError):
        yoton.SubChannel(c, "DUP")
    yoton.PubChannel(c, "pp")
    with pytest.raises(ValueError):
        yoton.PubChannel(c, "pp")
    # another message type is another slot
    yoton.SubChannel(c, "dup", yoton.BINARY)


def test_closing_frees_the_slot(ctx):
    c = ctx()
    sub = yoton.SubChannel(c, "free")
    sub.close()
    yoton.SubChannel(c, "free")


def test_pub_and_sub_on_same_slot_in_one_context(pair):
    a, b, ca, cb = pair()
    pub_a, sub_a = yoton.PubChannel(a, "both"), yoton.SubChannel(a, "both")
    pub_b, sub_b = yoton.PubChannel(b, "both"), yoton.SubChannel(b, "both")
    pub_a.send("from a")
    pub_b.send("from b")
    assert sub_b.recv(3.0) == "from a"
    assert sub_a.recv(3.0) == "from b"


def test_message_type_mismatch_keeps_channels_apart(pair):
    a, b, ca, cb = pair()
    pub_txt = yoton.PubChannel(a, "mixed", yoton.TEXT)
    sub_bin = yoton.SubChannel(b, "mixed", yoton.BINARY)
    sub_obj = yoton.SubChannel(b, "mixed", yoton.OBJECT)
    pub_bin = yoton.PubChannel(a, "mixed", yoton.BINARY)
    mpub, msub = _marker_pair(a, b)
    pub_txt.send("text")
    _sync_point(mpub, msub)
    assert sub_bin.pending == 0 and sub_obj.pending == 0
    pub_bin.send(b"\x00\x01")
    assert sub_bin.recv(3.0) == b"\x00\x01"
    assert sub_obj.pending == 0


# ---------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mtype, bad, type_name",
    [
        (yoton.TEXT, 42, "int"),
        (yoton.TEXT, ["a"], "list"),
        (yoton.BINARY, "text", "str"),
        (yoton.BINARY, 3.5, "float"),
        (yoton.OBJECT, {1, 2}, "set"),
        (yoton.OBJECT, object(), "object"),
        (yoton.OBJECT, [1, b"bytes"], "bytes"),
    ],
)
def test_send_wrong_type_raises_valueerror(ctx, mtype, bad, type_name):
    pub = yoton.PubChannel(ctx(), "typed", mtype)
    with pytest.raises(ValueError, match=type_name):
        pub.send(bad)


def test_send_on_closed_channel_raises(ctx):
    pub = yoton.PubChannel(ctx(), "closing")
    pub.close()
    assert pub.closed
    with pytest.raises(yoton.ChannelClosedError) as info:
        pub.send("x")
    assert isinstance(info.value, OSError)
    pub.close()  # twice is fine


def test_send_on_channel_of_closed_context_raises(ctx):
    c = ctx()
    pub = yoton.PubChannel(c, "ctxclosed")
    c.close()
    with pytest.raises(OSError):
        pub.send("x")


def test_text_accepts_bytes_and_unicode(pair):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "uni"), yoton.SubChannel(b, "uni")
    pub.send("héllo ✓")
    pub.send("bytes é".encode())
    assert sub.recv(3.0) == "héllo ✓"
    assert sub.recv(3.0) == "bytes é"


def test_object_roundtrip(pair):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "obj", yoton.OBJECT), yoton.SubChannel(b, "obj", yoton.OBJECT)
    value = {"k": [1, 2.5, None, True, "s", (3, "t")], "n": -(2**40)}
    pub.send(value)
    pub.send(None)  # encodes to a non-empty body: sent
    assert sub.recv(3.0) == value
    assert sub.recv(3.0) is None and sub.pending == 0


def test_empty_messages_are_not_sent(pair):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "empty"), yoton.SubChannel(b, "empty")
    bpub, bsub = yoton.PubChannel(a, "emptyb", yoton.BINARY), yoton.SubChannel(b, "emptyb", yoton.BINARY)
    pub.send("")
    bpub.send(b"")
    pub.send("after")
    bpub.send(b"after")
    assert sub.recv(3.0) == "after"
    assert bsub.recv(3.0) == b"after"


# ---------------------------------------------------------------------------
# Receiving
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mtype, empty", [(yoton.TEXT, ""), (yoton.BINARY, b""), (yoton.OBJECT, None)])
def test_recv_nonblocking_returns_empty_message(ctx, mtype, empty):
    sub = yoton.SubChannel(ctx(), "nothing", mtype)
    t0 = time.monotonic()
    assert sub.recv(False) == empty
    assert type(sub.recv(False)) is type(empty)
    assert time.monotonic() - t0 < 0.2


def test_recv_with_timeout_float_and_int(ctx):
    sub = yoton.SubChannel(ctx(), "nothing")
    t0 = time.monotonic()
    assert sub.recv(0.2) == ""
    elapsed = time.monotonic() - t0
    assert 0.19 <= elapsed < 1.0
    t0 = time.monotonic()
    assert sub.recv(1) == ""
    elapsed = time.monotonic() - t0
    assert 0.99 <= elapsed < 2.0
    t0 = time.monotonic()
    assert sub.recv(0) == ""
    assert time.monotonic() - t0 < 0.2
    with pytest.raises(ValueError):
        sub.recv("soon")


def test_recv_timeout_returns_message_when_it_arrives(pair):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "t"), yoton.SubChannel(b, "t")
    timer = threading.Timer(0.2, pub.send, ("late",))
    timer.start()
    try:
        t0 = time.monotonic()
        assert sub.recv(3) == "late"
        assert 0.15 <= time.monotonic() - t0 < 2.0
    finally:
        timer.cancel()


def _recv_in_thread(sub, block):
    result = {}

    def run():
        result["t0"] = time.monotonic()
        result["msg"] = sub.recv(block)
        result["t1"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def test_recv_blocks_until_message_arrives(pair):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "block"), yoton.SubChannel(b, "block")
    thread, result = _recv_in_thread(sub, True)
    thread.join(0.3)
    assert thread.is_alive() and "msg" not in result  # still blocked
    pub.send("wake up")
    thread.join(3.0)
    assert not thread.is_alive()
    assert result["msg"] == "wake up"


def test_recv_on_closed_channel(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "cl"), yoton.SubChannel(b, "cl")
    pub.send("queued")
    assert wait_for(lambda: sub.pending == 1, events=False)
    sub.close()
    assert sub.closed
    assert sub.recv(False) == "queued"  # what was queued can still be read
    t0 = time.monotonic()
    assert sub.recv(True) == ""  # closed and empty: returns at once
    assert sub.recv(2.0) == ""
    assert time.monotonic() - t0 < 0.5
    pub.send("after close")
    mpub, msub = _marker_pair(a, b)
    _sync_point(mpub, msub)
    assert sub.pending == 0  # a closed channel gets nothing new


@pytest.mark.parametrize("block", [True, 30.0])
def test_blocked_recv_wakes_when_channel_closed(ctx, block):
    sub = yoton.SubChannel(ctx(), "wake")
    thread, result = _recv_in_thread(sub, block)
    thread.join(0.2)
    assert thread.is_alive()
    t_close = time.monotonic()
    sub.close()
    thread.join(3.0)
    assert not thread.is_alive()
    assert result["msg"] == ""
    assert result["t1"] - t_close < 1.0


def test_blocked_recv_wakes_when_context_closed(ctx):
    c = ctx()
    sub = yoton.SubChannel(c, "wake")
    thread, result = _recv_in_thread(sub, True)
    thread.join(0.2)
    assert thread.is_alive()
    c.close()
    thread.join(3.0)
    assert not thread.is_alive() and result["msg"] == ""


def test_recv_all_iteration_and_pending(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "many"), yoton.SubChannel(b, "many")
    assert sub.recv_all() == []
    for i in range(10):
        pub.send(str(i))
    assert wait_for(lambda: sub.pending == 10, events=False)
    assert sub.statistics()["pending"] == 10
    assert sub.recv(False) == "0"
    assert sub.pending == 9
    assert list(itertools.islice(sub, 3)) == ["1", "2", "3"]
    assert sub.next() == "4"
    assert sub.recv_all() == ["5", "6", "7", "8", "9"]
    assert sub.pending == 0
    assert list(sub) == []
    with pytest.raises(StopIteration):
        sub.next()
    pub.send("x")
    pub.send("y")
    assert wait_for(lambda: sub.pending == 2, events=False)
    assert list(sub) == ["x", "y"]


def test_received_signal_once_per_burst(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "sig"), yoton.SubChannel(b, "sig")
    yoton.process_events()  # start from a clean queue
    calls = []
    sub.received.bind(lambda ch: calls.append((ch, ch.pending)))
    for i in range(50):
        pub.send(str(i))
    # wait WITHOUT running events: the emissions pile up (at most one)
    assert wait_for(lambda: sub.pending == 50, events=False)
    assert calls == []
    yoton.process_events()
    assert calls == [(sub, 50)]
    yoton.process_events()
    assert len(calls) == 1
    sub.recv_all()
    pub.send("again")
    assert wait_for(lambda: len(calls) == 2)
    assert calls[1] == (sub, 1)
    assert sub.recv(False) == "again"


def test_received_signal_bound_late_fires_for_what_arrived_before(pair, wait_for):
    """As in yoton 2.2: the emission is queued at arrival, and the handlers bound
    by the time the event loop runs it are called (before, nothing was emitted
    without a handler, so a handler bound late missed those messages)."""
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "sig2"), yoton.SubChannel(b, "sig2")
    pub.send("first")
    assert wait_for(lambda: sub.pending == 1, events=False)
    calls = []
    sub.received.bind(lambda ch: calls.append(ch.recv_all()))
    assert wait_for(lambda: calls)
    assert calls == [["first"]]
    pub.send("second")
    assert wait_for(lambda: len(calls) == 2)
    assert calls == [["first"], ["second"]]


def test_received_is_one_pending_emission_per_channel(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "sig3"), yoton.SubChannel(b, "sig3")
    for i in range(50):
        pub.send(str(i))
    assert wait_for(lambda: sub.pending == 50, events=False)
    queued = [args for _, args, _ in list(yoton.events._events._queue) if args and args[0] == weakref.ref(sub)]
    assert len(queued) == 1  # one emission queued (no handler yet), however many arrived


def test_pending_received_event_does_not_keep_the_channel_alive(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "sig4"), yoton.SubChannel(b, "sig4")
    pub.send("x")
    assert wait_for(lambda: sub.pending == 1, events=False)  # noqa: F821 - (deleted below, after this)
    ref = weakref.ref(sub)
    sub.close()
    del sub
    gc.collect()
    assert ref() is None  # (the queued emission holds it weakly)
    yoton.process_events()  # and running it then is harmless


# ---------------------------------------------------------------------------
# Queue size and discard mode
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("old", [str(i) for i in range(15, 20)]),  # the oldest are discarded: keep the newest 5
        ("new", [str(i) for i in range(0, 5)]),  # the newest are discarded: keep the oldest 5
    ],
)
def test_queue_params_discard(pair, wait_for, mode, expected):
    a, b, ca, cb = pair(b_kwargs={"queue_params": (5, mode)})
    pub, sub = yoton.PubChannel(a, "q"), yoton.SubChannel(b, "q")
    for i in range(20):
        pub.send(str(i))
    assert wait_for(lambda: sub.statistics()["discarded"] == 15, events=False)
    assert sub.statistics() == {
        "pending": 5,
        "pending_bytes": sum(map(len, expected)),
        "discarded": 15,
        "received": 20,
        "sent": 0,
    }
    assert pub.statistics()["sent"] == 20
    assert sub.recv_all() == expected
    pub.send("more")
    assert sub.recv(3.0) == "more"
    assert sub.statistics()["discarded"] == 15


# ---------------------------------------------------------------------------
# select_sub_channel
# ---------------------------------------------------------------------------


def test_select_sub_channel_reads_in_send_order(pair, wait_for):
    a, b, ca, cb = pair()
    pub1, pub2 = yoton.PubChannel(a, "one"), yoton.PubChannel(a, "two")
    sub1, sub2 = yoton.SubChannel(b, "one"), yoton.SubChannel(b, "two")
    assert yoton.select_sub_channel(sub1, sub2) is None
    order = [
        (pub1, "a1"),
        (pub2, "b1"),
        (pub2, "b2"),
        (pub1, "a2"),
        (pub1, "a3"),
        (pub2, "b3"),
        (pub1, "a4"),
        (pub2, "b4"),
        (pub2, "b5"),
    ]
    for pub, msg in order:
        pub.send(msg)
    assert wait_for(lambda: sub1.pending + sub2.pending == len(order), events=False)
    out, chosen = [], []
    while True:
        channel = yoton.select_sub_channel(sub1, sub2)
        if channel is None:
            break
        chosen.append(channel)
        batch = channel.recv_selected()
        assert batch, "a selected channel must give at least one message"
        out.extend(batch)
    assert out == [msg for _, msg in order]
    assert chosen == [sub1, sub2, sub1, sub2, sub1, sub2]
    with pytest.raises(ValueError):
        yoton.select_sub_channel(sub1, pub1)


# ---------------------------------------------------------------------------
# Sync mode (backpressure)
# ---------------------------------------------------------------------------


class _Publisher(threading.Thread):
    """Sends numbered messages (``n``, or until stopped) at a realistic pace;
    records when each send returned.

    The pause lets the I/O threads run: a publisher that only appends to a
    queue can send thousands of messages before any 'full' could come back.
    """

    def __init__(self, pub, n=None, pace=0.0005):
        super().__init__(daemon=True)
        self.pub, self.n, self.pace = pub, n, pace
        self.times: list = []
        self.error = None
        self.stop = threading.Event()

    def run(self):
        try:
            i = 0
            while not self.stop.is_set() and (self.n is None or i < self.n):
                self.pub.send(str(i))
                self.times.append(time.monotonic())
                i += 1
                time.sleep(self.pace)
        except Exception as exc:  # pragma: no cover - asserted by the test
            self.error = exc

    @property
    def count(self):
        return len(self.times)

    def idle_for(self):
        return time.monotonic() - (self.times[-1] if self.times else 0.0)


def test_without_sync_mode_publisher_is_not_slowed(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "fast"), yoton.SubChannel(b, "fast")
    publisher = _Publisher(pub, 400)
    publisher.start()
    publisher.join(3.0)
    assert not publisher.is_alive() and publisher.error is None
    gaps = [t1 - t0 for t0, t1 in zip(publisher.times, publisher.times[1:])]
    assert max(gaps) < 0.5
    assert wait_for(lambda: sub.pending == 400, events=False)  # nobody read; nothing held back


def test_sync_mode_slows_publisher_until_subscriber_reads(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "slow"), yoton.SubChannel(b, "slow")
    sub.set_sync_mode(True)
    publisher = _Publisher(pub)
    publisher.start()
    try:
        # the subscriber fills up and says 'full'; the publisher then stalls
        assert wait_for(lambda: sub.pending > 32, 3.0, events=False)
        assert wait_for(lambda: publisher.idle_for() >= 0.6, 3.0, events=False), (
            f"publisher never stalled ({publisher.count} sent, {sub.pending} pending)"
        )
        stalled_at = publisher.count
        # while nobody reads, it sends at most about one message a second
        t0 = time.monotonic()
        assert not wait_for(lambda: publisher.count > stalled_at + 2, 1.2, events=False)
        window = time.monotonic() - t0
        assert publisher.count - stalled_at <= 1 + window
        gaps = [t1 - t0_ for t0_, t1 in zip(publisher.times[stalled_at - 1 :], publisher.times[stalled_at:])]
        assert all(g >= 0.8 for g in gaps), gaps

        # the subscriber reads: it says 'ok' and the publisher runs freely again
        got = []
        reading_done = threading.Event()

        def reader():
            while not reading_done.is_set():
                msg = sub.recv(0.05)
                if msg:
                    got.append(msg)

        reading = threading.Thread(target=reader, daemon=True)
        reading.start()
        resumed_at = publisher.count
        assert wait_for(lambda: publisher.count >= resumed_at + 300, 3.0, events=False), (
            f"publisher did not resume: {publisher.count - resumed_at} sent since the reader started"
        )
        publisher.stop.set()
        publisher.join(3.0)
        assert not publisher.is_alive() and publisher.error is None
        total = publisher.count
        assert wait_for(lambda: len(got) >= total, 3.0, events=False)
        reading_done.set()
        reading.join(3.0)
        assert got == [str(i) for i in range(total)]  # sync mode loses nothing
        assert sub.statistics()["discarded"] == 0
    finally:
        publisher.stop.set()
        pub.close()  # unblocks a publisher still waiting
        publisher.join(3.0)


def test_sync_mode_off_releases_publisher(pair, wait_for):
    a, b, ca, cb = pair()
    pub, sub = yoton.PubChannel(a, "rel"), yoton.SubChannel(b, "rel")
    sub.set_sync_mode(True)
    publisher = _Publisher(pub)
    publisher.start()
    try:
        assert wait_for(lambda: sub.pending > 32, 3.0, events=False)
        assert wait_for(lambda: publisher.idle_for() >= 0.5, 3.0, events=False)
        stalled_at = publisher.count
        sub.set_sync_mode(False)  # says 'ok': the publisher is free again, though nobody reads
        assert wait_for(lambda: publisher.count >= stalled_at + 200, 3.0, events=False)
    finally:
        publisher.stop.set()
        pub.close()
        publisher.join(3.0)
