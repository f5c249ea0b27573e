"""Flow control: nothing is lost because one side is faster, memory stays
bounded, and nothing blocks for ever on a dead peer.

Real sockets on 127.0.0.1; where the far end must be stopped (SIGSTOP) it is
a subprocess running the yoton under test. Queue bounds are small so each
test moves many times its caps in a short time.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import link, wait_until
from interop_helpers import SRC

import yoton

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses SIGSTOP and /proc"),
]

KiB, MiB = 1 << 10, 1 << 20


# -- a far end in a subprocess -------------------------------------------------------

# A subscriber: connects, then receives `n` BINARY messages "<thread>:<number>:<padding>"
# (of at most 1,100 bytes: its queue holds `queue` of them) and checks that each
# thread's numbers come in order; prints "ready" once connected and a JSON
# summary at the end (with its peak RSS), or after 25 s.
# Peak RSS of a child: VmHWM (getrusage's maxrss survives exec, so it would
# start at the test process's size at the fork).
PEAK_RSS = textwrap.dedent("""
    def peak_rss_kib():
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
""")

SUB_CHILD = PEAK_RSS + textwrap.dedent("""
    import json, sys, time, yoton
    port, n, sync, pace, timeout, queue = sys.argv[1:7]
    n, pace, timeout, queue = int(n), float(pace), float(timeout), int(queue)
    ctx = yoton.Context(queue_params=(queue, "old"), max_queue_bytes=queue * 1100)
    sub = yoton.SubChannel(ctx, "flow", yoton.BINARY)
    sub.set_sync_mode(sync == "sync")
    conn = ctx.connect("127.0.0.1:%s" % port, timeout=5.0)
    conn.timeout = timeout
    print("ready", flush=True)
    got, last, disorder = 0, {}, 0
    deadline = time.monotonic() + 25
    while got < n and time.monotonic() < deadline:
        for message in sub.recv_all() or [sub.recv(1.0)]:
            if not message:
                continue
            who, number = message.split(b":")[:2]
            number = int(number)
            if number <= last.get(who, -1):
                disorder += 1
            last[who] = number
            got += 1
            if pace:
                time.sleep(pace)
    print(json.dumps({"got": got, "disorder": disorder, "discarded": sub.statistics()["discarded"],
                      "maxrss_kib": peak_rss_kib()}), flush=True)
    ctx.close()
