"""Integration tests of Context and TcpConnection: real sockets on 127.0.0.1,
our yoton on both ends (several contexts in this process, or a subprocess
where a separate peer process is needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import yoton
from yoton.wire.naming import port_hash

SRC = Path(__file__).resolve().parent.parent / "src"


def _io_threads(context):
    name = f"yoton-io-{context.id:016x}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def _recorder(signal_):
    """Bind a recorder to ``signal_``; returns the list of (time, args) it fills."""
    got = []
    signal_.bind(lambda *args: got.append((time.monotonic(), args)))
    return got


# ---------------------------------------------------------------------------
# Context construction
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        (5,),
        [5],
        (5, "old", 1),
        "5,old",
        5,  # wrong shape
        (5, "mid"),
        (5, ""),
        (5, None),
        (5, b"old"),  # bad mode
        (0, "old"),
        (-1, "new"),
        ("5", "old"),
        (5.0, "old"),
        (True, "old"),  # bad size
    ],
)
def test_queue_params_validation(params):
    with pytest.raises(ValueError):
        yoton.Context(queue_params=params)


def test_queue_params_accepted(ctx):
    assert ctx().queue_params == (10000, "old")
    assert ctx(queue_params=(5, "new")).queue_params == (5, "new")
    assert ctx(0, [7, "old"]).queue_params == (7, "old")
    assert ctx(queue_params=(3, "OLD")).queue_params == (3, "old")  # as yoton 2.2: any case
    assert ctx(verbose=2).connection_count == 0


def test_id_is_64_bit_and_hex_renderable(ctx):
    ids = [ctx().id for _ in range(5)]
    assert len(set(ids)) == 5
    for i in ids:
        assert isinstance(i, int)
        assert 0 < i < 2**64
        assert i >> 32 != 0  # high half is a (non-zero) timestamp
        text = format(i, "016x")
        assert len(text) == 16 and int(text, 16) == i
        assert int(hex(i), 16) == i
    c = ctx()
    assert format(c.id, "016x") in repr(c)


# ---------------------------------------------------------------------------
# bind / connect / close
# ---------------------------------------------------------------------------


def test_bind_connect_send_and_close_thread_ends(pair, wait_for):
    a, b, ca, cb = pair()
    assert _io_threads(a) and _io_threads(b)
    pub = yoton.PubChannel(a, "x")
    sub = yoton.SubChannel(b, "x")
    pub.send("hello")
    assert sub.recv(3.0) == "hello"
    a.close()
    assert _io_threads(a) == []
    assert a.connection_count == 0 and len(a.connections_all) == 0
    assert wait_for(lambda: not cb.is_alive)
    b.close()
    assert _io_threads(b) == []


def test_context_reusable_after_close(pair, bind_free, wait_for):
    a, b, ca, cb = pair()
    a.close()
    b.close()
    assert not ca.is_alive and not cb.is_alive
    # the same two contexts, again, the other way round
    cb2 = bind_free(b)
    ca2 = a.connect(f"127.0.0.1:{cb2.port1}", timeout=3.0)
    assert wait_for(lambda: cb2.is_connected and ca2.is_connected, events=False)
    assert a.connection_count == 1 and b.connection_count == 1
    assert _io_threads(a) and _io_threads(b)
    pub = yoton.PubChannel(b, "again")
    sub = yoton.SubChannel(a, "again")
    pub.send("one")
    assert sub.recv(3.0) == "one"
    a.close()
    assert _io_threads(a) == []


def test_close_channels_keeps_connections(pair):
    a, b, ca, cb = pair()
    pub = yoton.PubChannel(a, "c")
    sub = yoton.SubChannel(a, "d")
    state = yoton.StateChannel(a, "s")
    a.close_channels()
    assert pub.closed and sub.closed and state.closed
    with pytest.raises(yoton.ChannelClosedError):
        pub.send("x")
    assert a.connection_count == 1 and ca.is_connected
    # the slots are free again and messages still flow
    pub2 = yoton.PubChannel(a, "c")
    sub2 = yoton.SubChannel(b, "c")
    pub2.send("after")
    assert sub2.recv(3.0) == "after"


def test_flush_returns_when_written(pair, wait_for):
    a, b, ca, cb = pair()
    pub = yoton.PubChannel(a, "bulk", yoton.BINARY)
    sub = yoton.SubChannel(b, "bulk", yoton.BINARY)
    blob = b"x" * 20000
    n = 300  # 6 MB: more than the kernel buffers hold at once
    for _ in range(n):
        pub.send(blob)
    a.flush(5.0)
    assert all(c.statistics()["queued_bytes"] == 0 for c in a.connections_all)
    got = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= n, 5.0, events=False)
    assert len(got) == n and got[0] == blob


_FLUSH_THEN_EXIT = """
import os, sys, time, yoton
ctx = yoton.Context()
conn = ctx.connect("127.0.0.1:%s" % sys.argv[1], timeout=5.0)
pub = yoton.PubChannel(ctx, "last-words")
time.sleep(0.2)  # (idle first: the first send goes at once, the others wait on the stage)
for i in range(50):
    pub.send(str(i))  # (quick sends wait on the context's stage)
