"""Faults: peers that are killed, stopped, partitioned off or exit with work in flight.

Each test provokes a real fault with a real far end (a subprocess running
tests/peer.py through :class:`interop_helpers.PeerProcess`, or two contexts
in this process where that is the point) and checks the protection that
should hold: the ``closed`` / ``timedout`` signals fire promptly, nothing
queued is lost or reordered, and no thread or file descriptor outlives its
context. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import record
from interop_helpers import SRC, PeerProcess
from transport_util import HOST, Netns, RawClient, Resources, wait_for

import yoton
from yoton.transport.link import CLOSE_FLUSH_TIME
from yoton.wire.frames import FrameDecoder

BIND = f"{HOST}:0"
MiB = 1 << 20
REASON_EOF = "Other end dropped the connection."
REASON_PEER_CLOSED = "Closed from other end."

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, signals and netns")


# -- helpers -----------------------------------------------------------------------


_record = record


def _exercise_everything(a, b) -> None:
    """Use every channel kind between two connected contexts, req/rep in thread mode."""

    serving = threading.Event()

    class Rep(yoton.RepChannel):
        def add(self, x, y):
            return x + y

        def slow(self, t):
            serving.set()
            time.sleep(t)
            return t

    rep = Rep(a, "faults-rep")
    rep.set_mode("thread")
    req = yoton.ReqChannel(b, "faults-rep")
    assert req.add(20, 22).result(5.0) == 42
    pub, sub = yoton.PubChannel(a, "faults-pub"), yoton.SubChannel(b, "faults-pub")
    sub.set_sync_mode(True)
    pub.send("hello")
    assert sub.recv(5.0) == "hello"
    state_a, state_b = yoton.StateChannel(a, "faults-state"), yoton.StateChannel(b, "faults-state")
    state_a.send("on")
    assert wait_for(lambda: state_b.recv() == "on", 5.0)
    obj_pub, obj_sub = yoton.PubChannel(b, "faults-obj", yoton.OBJECT), yoton.SubChannel(a, "faults-obj", yoton.OBJECT)
    obj_pub.send({"k": (1, 2.0)})
    assert obj_sub.recv(5.0) == {"k": (1, 2.0)}
    assert yoton.select_sub_channel(sub, yoton.SubChannel(b, "faults-other")) is None
    # leave a request being served (in the replier's thread) when the caller closes
    req.slow(0.3)
    assert wait_for(serving.is_set, 5.0)


def _connected_pair(**b_kwargs):
    a = yoton.Context()
    conn_a = a.bind(BIND)
    b = yoton.Context(**b_kwargs)
    conn_b = b.connect(f"{HOST}:{conn_a.port1}", timeout=3.0)
    assert wait_for(lambda: conn_a.is_connected, 3.0)
    return a, conn_a, b, conn_b


@pytest.fixture(scope="module", autouse=True)
def warmed_up():
    """Create the process-wide helpers that yoton starts lazily (the timer thread,
    the event queue) before any test takes a snapshot of threads and fds."""
    a, _, b, _ = _connected_pair()
    try:
        _exercise_everything(a, b)
        yoton.call_later(lambda: None, 0.01)
        yoton.process_events(0.05)
    finally:
        b.close()
        a.close()
    yield


def _bound_to_peer(peer: PeerProcess, **ctx_kwargs):
    """A context here, bound; ``peer`` connects to it. Returns (context, connection)."""
    ctx = yoton.Context(**ctx_kwargs)
    conn = ctx.bind(BIND)
    peer.call("connect", addr=f"{HOST}:{conn.port1}", timeout=5.0)
    assert wait_for(lambda: conn.is_connected, 5.0), "the peer did not connect"
    assert conn.pid2 == peer.pid
    return ctx, conn


# -- a peer killed in the middle of a large message ------------------------------


def _partial_body(conn) -> int:
    """Bytes received so far of the large package being read (0 if none).

    A look at the decoder's state: the only way to know, rather than hope,
    that the kill lands in the middle of the message.
    """
    decoder = conn._link.protocol.decoder
    return decoder._body_fill if decoder._body is not None else 0


def test_peer_killed_mid_64mib_message_closes_promptly_and_leaves_nothing_behind():
    size = 64 * MiB
    peer = PeerProcess("ours", "sender")
    try:
        before = Resources()
        ctx, conn = _bound_to_peer(peer)
        try:
            closed = _record(conn.closed)
            sub = yoton.SubChannel(ctx, "big", yoton.BINARY)
            for _attempt in range(3):
                peer.call("pub_big", slot="big", size=size)
                deadline = time.monotonic() + 10.0
                # Poll tightly (no event processing): the message takes tens of ms.
                while not (0 < _partial_body(conn) < size // 2) and sub.pending == 0:
                    assert time.monotonic() < deadline, "the large message did not start arriving"
                    time.sleep(0.0002)
                if sub.pending == 0 and 0 < _partial_body(conn) < size // 2:
                    break
                # We looked too late (the machine is busy): it arrived whole. Try again.
                assert wait_for(lambda: sub.pending > 0, 10.0)
                assert sub.recv(False) == (bytes(range(256)) * (size // 256))
            else:
                pytest.fail("could not catch the 64 MiB message half-way in 3 attempts")
            got = _partial_body(conn)
            os.kill(peer.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            assert wait_for(lambda: closed, 2.0), f"no closed signal within 2 s of the kill ({got} of {size} bytes in)"
            t_closed, _, reason = closed[0]
            assert t_closed - t_kill < 2.0
            # Seen by reading (end of stream, or a reset when the dead peer had unread
            # data), not only later when a heartbeat fails to go out ("Broken pipe").
            assert reason == REASON_EOF or (reason.startswith("Connection broken") and "reset" in reason), reason
            assert not conn.is_alive and ctx.connection_count == 0
            print(f"killed {got} bytes into the message; closed {t_closed - t_kill:.3f} s later: {reason}")
            # The torn message is never delivered, not even in part.
            assert sub.recv(False) == b"" and sub.pending == 0
            assert peer.proc.wait(5.0) == -signal.SIGKILL
        finally:
            ctx.close()
        before.assert_back()
    finally:
        peer.close()


# -- a peer stopped and resumed --------------------------------------------------------


def test_stopped_peer_times_out_and_comes_back_with_its_stream_intact():
    peer = PeerProcess("ours", "streamer")
    try:
        ctx, conn = _bound_to_peer(peer, queue_params=(100_000, "old"))
        try:
            timedout = _record(conn.timedout)
            sub = yoton.SubChannel(ctx, "counter")
            got: list = []

            def received() -> int:
                got.extend(int(m) for m in sub.recv_all())
                return len(got)

            peer.call("stream_start", slot="counter", interval=0.002)
            assert wait_for(lambda: received() >= 50, 5.0), "the stream did not start"
            assert timedout == []

            os.kill(peer.pid, signal.SIGSTOP)
            t_stop = time.monotonic()
            try:
                assert wait_for(lambda: received() is not None and timedout, conn.timeout + 3.0), (
                    "no timedout signal while the peer was stopped"
                )
                assert timedout[0][1:] == (conn, True)
                # silence counts from the last byte received: at most a heartbeat before the stop
                elapsed = timedout[0][0] - t_stop
                assert conn.timeout - 0.4 <= elapsed <= 2 * conn.timeout, f"timedout {elapsed:.2f} s after the stop"
                received()
                at_resume = len(got)
            finally:
                os.kill(peer.pid, signal.SIGCONT)
            assert wait_for(lambda: len(timedout) >= 2, 3.0), "no timedout(False) after the peer resumed"
            assert timedout[1][1:] == (conn, False)
            assert wait_for(lambda: received() >= at_resume + 50, 5.0), "the stream did not continue"
            sent = peer.call("stream_stop")["sent"]
            assert wait_for(lambda: received() >= sent, 5.0), f"{len(got)} of {sent} messages arrived"
            assert got == list(range(sent)), "messages lost, repeated or reordered"
            assert [e[2] for e in timedout] == [True, False]
            assert conn.is_connected
        finally:
            ctx.close()
    finally:
        peer.close()


# -- an orderly close with a lot queued -------------------------------------------------


def _flood_while_alive(pub, conns, stop: threading.Event) -> threading.Thread:
    """Start a thread that keeps sending on ``pub`` until ``stop`` or all ``conns`` are closed.

    Data flowing towards a closing peer is what makes a careless close reset
    the connection (and destroy what is still in flight) instead of ending it.
    """

    def run():
        i = 0
        while not stop.is_set() and any(c.is_alive for c in conns):
            pub.send(f"chatter {i} " + "x" * 200)
            i += 1
            if i % 100 == 0:
                time.sleep(0.001)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("when", ["sent-while-connected", "all-queued-at-close"])
def test_orderly_close_after_100k_messages_delivers_all_in_order(when):
    """The peer sends 100,000 messages and closes its context at once; we get them all.

    ``all-queued-at-close``: the peer sends before it connects, so all of them
    wait in its startup queue and are still queued when it closes (right
    after connecting). Meanwhile we keep sending to the peer.
    """
    n = 100_000
    peer = PeerProcess("ours", "sender")
    stop, flooder = threading.Event(), None
    try:
        ctx = yoton.Context(queue_params=(n + 100, "old"))
        try:
            conn = ctx.bind(BIND)
            closed = _record(conn.closed)
            sub = yoton.SubChannel(ctx, "orderly")
            chatter = yoton.PubChannel(ctx, "chatter")
            peer.call("sub", slot="chatter", type="txt")  # and never read
            if when == "all-queued-at-close":
                assert peer.call("pub_count", slot="orderly", n=n)["sent"] == n
            peer.call("connect", addr=f"{HOST}:{conn.port1}", timeout=5.0)
            assert wait_for(lambda: conn.is_connected, 5.0)
            flooder = _flood_while_alive(chatter, [conn], stop)
            if when == "sent-while-connected":
                assert peer.call("pub_count", slot="orderly", n=n)["sent"] == n
            t0 = time.monotonic()
            peer.call("close")  # returns when the peer's close is done
            close_time = time.monotonic() - t0
            assert wait_for(lambda: closed, 5.0), "the peer's close did not reach us"
            if closed[0][2] != REASON_PEER_CLOSED:
                # Documented: a closing side waits CLOSE_FLUSH_TIME after its last write for
                # our end; on a loaded machine we may still be reading megabytes its kernel
                # already took. Then it drops the connection -- only after that wait.
                assert closed[0][2] == REASON_EOF and close_time >= CLOSE_FLUSH_TIME, (closed, close_time)
            got = sub.recv_all()
            assert len(got) == n, f"{len(got)} of {n} messages arrived"
            assert got == [str(i) for i in range(n)], "messages reordered or corrupted"
            # The peer saw its own close, once, for the reason it gave.
            assert peer.call("closed_events", count=1, timeout=5.0)["events"] == [[0, "Closed by the context."]]
            print(f"peer's close took {close_time:.2f} s")
        finally:
            stop.set()
            if flooder is not None:
                flooder.join(5.0)
            ctx.close()
    finally:
        peer.close()


class _HandMadeReader:
    """A yoton peer made by hand (raw socket) that reads at a rate we choose, or not at all.

    It decodes what it reads with the wire layer's FrameDecoder; once the
    close signal arrives it closes its socket (the end of stream a closing
    yoton waits for).
    """

    def __init__(self, port: int):
        self.client = RawClient(port)
        assert self.client.handshake(int.from_bytes(os.urandom(8), "little") | 1).startswith(b"YOTON!")
        self.decoder = FrameDecoder()
        self.packages: list = []
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def read_slowly(self, chunk: int, pause: float) -> None:
        """Start reading ``chunk`` bytes every ``pause`` s in a thread until the close signal or EOF."""

        def run():
            sock = self.client.sock
            try:
                sock.settimeout(10.0)
                while not self.decoder.peer_closed:
                    data = sock.recv(chunk)
                    if not data:
                        break
                    self.decoder.receive_data(data)
                    self.packages += self.decoder.packages
                    self.decoder.packages = []
                    time.sleep(pause)  # the slow reader this test is about
            except BaseException as exc:
                self.error = exc
            finally:
                self.client.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()


def _queue_big_backlog(ctx, slot: str, n: int, size: int):
    pub = yoton.PubChannel(ctx, slot, yoton.BINARY)
    filler = os.urandom(size - 4)
    for i in range(n):
        pub.send(i.to_bytes(4, "little") + filler)
    return filler


def test_close_flushes_a_backlog_that_a_slow_reader_takes_more_than_a_second_to_read():
    """Close must deliver everything queued to a peer that keeps reading, however
    long that takes: giving up at a fixed deadline (it was 1 s, or 2 s in
    Context.close) threw the rest of the queue away."""
    n, size = 400, 64 * 1024  # 25 MiB, read at ~16 MiB/s: about 1.6 s
    ctx = yoton.Context()
    try:
        conn = ctx.bind(BIND)
        reader = _HandMadeReader(conn.port1)
        assert wait_for(lambda: conn.is_connected, 5.0)
        filler = _queue_big_backlog(ctx, "slow-reader", n, size)
        reader.read_slowly(64 * 1024, 0.004)
        t0 = time.monotonic()
        ctx.close()
        close_time = time.monotonic() - t0
        reader.thread.join(10.0)
        assert reader.error is None, reader.error
        assert conn.close_reason == "Closed by the context."
        got = reader.packages
        assert len(got) == n, f"{len(got)} of {n} packages arrived before the end of the stream"
        assert [int.from_bytes(p.data[:4], "little") for p in got] == list(range(n))
        assert all(p.data[4:] == filler for p in got)
        assert reader.decoder.peer_closed, "the close signal did not come after the packages"
        assert close_time > 1.0, f"close took {close_time:.2f} s: the backlog was too small to test anything"
        print(f"close() took {close_time:.2f} s for {n * size // MiB} MiB to a slow reader")
    finally:
        ctx.close()


def test_close_gives_up_on_a_peer_that_reads_nothing():
    """The other side of the same coin: a peer that takes nothing does not hold close() up."""
    ctx = yoton.Context()
    reader = None
    try:
        conn = ctx.bind(BIND)
        reader = _HandMadeReader(conn.port1)  # handshakes, then never reads
        assert wait_for(lambda: conn.is_connected, 5.0)
        _queue_big_backlog(ctx, "stalled-reader", 400, 64 * 1024)
        t0 = time.monotonic()
        ctx.close()
        close_time = time.monotonic() - t0
        assert not conn.is_alive and conn.close_reason == "Closed by the context."
        # 1 s without progress (plus a housekeeping tick), not the waiting caller's
        # own fallback a second later
        assert close_time < 1.8, f"close() took {close_time:.2f} s with a peer that reads nothing"
        print(f"close() gave up after {close_time:.2f} s")
    finally:
        if reader is not None:
            reader.client.close()
        ctx.close()


# -- many threads sending on one context ------------------------------------------------


@pytest.mark.parametrize("channels", ["one-per-thread", "shared"])
def test_eight_threads_sending_at_once_lose_nothing_and_keep_their_order(channels):
    n_threads, per_thread = 8, 5000
    a, _, b, _ = _connected_pair(queue_params=(n_threads * per_thread + 100, "old"))
    try:
        if channels == "shared":
            shared = yoton.PubChannel(a, "threads")
            pubs = [shared] * n_threads
            subs = [yoton.SubChannel(b, "threads")]
        else:
            pubs = [yoton.PubChannel(a, f"threads-{t}") for t in range(n_threads)]
            subs = [yoton.SubChannel(b, f"threads-{t}") for t in range(n_threads)]
        start = threading.Barrier(n_threads)
        errors: list = []

        def send(t):
            try:
                start.wait(5.0)
                for i in range(per_thread):
                    pubs[t].send(f"{t}:{i}")
                    if i % 50 == 49:
                        # All threads meet every 50 sends: a send is short enough for one thread
                        # to send all of its messages within one GIL switch interval, and on a
                        # loaded machine a mere yield (sleep(0)) did not always let the others in.
                        start.wait(10.0)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(t,)) for t in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20.0)
        assert not errors and not any(thread.is_alive() for thread in threads)
        got: list = []
        assert wait_for(
            lambda: got.extend(m for s in subs for m in s.recv_all()) or len(got) >= n_threads * per_thread, 10.0
        ), f"{len(got)} of {n_threads * per_thread} arrived"
        assert len(got) == n_threads * per_thread
        by_thread: dict = {}
        for message in got:
            t, i = message.split(":")
            by_thread.setdefault(int(t), []).append(int(i))
        assert sorted(by_thread) == list(range(n_threads))
        for t, seq in by_thread.items():
            assert seq == list(range(per_thread)), f"thread {t}: lost or out of order"
        if channels == "shared":
            # the threads really did interleave (otherwise this tested little)
            senders = [message.split(":")[0] for message in got]
            switches = sum(1 for x, y in zip(senders, senders[1:]) if x != y)
            assert switches > 10 * n_threads, f"only {switches} switches between threads"
    finally:
        b.close()
        a.close()


# -- a process that exits with work in flight ---------------------------------------------


_EXITING_CHILD = textwrap.dedent("""
    import sys
    import yoton

    def main(port1, port2, n, big):
        keep = []
        for port, slot in ((port1, "exit-1"), (port2, "exit-2")):
            ctx = yoton.Context()
            ctx.connect("127.0.0.1:%d" % port, timeout=5.0)
            pub = yoton.PubChannel(ctx, slot)
            flood_sub = yoton.SubChannel(ctx, "flood")  # filled by the parent, never read
            big_pub = yoton.PubChannel(ctx, slot + "-big", yoton.BINARY)
            for i in range(n):
                pub.send(str(i))
            big_pub.send(bytes(range(256)) * (big // 256))
            keep.append((ctx, pub, flood_sub, big_pub))
        print("queued", flush=True)
        # return with both contexts open, connected and their packages still in flight

    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
""")


def test_process_exiting_with_connected_contexts_and_data_in_flight_exits_promptly_and_delivers():
    n, big = 50_000, 8 * MiB
    ctx = yoton.Context(queue_params=(n + 100, "old"))
    try:
        conns = [ctx.bind(BIND), ctx.bind(BIND)]
        closed = [_record(c.closed) for c in conns]
        subs = [yoton.SubChannel(ctx, f"exit-{k}") for k in (1, 2)]
        bigs = [yoton.SubChannel(ctx, f"exit-{k}-big", yoton.BINARY) for k in (1, 2)]
        flood = yoton.PubChannel(ctx, "flood")
        env = dict(os.environ, PYTHONPATH=str(SRC))
        proc = subprocess.Popen(
            [sys.executable, "-c", _EXITING_CHILD, str(conns[0].port1), str(conns[1].port1), str(n), str(big)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        stop_flood = threading.Event()
        flooder = None
        try:
            assert wait_for(lambda: all(c.is_connected for c in conns), 10.0), "child did not connect"
            flooder = _flood_while_alive(flood, conns, stop_flood)
            line = proc.stdout.readline()
            assert line == b"queued\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
            t_queued = time.monotonic()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pytest.fail("the child did not exit within 5 s of returning from main")
            exit_time = time.monotonic() - t_queued
            assert proc.returncode == 0, proc.stderr.read().decode()
            assert wait_for(lambda: all(closed), 3.0), "we did not see the child's connections close"
            for k in range(2):
                assert closed[k][0][2] == REASON_PEER_CLOSED, closed[k]
                got = subs[k].recv_all()
                assert got == [str(i) for i in range(n)], f"context {k + 1}: {len(got)} of {n}, or out of order"
                assert bigs[k].recv(False) == bytes(range(256)) * (big // 256)
            print(f"child exited {exit_time:.2f} s after queueing {2 * n} messages and 2 x {big // MiB} MiB")
        finally:
            stop_flood.set()
            if flooder is not None:
                flooder.join(5.0)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5.0)
            proc.stdout.close()
            proc.stderr.close()
    finally:
        ctx.close()


# -- Context.close() leaves nothing behind ------------------------------------------------


def test_context_close_with_every_channel_kind_leaves_threads_and_fds_as_before():
    before = Resources()
    a, conn_a, b, conn_b = _connected_pair()
    waiting = a.bind(BIND)  # a bind nobody connects to
    second = b.bind(BIND)
    conn_c = a.connect(f"{HOST}:{second.port1}", timeout=3.0)  # a second link, other direction
    assert wait_for(lambda: second.is_connected, 3.0)
    _exercise_everything(a, b)
    threads, fds = before.leaks()
    assert any(name.startswith("yoton-io-") for name in threads) and any(
        name.startswith("yoton-rep-") for name in threads
    ), threads
    assert len(fds) >= 2 * 3 + 4, fds  # selector + wake-up pair per context, the sockets
    t0 = time.monotonic()
    a.close()
    b.close()
    assert time.monotonic() - t0 < 3.0, "closing took too long"
    assert not any(c.is_alive for c in (conn_a, conn_b, waiting, second, conn_c))
    before.assert_back()


# -- a network partition between two hosts ---------------------------------------------------


def test_network_partition_between_two_hosts_times_out_and_heals_without_loss():
    net = Netns()
    peers: list = []
    try:
        net.setup()
        host_a = PeerProcess("ours", "host-a", prefix=net.prefix(net.ns_a))
        peers.append(host_a)
        host_b = PeerProcess("ours", "host-b", prefix=net.prefix(net.ns_b))
        peers.append(host_b)
        port = host_a.call("bind", addr=f"{net.ADDR_A}:0")["port"]
        assert host_b.call("connect", addr=f"{net.ADDR_A}:{port}", timeout=5.0)["is_connected"]
        host_b.call("sub", slot="partition", type="txt")
        host_a.call("stream_start", slot="partition", interval=0.005)
        assert len(host_b.call("recv_n", slot="partition", type="txt", n=20, timeout=5.0)["msgs"]) == 20
        timeout = 0.5  # the default, and the minimum
        for host in (host_a, host_b):
            assert host.call("conn_info", conn=0)["is_connected"]
            assert host.call("timedout_events")["events"] == []

        t_cut = time.monotonic()
        net.link(up=False)
        for host in (host_a, host_b):
            events = host.call("timedout_events", count=1, timeout=5.0)["events"]
            assert events, f"{host}: no timedout signal within 5 s of the cut"
            _, value, t_handled = events[0]
            assert value is True
            elapsed = t_handled - t_cut
            assert elapsed <= 2 * timeout, f"{host}: timedout {elapsed:.2f} s after the cut"
            assert elapsed >= timeout - 0.4, f"{host}: timedout {elapsed:.2f} s after the cut: too early"
            print(f"{host}: timedout {elapsed:.2f} s after the cut")
        for host in (host_a, host_b):
            assert host.call("conn_info", conn=0)["is_connected"], "a partition alone must not close"

        net.link(up=True)
        for host in (host_a, host_b):
            events = host.call("timedout_events", count=2, timeout=15.0)["events"]
            assert [e[1] for e in events] == [True, False], f"{host}: {events}"
        sent = host_a.call("stream_stop")["sent"]
        got = host_b.call("recv_n", slot="partition", type="txt", n=sent - 20, timeout=10.0)
        assert not got.get("timeout"), f"{len(got['msgs'])} of {sent - 20} arrived after the partition healed"
        assert [int(m) for m in got["msgs"]] == list(range(20, sent))
    finally:
        for peer in peers:
            peer.close()
        net.cleanup()