""")


class Child:
    """A subprocess running ``code`` with the yoton under test; stdout lines on demand."""

    def __init__(self, code: str, *args):
        env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, *map(str, args)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def line(self, timeout: float = 20.0) -> str:
        result = []

        def read():
            try:
                result.append(self.proc.stdout.readline())
            except (OSError, ValueError):  # closed by close() meanwhile
                pass

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result or not result[0]:
            self.proc.kill()
            raise AssertionError(f"child said nothing within {timeout} s; stderr:\n{self.proc.stderr.read()}")
        return result[0].strip()

    def summary(self, timeout: float = 30.0) -> dict:
        return json.loads(self.line(timeout))

    def stop(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self):
        if self.proc.poll() is None:
            self.resume()
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def child():
    made = []

    def start(code, *args):
        c = Child(code, *args)
        made.append(c)
        return c

    yield start
    for c in made:
        c.close()


class Peak:
    """Sample ``probe()`` in a thread until stopped; ``value`` is the largest seen."""

    def __init__(self, probe, interval: float = 0.002):
        self.value, self._probe, self._stop = 0, probe, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.wait(interval):
            self.value = max(self.value, self._probe())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.value = max(self.value, self._probe())
        return self.value


def _messages(who: str, count: int, size: int):
    """``count`` messages of ``size`` bytes (at least the head): b"<who>:<number>:xxx..."."""
    for i in range(count):
        head = b"%s:%d:" % (who.encode(), i)
        yield head + b"x" * (size - len(head))


# -- send queues: backpressure, not drops ----------------------------------------------


def test_a_sender_waits_for_a_slow_peer_and_nothing_is_lost(ctx, child):
    """Many times the send queue's cap to a peer that reads slowly: every
    message arrives in order, nothing is discarded, the queue stays bounded."""
    cap, n, size = 64 * KiB, 4000, 1000  # 4 MB through a 64 KiB queue
    a = ctx(max_queue_bytes=cap)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, n, "sync", 0.0002, 5.0, 10_000)
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    peak = Peak(lambda: a.statistics()["queued_bytes"])
    for message in _messages("a", n, size):
        pub.send(message)
    a.flush(20.0)
    worst = peak.stop()
    summary = far.summary()
    assert summary == {**summary, "got": n, "disorder": 0, "discarded": 0}
    assert a.statistics()["discarded_outgoing"] == 0
    assert worst <= cap + 1024 * (size + 56) + 4 * MiB  # the cap, plus what the stage may hold


def test_block_false_raises_wouldblock_and_sends_nothing(ctx, child):
    a = ctx(max_queue_bytes=32 * KiB)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, 10**9, "nosync", 0, 30.0, 10)
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 30.0
    far.stop()  # reads nothing from now on
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    sent = 0
    with pytest.raises(yoton.WouldBlock, match="waited 0.2 s") as info:
        for message in _messages("a", 100_000, 1000):  # far more than kernel buffers and the cap
            t0 = time.monotonic()
            pub.send(message, block=0.2)
            sent += 1
    assert 0.15 <= time.monotonic() - t0 < 2.0  # it did wait, and no longer than asked
    assert isinstance(info.value, BlockingIOError) and isinstance(info.value, yoton.YotonError)
    assert "full" in str(info.value)
    queued = a.statistics()["queued_bytes"]
    t0 = time.monotonic()
    with pytest.raises(yoton.WouldBlock):
        pub.send(b"x" * 1000, block=False)
    assert time.monotonic() - t0 < 0.1
    assert a.statistics()["queued_bytes"] == queued  # refused: not queued
    assert a.statistics()["discarded_outgoing"] == 0 and sent > 0
    assert queued <= 32 * KiB * 5 // 4 + 256 * KiB + 1056  # the cap, the stage, what the writer holds


def test_a_peer_that_stops_reading_for_good_releases_the_sender_within_its_timeout(ctx, child, caplog):
    cap = 32 * KiB
    a = ctx(max_queue_bytes=cap)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, 10**9, "sync", 0, 30.0, 10)
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 0.5
    far.stop()  # never resumed
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    longest = 0.0
    with caplog.at_level(logging.WARNING, logger="yoton"):
        for message in _messages("a", 20_000, 1000):  # 20 MB
            t0 = time.monotonic()
            pub.send(message)
            longest = max(longest, time.monotonic() - t0)
    assert longest < 0.5 + 1.0, f"a send waited {longest:.2f} s"
    stats = a.statistics()
    assert stats["discarded_outgoing"] > 0
    assert stats["queued_bytes"] <= cap + 1024 * 1056 + 4 * MiB
    # Logged once per episode (not per discard). A stopped process's kernel
    # may still take a burst now and then, which ends an episode.
    stalled = [r.message for r in caplog.records if "has taken nothing" in r.message]
    assert 1 <= len(stalled) <= 3, stalled
    t0 = time.monotonic()
    a.close()  # nothing hangs on the stopped peer
    assert time.monotonic() - t0 < 5.0


def test_eight_threads_to_a_subscriber_stopped_for_3_s_lose_nothing(ctx, child):
    threads, per = 8, 20_000
    a = ctx(max_queue_bytes=256 * KiB)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, threads * per, "sync", 0, 10.0, 1000)
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 10.0  # (longer than the stop: the peer is slow, not gone)
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    started = threading.Barrier(threads + 1)
    errors = []

    def send(k):
        started.wait()
        try:
            for message in _messages(f"t{k}", per, 100):
                pub.send(message)
        except Exception as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    started.wait()
    wait_until(lambda: a.statistics()["queued_bytes"] > 0, 5.0, "the stream to start")
    far.stop()
    time.sleep(3.0)  # the scenario: the subscriber's process is stopped for 3 s
    far.resume()
    for w in workers:
        w.join(30.0)
    assert not errors
    summary = far.summary(30.0)
    assert (summary["got"], summary["disorder"], summary["discarded"]) == (threads * per, 0, 0)
    assert a.statistics()["discarded_outgoing"] == 0


def test_close_releases_a_waiting_sender(ctx, child):
    a = ctx(max_queue_bytes=16 * KiB)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, 10**9, "nosync", 0, 30.0, 10)
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 30.0
    far.stop()
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    outcome = []

    def flood():
        try:
            for message in _messages("a", 100_000, 1000):
                pub.send(message)
            outcome.append("all sent")
        except yoton.ChannelClosedError:
            outcome.append("closed")

    sender = threading.Thread(target=flood)
    sender.start()
    wait_until(lambda: a.router._room_waiters, 10.0, "the sender to wait for room")
    threading.Thread(target=a.close, daemon=True).start()
    sender.join(10.0)
    assert not sender.is_alive() and outcome == ["closed"]


def test_megabyte_messages_three_times_the_cap_reach_a_sync_subscriber(ctx, child):
    cap, n = 8 * MiB, 24  # 24 MiB through an 8 MiB send queue
    a = ctx(max_queue_bytes=cap)
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, n, "sync", 0.01, 10.0, 10_000)  # it reads slowly
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 10.0
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    peak = Peak(lambda: a.statistics()["queued_bytes"])
    for message in _messages("a", n, MiB):
        pub.send(message)
    a.flush(20.0)
    worst = peak.stop()
    summary = far.summary()
    assert (summary["got"], summary["disorder"], summary["discarded"]) == (n, 0, 0)
    assert a.statistics()["discarded_outgoing"] == 0
    assert worst <= cap + 2 * (MiB + 56), worst  # the cap, one package over it, the one being written


# A kernel-like producer: prints `n` numbered lines to a FileWrapper over a
# PubChannel (as pyzo's kernel does with sys.stdout), flushes, reports its peak RSS.
PRINTER_CHILD = PEAK_RSS + textwrap.dedent("""
    import json, sys, yoton
    port, n = int(sys.argv[1]), int(sys.argv[2])
    ctx = yoton.Context(max_queue_bytes=4 << 20)
    out = yoton.FileWrapper(yoton.PubChannel(ctx, "strm-out"), 256, isatty=True)
    ctx.connect("127.0.0.1:%d" % port, timeout=5.0).timeout = 10.0
    for i in range(n):
        out.write("line %d\\n" % i)
    ctx.flush(30.0)
    print(json.dumps({"maxrss_kib": peak_rss_kib(), "discarded": ctx.statistics()["discarded_outgoing"]}),
          flush=True)
    ctx.close()