getattr(conn if sys.argv[2] == "connection" else ctx, "flush")(5.0)
os._exit(0)  # no close, no atexit: only what flush() wrote gets out
"""


@pytest.mark.parametrize("which", ["connection", "context"])
def test_flush_writes_everything_sent_before_it(ctx, bind_free, which):
    """Connection.flush() and Context.flush() return once every message sent
    before them is written, also those still waiting to be numbered."""
    c = ctx()
    conn = bind_free(c)
    sub = yoton.SubChannel(c, "last-words")
    proc = subprocess.run(
        [sys.executable, "-c", _FLUSH_THEN_EXIT, str(conn.port1), which], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = []
    deadline = time.monotonic() + 5.0
    while len(got) < 50 and time.monotonic() < deadline:
        got += [m for m in [sub.recv(0.5)] if m]
    assert got == [str(i) for i in range(50)]


def test_a_pump_left_queued_on_a_stopped_loop_holds_no_send_back(ctx, bind_free, wait_for):
    """A send that queues the stage's pump on the loop just as the loop stops
    (close() in another thread) must not leave later sends waiting."""
    a, b = ctx(), ctx()
    sub = yoton.SubChannel(b, "after")
    for attempt in range(2):
        ca = bind_free(a)
        b.connect(f"127.0.0.1:{ca.port1}", timeout=3.0)
        assert wait_for(lambda: ca.is_connected, events=False)
        pub = yoton.PubChannel(a, "after")
        if attempt == 0:
            # The loop stops (as close() in another thread would stop it)
            # between the sender's check and its call_soon.
            loop = a.router.loop
            real_call_soon = loop.call_soon

            def stopping_call_soon(func, *args):
                loop.call_soon = real_call_soon  # (once: stop() queues a call too)
                loop.stop()
                real_call_soon(func, *args)

            loop.call_soon = stopping_call_soon
            a.router._pump_after = time.monotonic() + 60  # (as in a stream: pump on the loop)
            a.connections[0]._link._direct_after = 0.0  # (the sender may write by itself)
            pub.send("racing the stop")
            assert not loop.running
            assert not a.router._stage and not a.router._pump_scheduled, "the sender must pump itself then"
            assert sub.recv(3.0) == "racing the stop"
        else:
            # A flag left set by such a race on the old loop: the new loop starts clean.
            assert not a.router._pump_scheduled
            for i in range(3):
                a._pump_after = 0.0  # (sparse sends)
                pub.send(f"after reconnect {i}")
            assert [sub.recv(3.0) for _ in range(3)] == [f"after reconnect {i}" for i in range(3)]
        a.close()
        a._pump_scheduled = True  # (what the race above leaves behind without the fix)
        wait_for(lambda: not b.connections, 3.0, events=False)


def test_flush_without_connections_returns(ctx):
    c = ctx()
    c.flush(0.1)  # nothing to wait for


def test_flush_timeout_on_waiting_bind(ctx, bind_free):
    c = ctx()
    conn = bind_free(c)
    pub = yoton.PubChannel(c, "q")
    pub.send("queued")
    t0 = time.monotonic()
    with pytest.raises(yoton.FlushTimeout) as info:
        c.flush(0.3)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, yoton.YotonError)
    assert 0.25 <= elapsed < 2.0
    conn.flush(0.1)  # a waiting bind holds nothing: what waits is in the startup queue


def test_connection_collections(ctx, bind_free, wait_for):
    a, b = ctx(), ctx()
    w1 = bind_free(a, "w1")
    w2 = bind_free(a, "w2")
    assert a.connection_count == 0
    assert len(a.connections) == 0
    assert len(a.connections_all) == 2
    assert a.connections_all["w1"] is w1 and a.connections_all["w2"] is w2
    assert a.connections_all[0] is w1 and a.connections_all[1] is w2
    with pytest.raises(KeyError):
        a.connections["w1"]  # waiting binds only in connections_all
    with pytest.raises(KeyError):
        a.connections_all["nope"]

    cb = b.connect(f"127.0.0.1:{w2.port1}", timeout=3.0, name="to-a")
    assert wait_for(lambda: a.connection_count == 1, events=False)
    assert a.connections[0] is w2 and a.connections["w2"] is w2
    assert a.connections.get("w1") is None
    assert len(a.connections_all) == 2 and w1.is_waiting
    assert b.connections["to-a"] is cb and b.connections[-1] is cb
    assert bool(b.connection_count)

    w1.close()
    assert w1 not in a.connections_all and len(a.connections_all) == 1


def test_bind_max_tries_skips_taken_port(ctx, wait_for):
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        taken = blocker.getsockname()[1]
        c = ctx()
        with pytest.raises(OSError):
            c.bind(f"127.0.0.1:{taken}")
        conn = c.bind(f"127.0.0.1:{taken}", max_tries=8)
        assert conn.port1 != taken and conn.port1 > taken
        assert conn.is_waiting
        other = ctx()
        oc = other.connect(f"127.0.0.1:{conn.port1}", timeout=3.0)
        assert wait_for(lambda: conn.is_connected, events=False)
        assert oc.port2 == conn.port1
    finally:
        blocker.close()


def test_connect_nothing_listening_times_out(ctx, free_port):
    c = ctx()
    port = free_port()
    timeout = 1.0
    t0 = time.monotonic()
    with pytest.raises(yoton.ConnectError) as info:
        c.connect(f"127.0.0.1:{port}", timeout=timeout)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, OSError)
    assert timeout - 0.05 <= elapsed <= timeout + 1.0
    assert c.connection_count == 0 and len(c.connections_all) == 0


def test_connect_to_a_name_that_cannot_be_looked_up_is_a_connect_error(ctx):
    c = ctx()
    # (a label over 63 characters: the IDNA codec refuses it with a UnicodeError,
    # before any lookup goes out)
    with pytest.raises(yoton.ConnectError, match="Could not connect to"):
        c.connect("x" * 64 + ".invalid:7000", timeout=1.0)
    assert c.connection_count == 0


def test_connect_to_non_yoton_server_fails_quickly(ctx):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5.0)
    port = srv.getsockname()[1]
    done = threading.Event()

    def serve():
        try:
            s, _ = srv.accept()
        except OSError:
            return
        with s:
            s.settimeout(5.0)
            try:
                s.recv(100)
                s.sendall(b"220 welcome to my mail server\r\n")
                done.wait(5.0)
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        c = ctx()
        t0 = time.monotonic()
        with pytest.raises(yoton.YotonError) as info:
            c.connect(f"127.0.0.1:{port}", timeout=3.0)
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0
        assert "handshake" in str(info.value).lower()
        assert isinstance(info.value, OSError)  # yoton 2.2 raised IOError here
        assert isinstance(info.value, yoton.HandshakeError)
        assert c.connection_count == 0
    finally:
        done.set()
        srv.close()
        t.join(5.0)


def test_context_cannot_connect_to_itself(ctx, bind_free, wait_for):
    c = ctx()
    conn = bind_free(c)
    with pytest.raises(yoton.HandshakeError) as info:
        c.connect(f"127.0.0.1:{conn.port1}", timeout=2.0)
    assert isinstance(info.value, OSError)
    assert "self" in str(info.value)
    assert c.connection_count == 0
    # the bind refused that client and goes on waiting for a real peer
    assert conn.is_waiting
    other = ctx()
    other.connect(f"127.0.0.1:{conn.port1}", timeout=3.0)
    assert wait_for(lambda: conn.is_connected, events=False)


def _bind_named(context, prefix):
    """Bind to a port named by a string (hashed); try a few names in case one is taken."""
    for i in range(20):
        name = f"{prefix}{os.getpid()}x{i}"
        try:
            return name, context.bind(f"localhost:{name}")
        except OSError:
            continue
    pytest.skip("no free hashed port found")


@pytest.mark.parametrize(
    "form",
    ["tcp://localhost:{port}", "localhost:{port}", "LocalHost:{port}", "127.0.0.1:{port}", "TCP://127.0.0.1:{port}"],
)
def test_address_forms(ctx, free_port, wait_for, form):
    a, b = ctx(), ctx()
    ca = a.bind(form.format(port=free_port()), max_tries=16)
    assert ca.hostname1 == "127.0.0.1"
    cb = b.connect(form.format(port=ca.port1), timeout=3.0)
    assert wait_for(lambda: ca.is_connected, events=False)
    assert cb.port2 == ca.port1
    pub, sub = yoton.PubChannel(b, "addr"), yoton.SubChannel(a, "addr")
    pub.send(form)
    assert sub.recv(3.0) == form


def test_address_port_names_are_hashed(ctx, wait_for):
    a, b = ctx(), ctx()
    name, ca = _bind_named(a, "yotontest")
    assert ca.port1 == port_hash(name)
    cb = b.connect(f"tcp://localhost:{name}", timeout=3.0)
    assert cb.port2 == port_hash(name)
    assert wait_for(lambda: ca.is_connected, events=False)
    # name+offset
    c, d = ctx(), ctx()
    for offset in range(1, 20):
        try:
            cc = c.bind(f"localhost:{name}+{offset}")
            break
        except OSError:
            continue
    else:
        pytest.skip("no free port near the hashed one")
    assert cc.port1 == port_hash(name) + offset
    d.connect(f"127.0.0.1:{name}+{offset}", timeout=3.0)
    assert wait_for(lambda: cc.is_connected, events=False)


def test_bad_addresses(ctx):
    c = ctx()
    for address in ["nocolon", 1234, "localhost:70000", "localhost:name+x"]:
        with pytest.raises(ValueError):
            c.bind(address)
    with pytest.raises(ValueError):
        c.connect("udp://localhost:1234")
    assert len(c.connections_all) == 0


@pytest.mark.parametrize("bad", [-0.001, 1.5, True, "0.1"])
def test_spin_must_be_seconds_from_0_to_1(bad):
    with pytest.raises(ValueError, match="spin"):
        yoton.Context(spin=bad)


def test_spin_reaches_the_io_loop(ctx):
    from yoton.transport import ioloop

    assert ctx(spin=0.001).router.io_loop().spin == 0.001
    assert ctx(spin=0).router.io_loop().spin == 0.0
    assert ctx().router.io_loop().spin == ioloop.default_spin()


# ---------------------------------------------------------------------------
# Startup queue
# ---------------------------------------------------------------------------


def test_startup_queue_goes_to_first_peer_connect(ctx, bind_free, wait_for):
    a, b = ctx(), ctx()
    pub = yoton.PubChannel(a, "early")
    for i in range(50):
        pub.send(f"m{i}")
    sub = yoton.SubChannel(b, "early")
    cb = bind_free(b)
    a.connect(f"127.0.0.1:{cb.port1}", timeout=3.0)
    got = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= 50)
    assert got == [f"m{i}" for i in range(50)]


def test_startup_queue_goes_to_first_peer_bind(ctx, bind_free, wait_for):
    a, b, c = ctx(), ctx(), ctx()
    pub = yoton.PubChannel(a, "early")
    for i in range(30):
        pub.send(f"m{i}")
    ca = bind_free(a)  # a waiting bind holds nothing: the startup queue keeps it all
    pub.send("m30")
    ca_second = bind_free(a)
    pub.send("m31")
    sub_b = yoton.SubChannel(b, "early")
    sub_c = yoton.SubChannel(c, "early")
    b.connect(f"127.0.0.1:{ca.port1}", timeout=3.0)
    c.connect(f"127.0.0.1:{ca_second.port1}", timeout=3.0)
    got_b, got_c = [], []
    assert wait_for(lambda: got_b.extend(sub_b.recv_all()) or len(got_b) >= 32)
    assert got_b == [f"m{i}" for i in range(32)]
    # the first peer took the startup queue; the second gets what is sent once it is there
    assert wait_for(lambda: ca_second.is_connected)
    pub.send("last")
    assert wait_for(lambda: got_c.extend(sub_c.recv_all()) or got_c[-1:] == ["last"])
    assert got_c == ["last"]


# ---------------------------------------------------------------------------
# Connection properties
# ---------------------------------------------------------------------------


def test_connection_properties(ctx, bind_free, wait_for):
    a, b = ctx(), ctx()
    ca = bind_free(a, "server")
    assert ca.name == "server"
    assert ca.is_waiting and ca.is_alive and not ca.is_connected
    assert ca.hostname1 == "127.0.0.1" and ca.port1 > 0
    assert ca.hostname2 == "" and ca.port2 == 0
    assert ca.id1 == a.id and ca.id2 == 0
    assert ca.pid1 == os.getpid() and ca.pid2 == 0
    assert ca.close_reason is None

    cb = b.connect(f"localhost:{ca.port1}", timeout=3.0, name="client")
    assert wait_for(lambda: ca.is_connected, events=False)
    for conn in (ca, cb):
        assert conn.is_connected and conn.is_alive and not conn.is_waiting
        assert conn.hostname1 == "127.0.0.1" and conn.hostname2 == "127.0.0.1"
        assert conn.pid1 == os.getpid() and conn.pid2 == os.getpid()
    assert cb.name == "client"
    assert ca.port2 == cb.port1 and cb.port2 == ca.port1
    assert ca.id1 == a.id and ca.id2 == b.id
    assert cb.id1 == b.id and cb.id2 == a.id

    assert ca.timeout == 0.5
    ca.timeout = 0.1
    assert ca.timeout == 0.5  # minimum
    ca.timeout = 2
    assert ca.timeout == 2.0
    with pytest.raises(ValueError):
        ca.timeout = -1
    with pytest.raises((ValueError, TypeError)):
        ca.timeout = "soon"
    assert ca.timeout == 2.0

    cb.close()
    assert not cb.is_alive and not cb.is_connected and not cb.is_waiting
    assert cb.close_reason == "Closed on command."
    assert wait_for(lambda: not ca.is_alive, events=False)


# ---------------------------------------------------------------------------
# Close reasons
# ---------------------------------------------------------------------------


def test_close_with_reason_notifies_peer(pair, wait_for):
    a, b, ca, cb = pair()
    got_a, got_b = _recorder(ca.closed), _recorder(cb.closed)
    ca.close("my reason")
    assert not ca.is_alive
    assert wait_for(lambda: got_a and got_b)
    assert [args for _, args in got_a] == [(ca, "my reason")]
    assert [args for _, args in got_b] == [(cb, "Closed from other end.")]
    assert cb.close_reason == "Closed from other end."
    assert a.connection_count == 0 and b.connection_count == 0
    # closing again does nothing and emits nothing
    ca.close("again")
    yoton.process_events(0.1)
    assert len(got_a) == 1


def test_close_default_reason(pair, wait_for):
    a, b, ca, cb = pair()
    got_b = _recorder(cb.closed)
    cb.close()
    assert wait_for(lambda: got_b)
    assert got_b[0][1] == (cb, "Closed on command.")
    assert wait_for(lambda: ca.close_reason == "Closed from other end.", events=False)


def test_close_on_problem_does_not_notify_peer(pair, wait_for):
    a, b, ca, cb = pair()
    got_a, got_b = _recorder(ca.closed), _recorder(cb.closed)
    cb.close_on_problem("went wrong")
    assert wait_for(lambda: got_a and got_b)
    assert got_b[0][1] == (cb, "went wrong")
    reason = got_a[0][1][1]
    assert reason != "Closed from other end."
    assert reason == "Other end dropped the connection."


def test_context_close_reason(pair, wait_for):
    a, b, ca, cb = pair()
    got_a, got_b = _recorder(ca.closed), _recorder(cb.closed)
    a.close()
    assert wait_for(lambda: got_a and got_b)
    assert got_a[0][1] == (ca, "Closed by the context.")
    assert got_b[0][1] == (cb, "Closed from other end.")


def test_close_waiting_bind(ctx, bind_free, wait_for):
    c = ctx()
    conn = bind_free(c)
    port = conn.port1
    got = _recorder(conn.closed)
    conn.close()
    assert not conn.is_alive and not conn.is_waiting
    assert wait_for(lambda: got)
    assert got[0][1] == (conn, "Closed on command.")
    # nobody listens any more
    with pytest.raises(yoton.ConnectError):
        ctx().connect(f"127.0.0.1:{port}", timeout=0.3)


# ---------------------------------------------------------------------------
# Multi-hop routing
# ---------------------------------------------------------------------------


def _build(ctx, wait_for, bind_free, n, edges, settle=None):
    """Make ``n`` contexts; for each edge (i, j), i binds and j connects to it."""
    contexts = [ctx() for _ in range(n)]
    degree = Counter()
    for i, j in edges:
        conn = bind_free(contexts[i])
        contexts[j].connect(f"127.0.0.1:{conn.port1}", timeout=3.0)
        degree[i] += 1
        degree[j] += 1
    assert wait_for(lambda: all(contexts[k].connection_count == degree[k] for k in range(n)), events=False)
    if settle is not None:
        settle(contexts)
    return contexts


def _flood_and_check(contexts, wait_for, per_context=40):
    n = len(contexts)
    pubs = [yoton.PubChannel(c, "flood") for c in contexts]
    subs = [yoton.SubChannel(c, "flood") for c in contexts]
    for k, pub in enumerate(pubs):
        for i in range(per_context):
            pub.send(f"{k}:{i}")
    for k, pub in enumerate(pubs):
        pub.send(f"{k}:end")
    got = [[] for _ in range(n)]
    expected_count = (n - 1) * (per_context + 1)

    def all_in():
        for k, sub in enumerate(subs):
            got[k].extend(sub.recv_all())
        return all(len(g) >= expected_count for g in got)

    assert wait_for(all_in, 5.0)
    for c in contexts:
        c.flush(3.0)
    all_in()  # pick up anything late (duplicates would show here)
    for k, received in enumerate(got):
        counts = Counter(received)
        dupes = [m for m, cnt in counts.items() if cnt > 1]
        assert not dupes, f"context {k} got duplicates: {dupes[:5]}"
        assert len(received) == expected_count, f"context {k} got {len(received)} of {expected_count}"
        for src in range(n):
            mine = [m for m in received if m.split(":")[0] == str(src)]
            if src == k:
                assert mine == []  # a context does not receive its own messages
            else:
                assert mine == [f"{src}:{i}" for i in range(per_context)] + [f"{src}:end"]


def test_chain_of_four_delivers_exactly_once(ctx, wait_for, bind_free):
    contexts = _build(ctx, wait_for, bind_free, 4, [(0, 1), (1, 2), (2, 3)])
    _flood_and_check(contexts, wait_for)


def test_tree_delivers_exactly_once(ctx, wait_for, bind_free):
    # root 0 with children 1, 2, 3; child 1 has grandchildren 4 and 5
    contexts = _build(ctx, wait_for, bind_free, 6, [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)])
    _flood_and_check(contexts, wait_for, per_context=25)


def test_triangle_mesh_delivers_exactly_once(ctx, wait_for, bind_free):
    contexts = _build(ctx, wait_for, bind_free, 3, [(0, 1), (0, 2), (1, 2)])
    _flood_and_check(contexts, wait_for, per_context=60)


def test_chain_state_reaches_far_end(ctx, wait_for, bind_free, settle):
    contexts = _build(ctx, wait_for, bind_free, 4, [(0, 1), (1, 2), (2, 3)], settle)
    first = yoton.StateChannel(contexts[0], "st")
    last = yoton.StateChannel(contexts[3], "st")
    first.send("from A")
    assert wait_for(lambda: last.recv() == "from A")
    last.send("from D")
    assert wait_for(lambda: first.recv() == "from D")


# ---------------------------------------------------------------------------
# Concurrency
# ---------------------------------------------------------------------------


# (eight threads sending at once, per-thread order: tests/transport/test_faults.py)


def test_a_burst_of_small_and_large_sends_arrives_in_order_without_flush(pair, wait_for):
    """Small sends in quick succession wait on the context's stage and are
    numbered and queued in batches (on the loop side); a large one is queued
    at once, after what is staged. Nothing may stay behind when the sender
    stops, and the order must hold."""
    from yoton import context as context_module

    a, b, _, _ = pair()
    pub, sub = yoton.PubChannel(a, "burst", yoton.BINARY), yoton.SubChannel(b, "burst", yoton.BINARY)
    big = context_module._STAGE_BODY + 1
    sent = []
    for i in range(3000):
        message = b"%d" % i
        if i % 500 == 250:  # (the last ones are small: nothing large pumps them)
            message = message.ljust(big, b".")
        pub.send(message)
        sent.append(message)
    got = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= len(sent), 5.0, events=False), len(got)
    assert got == sent
    # (the writer accounts for what it wrote right after the write: the receiver may be quicker)
    assert wait_for(lambda: not a.router._stage and a.statistics()["queued_bytes"] == 0, 5.0, events=False)


def test_io_thread_stays_responsive_after_concurrent_bursts(ctx, bind_free, settle, wait_for):
    """Regression: many threads waking the I/O thread at once could leave its
    'already woken' flag set with no wake-up byte pending; from then on sends
    waited for the next housekeeping tick (~0.1 s) and close() hung 2 s."""
    for _ in range(5):
        a, b = ctx(), ctx()
        ca = bind_free(a)
        b.connect(f"127.0.0.1:{ca.port1}", timeout=3.0)
        assert wait_for(lambda: ca.is_connected, events=False)
        settle([a, b])
        pub, sub = yoton.PubChannel(a, "burst"), yoton.SubChannel(b, "burst")
        barrier = threading.Barrier(8)

        def burst():
            barrier.wait(5.0)
            for i in range(300):
                pub.send(str(i))

        threads = [threading.Thread(target=burst) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5.0)
        got = []
        assert wait_for(lambda: got.extend(sub.recv_all()) or len(got) >= 2400, 5.0, events=False)
        latencies = []
        for _ in range(7):
            # let the I/O threads go idle, so the send below has to wake them
            wait_for(lambda: False, 0.02, events=False)
            t0 = time.monotonic()
            pub.send("ping")
            assert sub.recv(2.0) == "ping"
            latencies.append(time.monotonic() - t0)
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.03, latencies
        t0 = time.monotonic()
        a.close()
        b.close()
        assert time.monotonic() - t0 < 1.0


# ---------------------------------------------------------------------------
# timedout signal with a real peer process (SIGSTOP / SIGCONT)
# ---------------------------------------------------------------------------

_IDLE_PEER = r"""
import sys, yoton
port = int(sys.argv[1])
ctx = yoton.Context()
sub = yoton.SubChannel(ctx, "tdata")
ctx.connect("127.0.0.1:%d" % port, timeout=10.0)
print("ready " + yoton.__file__, flush=True)
while True:
    msg = sub.recv(True)
    print("got " + msg, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP/SIGCONT")
def test_timedout_signal_with_stopped_peer(ctx, bind_free, wait_for):
    c = ctx()
    conn = bind_free(c)
    conn.timeout = 1.0
    timedout = _recorder(conn.timedout)
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", _IDLE_PEER, str(conn.port1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    lines: list = []
    reader = threading.Thread(target=lambda: [lines.append(line.rstrip("\n")) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: lines, 15.0), (
            f"peer did not start: {proc.stderr.read() if proc.poll() is not None else ''}"
        )
        assert lines[0].startswith("ready ")
        assert SRC.resolve() in Path(lines[0][6:]).resolve().parents
        assert wait_for(lambda: conn.is_connected, 3.0)
        assert conn.pid2 == proc.pid
        # a live, idle peer keeps the connection alive with heartbeats
        wait_for(lambda: False, 1.2)
        assert timedout == []

        os.kill(proc.pid, signal.SIGSTOP)
        t_stop = time.monotonic()
        assert wait_for(lambda: timedout, conn.timeout + 2.0)
        elapsed = timedout[0][0] - t_stop
        assert timedout[0][1] == (conn, True)
        # silence is measured from the last heartbeat, which may be up to ~0.35 s before the stop
        assert conn.timeout - 0.45 <= elapsed <= conn.timeout + 1.0

        pub = yoton.PubChannel(c, "tdata")
        for i in range(20):
            pub.send(f"m{i}")
        assert conn.is_connected

        os.kill(proc.pid, signal.SIGCONT)
        assert wait_for(lambda: len(timedout) >= 2, 2.0)
        assert timedout[1][1] == (conn, False)
        assert len(timedout) == 2
        assert wait_for(lambda: len([x for x in lines if x.startswith("got ")]) >= 20, 5.0, events=False)
        assert [x[4:] for x in lines if x.startswith("got ")] == [f"m{i}" for i in range(20)]
    finally:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except OSError:
            pass
        proc.kill()
        proc.wait(5.0)
        proc.stdout.close()
        proc.stderr.close()


def test_one_read_of_interleaved_packages_is_routed_in_order(ctx):
    """A batch (one socket read) with two slots and two sources interleaved,
    repeats (also across reads), a package addressed elsewhere, our own ones
    and a context message in the middle: each channel gets its own packages
    in order, numbered in arrival order; the rest is dropped."""
    from yoton.wire.frames import SLOT_CONTEXT, Package

    c = ctx()
    x, y = yoton.SubChannel(c, "x"), yoton.SubChannel(c, "y")
    sx, sy = x._slot_in, y._slot_in
    src, other = 0x1111, 0x2222
    batch = [
        Package(b"x1", sx, src, 1),
        Package(b"y1", sy, src, 2),
        Package(b"x2", sx, src, 3),
        Package(b"x2 again", sx, src, 3),  # repeat: dropped
        Package(b"not for us", sx, src, 4, dest_id=other),  # addressed elsewhere: dropped
        Package(b"NEW_CONNECTION", SLOT_CONTEXT, src, 5),
        Package(b"y2", sy, src, 6),
        Package(b"x3", sx, other, 1),
        Package(b"mine", sx, c.id, 9),
        # sources interleaved: each source's last number must survive the switches
        Package(b"y2 again", sy, src, 6),
        Package(b"x3 again", sx, other, 1),
        Package(b"y3", sy, src, 7),
        Package(b"mine too", sy, c.id, 10),
        Package(b"x4", sx, other, 2),
    ]
    c.router.packages_arrived(object(), batch)
    # and across reads
    c.router.packages_arrived(
        object(), [Package(b"x4 again", sx, other, 2), Package(b"y3 again", sy, src, 7), Package(b"y4", sy, src, 8)]
    )
    assert [bytes(p.data) for p in x._queue] == [b"x1", b"x2", b"x3", b"x4"]
    assert [bytes(p.data) for p in y._queue] == [b"y1", b"y2", b"y3", b"y4"]
    assert c.router._last_seq == {src: 8, other: 2}
    order = []
    while (chosen := yoton.select_sub_channel(x, y)) is not None:
        order += chosen.recv_selected()
    assert order == ["x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"]