""")


def test_a_million_printed_lines_reach_a_slow_reader_with_memory_bounded_on_both_sides(ctx, child):
    n = 1_000_000
    b = ctx()
    conn = b.bind("127.0.0.1:0")
    sub = yoton.SubChannel(b, "strm-out")
    sub.set_sync_mode(True)  # the lossless option
    far = child(PRINTER_CHILD, conn.port1, n)
    wait_until(lambda: conn.is_connected, 5.0, "the printer")
    conn.timeout = 10.0
    pending = Peak(lambda: sub.pending, 0.001)
    expect, bad = 0, 0
    deadline = time.monotonic() + 40
    while expect < n and time.monotonic() < deadline:
        batch = sub.recv_all() or [sub.recv(1.0)]
        for line in batch:
            if line:
                bad += line != "line %d\n" % expect
                expect += 1
        time.sleep(0.0005)  # a reader slower than the printer
    worst = pending.stop()
    summary = far.summary()
    assert (expect, bad, summary["discarded"]) == (n, 0, 0)
    assert worst <= b.queue_params[0] + 256 * KiB // 8  # its bound, plus one read at most
    # Its send queue holds at most 4 MiB of messages (some 16 MiB with Python's
    # overhead for lines this short); a million queued lines would be ~250 MB.
    assert summary["maxrss_kib"] < 60 * 1024, summary


# -- relays -----------------------------------------------------------------------------


def test_a_relay_holds_its_upstream_instead_of_dropping(ctx, child):
    """A -> B -> C with C stopped for a while: B stops reading from A instead
    of growing or dropping; A's sender waits; afterwards all of it arrives."""
    cap, n, size = 64 * KiB, 40_000, 1000  # 40 MB: more than the kernel's socket buffers
    a, b = ctx(max_queue_bytes=cap), ctx(max_queue_bytes=cap)
    up = link(b, a)  # b binds, a connects
    up.timeout = 10.0
    a.connections[0].timeout = 10.0
    down = b.bind("127.0.0.1:0")
    far = child(SUB_CHILD, down.port1, n, "nosync", 0, 10.0, 100_000)
    assert far.line() == "ready"
    wait_until(lambda: down.is_connected, 5.0, "C")
    down.timeout = 10.0
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    far.stop()
    peak = Peak(lambda: b.statistics()["queued_bytes"])
    held = Peak(lambda: len(up._link.read_holds))  # (b holding its upstream: the point of the test)
    resumer = threading.Timer(1.0, far.resume)
    resumer.start()
    for message in _messages("a", n, size):
        pub.send(message)
    resumer.join()
    a.flush(20.0)
    worst = peak.stop()
    assert held.stop() == 1
    summary = far.summary()
    assert (summary["got"], summary["disorder"], summary["discarded"]) == (n, 0, 0)
    assert b.statistics()["discarded_outgoing"] == 0 == a.statistics()["discarded_outgoing"]
    assert worst <= cap + 2 * 256 * KiB + size + 56, worst  # the cap, one read forwarded at once, the writer's take


# -- the startup queue ----------------------------------------------------------------


def test_the_startup_queue_discards_counted_and_logged_when_no_peer_comes(ctx, caplog):
    a = ctx(queue_params=(100, "old"), max_queue_bytes=10 * 1056)
    pub = yoton.PubChannel(a, "startup", yoton.BINARY)
    with caplog.at_level(logging.WARNING, logger="yoton"):
        t0 = time.monotonic()
        for message in _messages("a", 25, 1000):
            pub.send(message)  # never waits: there is no peer to wait for
        assert time.monotonic() - t0 < 1.0
    assert a.statistics() == {"queued_bytes": 10 * 1056, "discarded_outgoing": 15, "refused": 0}
    assert len([r for r in caplog.records if "startup queue" in r.message]) == 1


# -- receiving channels -------------------------------------------------------------


def test_a_non_sync_subscriber_falling_behind_discards_as_queue_params_says(ctx):
    a, b = ctx(), ctx(queue_params=(50, "old"))
    link(a, b)
    sub = yoton.SubChannel(b, "behind", yoton.BINARY)
    done = yoton.SubChannel(b, "done", yoton.BINARY)
    pub = yoton.PubChannel(a, "behind", yoton.BINARY)
    wait_until(lambda: a.connection_count and b.connection_count, 3.0, "the link")
    for i in range(500):
        pub.send(b"%d" % i)
    yoton.PubChannel(a, "done", yoton.BINARY).send(b"done")
    assert done.recv(5.0) == b"done"
    assert sub.statistics()["discarded"] == 450
    assert [int(m) for m in sub.recv_all()] == list(range(450, 500))
    assert a.statistics()["discarded_outgoing"] == 0


def test_a_sync_subscriber_holds_its_connection_instead_of_discarding(ctx):
    """The queue's bounds reached in sync mode: reading stops, nothing is
    discarded, and reading resumes once the reader catches up."""
    a, b = ctx(max_queue_bytes=16 * KiB), ctx(queue_params=(40, "old"))
    conn_b = link(a, b)
    conn_b.timeout = 10.0
    b.connections[0].timeout = 10.0
    sub = yoton.SubChannel(b, "held", yoton.BINARY)
    sub.set_sync_mode(True)
    pub = yoton.PubChannel(a, "held", yoton.BINARY)
    wait_until(lambda: a.connection_count and b.connection_count, 3.0, "the link")
    # A publisher that does not wait for 'full' (yoton 2.2 waits at most a
    # second per message): its packages arrive faster than sub is read.
    pub._blockers.clear()
    n = 2000
    sender = threading.Thread(target=lambda: [pub._send(b"%06d" % i + b"x" * 500) for i in range(n)])
    sender.start()
    wait_until(lambda: sub._holding, 5.0, "the subscriber to hold its connection")
    assert len(sub._queue) <= 40 + 256 * KiB // 500  # its bound, plus one read at most
    got = []
    wait_until(lambda: got.extend(sub.recv_all()) or len(got) == n, 20.0, "every message")
    sender.join(10.0)
    assert [int(m[:6]) for m in got] == list(range(n))
    assert sub.statistics()["discarded"] == 0 and a.statistics()["discarded_outgoing"] == 0


def test_a_sync_publisher_waits_while_the_subscriber_is_full_and_not_longer_than_it_lives(ctx, child):
    a = ctx()
    conn = a.bind("127.0.0.1:0")
    far = child(SUB_CHILD, conn.port1, 10**9, "sync", 60.0, 30.0, 10_000)  # reads one, then sleeps
    assert far.line() == "ready"
    wait_until(lambda: conn.is_connected, 5.0, "the subscriber")
    conn.timeout = 1.0
    pub = yoton.PubChannel(a, "flow", yoton.BINARY)
    # Over 32 waiting: the subscriber says 'full' ... (made full first: a sender
    # already running could be done before 'full' came back; sent until it comes,
    # as the far end may take a first batch at once before it sleeps)
    warmup, deadline = _messages("a", 10**6, 100), time.monotonic() + 10.0
    try:
        while not pub._blockers and time.monotonic() < deadline:
            pub.send(next(warmup), block=False)
    except yoton.WouldBlock:  # ('full' came right after the look)
        pass
    wait_until(lambda: pub._blockers and a.router.loop is not None, 5.0, "the subscriber's 'full'")
    sent = []
    n = 100_000
    sender = threading.Thread(target=lambda: [pub.send(m) or sent.append(1) for m in _messages("b", n, 100)])
    sender.start()
    # ... and the publisher waits for as long as the subscriber lives, however long that is:
    time.sleep(1.5)  # (longer than the connection's timeout and than yoton 2.2's 1 s per message)
    assert len(sent) == 0 and sender.is_alive() and not conn.is_timedout
    far.stop()  # gone quiet: released within the connection's timeout
    t0 = time.monotonic()
    sender.join(10.0)
    assert not sender.is_alive() and len(sent) == n
    assert time.monotonic() - t0 < 1.0 + 1.0


def test_what_is_sent_right_after_connect_goes_to_the_connection_not_the_startup_queue(ctx):
    """connect() returns with the connection live: a flood sent at once gets
    backpressure, not the startup queue's discards (a bench run lost 13 of
    20 x 1 MiB that way while the connection's I/O had not started yet)."""
    cap = 2 * MiB
    receiver = ctx(max_queue_bytes=cap)
    conn = receiver.bind("127.0.0.1:0")
    sub = yoton.SubChannel(receiver, "burst", yoton.BINARY)
    sub.set_sync_mode(True)
    sender = ctx(max_queue_bytes=cap)
    sender.connect(f"127.0.0.1:{conn.port1}", timeout=5.0)
    pub = yoton.PubChannel(sender, "burst", yoton.BINARY)
    got = []
    reader = threading.Thread(target=lambda: [got.append(sub.recv(5.0)) for _ in range(12)])
    reader.start()
    for i in range(12):  # 12 MiB: six times the cap, at once
        pub.send(b"%02d" % i + b"x" * (MiB - 2))
    reader.join(20.0)
    assert [m[:2] for m in got] == [b"%02d" % i for i in range(12)]
    assert sender.statistics()["discarded_outgoing"] == 0
