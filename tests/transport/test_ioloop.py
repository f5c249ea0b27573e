"""The I/O thread: survives failing handlers, cleans up after itself, moves big data.

Real sockets on 127.0.0.1. Waiting is always on a condition with a deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from transport_util import CONTROL, HEADER, RawClient, address, check_pubsub, fd_count, wait_for

import yoton
from yoton.transport.ioloop import IOLoop

pytestmark = pytest.mark.timeout(30)

BIND = "127.0.0.1:0"
MiB = 1 << 20


class Boom(RuntimeError):
    pass


def _connected(make_ctx):
    """Two contexts connected over TCP: (binding ctx, its conn, connecting ctx, its conn)."""
    a = make_ctx()
    conn_a = a.bind(BIND)
    b = make_ctx()
    conn_b = b.connect(address(conn_a), timeout=2.0)
    assert wait_for(lambda: conn_a.is_connected, 2.0)
    return a, conn_a, b, conn_b


def _yoton_errors(caplog, exc_type=Boom) -> list:
    return [
        r
        for r in caplog.records
        if r.name == "yoton" and r.levelno >= logging.ERROR and r.exc_info and isinstance(r.exc_info[1], exc_type)
    ]


# -- the loop itself ------------------------------------------------------------


def test_ioloop_survives_raising_handlers_calls_timers_and_housekeepers(caplog):
    caplog.set_level(logging.ERROR, logger="yoton")
    fds_before = fd_count()
    loop = IOLoop(name="test-ioloop")
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        seen: list = []
        done = threading.Event()

        class Handler:
            def _on_readable(self):
                data = a.recv(100)
                seen.append(data)
                if data == b"bad":
                    raise Boom("handler")
                if data == b"good":
                    done.set()

        class Housekeeper:
            calls = 0

            def _housekeeping(self, now):
                Housekeeper.calls += 1
                raise Boom("housekeeping")

        def bad_call():
            raise Boom("call_soon")

        def bad_timer():
            raise Boom("call_later")

        loop.call_soon(loop.register, a, Handler())
        loop.call_soon(bad_call)
        loop.call_later(bad_timer, 0.01)
        keeper = Housekeeper()
        loop.call_soon(loop.housekeepers.add, keeper)
        b.send(b"bad")
        assert wait_for(lambda: seen == [b"bad"], 2.0), seen
        b.send(b"good")
        assert done.wait(2.0), seen
        assert wait_for(lambda: Housekeeper.calls >= 2, 2.0)  # kept being called after raising
        assert loop.running
        later = threading.Event()
        loop.call_later(later.set, 0.01)
        assert later.wait(2.0)
        messages = {str(r.exc_info[1]) for r in _yoton_errors(caplog)}
        assert {"handler", "call_soon", "call_later", "housekeeping"} <= messages
    finally:
        loop.stop()
        a.close()
        b.close()
    assert not loop._thread.is_alive()
    assert fd_count() == fds_before


# -- a context whose handlers raise -------------------------------------------------


def test_channel_receive_raising_is_logged_and_later_packages_arrive(make_ctx, caplog):
    caplog.set_level(logging.ERROR, logger="yoton")

    class FragileSub(yoton.SubChannel):
        def _receive(self, pkg):
            if bytes(pkg.data) == b"boom":
                raise Boom("cannot take this one")
            super()._receive(pkg)

    a, conn_a, b, _ = _connected(make_ctx)
    sub = FragileSub(b, "fragile")
    pub = yoton.PubChannel(a, "fragile")
    for message in ["one", "boom", "two", "boom", "three"]:
        pub.send(message)
    assert [sub.recv(3.0) for _ in range(3)] == ["one", "two", "three"]
    assert sub.recv(False) == ""
    assert len(_yoton_errors(caplog)) == 2
    assert conn_a.is_connected
    check_pubsub(a, b, "fragile-after")


def test_raising_signal_handler_is_logged_and_later_packages_arrive(make_ctx, caplog):
    caplog.set_level(logging.ERROR, logger="yoton")
    a, conn_a, b, conn_b = _connected(make_ctx)
    sub = yoton.SubChannel(b, "signals")
    pub = yoton.PubChannel(a, "signals")
    got: list = []

    def bad_handler(channel):
        raise Boom("signal handler")

    def good_handler(channel):
        got.extend(channel.recv_all())

    sub.received.bind(bad_handler)
    sub.received.bind(good_handler)
    pub.send("first")
    assert wait_for(lambda: got == ["first"], 3.0), got
    assert _yoton_errors(caplog)
    pub.send("second")
    pub.send("third")
    assert wait_for(lambda: got == ["first", "second", "third"], 3.0), got

    # A raising closed-handler does not stop the others.
    reasons: list = []

    def bad_closed_handler(conn, reason):
        raise Boom("closed handler")

    conn_b.closed.bind(bad_closed_handler)
    conn_b.closed.bind(lambda conn, reason: reasons.append(reason))
    conn_a.close()
    assert wait_for(lambda: reasons, 3.0)
    assert "closed handler" in {str(r.exc_info[1]) for r in _yoton_errors(caplog)}


# -- cleaning up ------------------------------------------------------------------


def test_context_close_leaves_threads_and_fds_as_before(make_ctx):
    # Warm up once: process-wide helpers may be created lazily on first use.
    a, _, b, _ = _connected(make_ctx)
    check_pubsub(a, b, "warmup")
    a.close()
    b.close()
    names = {f"yoton-io-{a.id:016x}", f"yoton-io-{b.id:016x}"}
    assert wait_for(lambda: not names & {t.name for t in threading.enumerate()}, 3.0)

    threads_before = set(threading.enumerate())
    fds_before = fd_count()

    a, conn_a, b, conn_b = _connected(make_ctx)
    check_pubsub(a, b, "cleanup")
    waiting = a.bind(BIND)  # a bind nobody connects to
    pending = a.bind(BIND)  # a bind with a client that never says hello
    silent = RawClient(pending.port1)
    halfway = a.bind(BIND)  # and one with a half-received hello
    half = RawClient(halfway.port1)
    half.send(b"YOTON!0000")
    try:
        assert set(threading.enumerate()) != threads_before
        assert fd_count() > fds_before
        b.close()
        a.close()
    finally:
        silent.close()
        half.close()
    assert not any(c.is_alive for c in (conn_a, conn_b, waiting, pending, halfway))
    assert wait_for(lambda: set(threading.enumerate()) == threads_before and fd_count() == fds_before, 3.0), (
        f"threads {sorted(t.name for t in set(threading.enumerate()) - threads_before)} left, "
        f"fds {fds_before} -> {fd_count()}"
    )

    # A closed context can be used again, and closes cleanly again.
    a2 = a.bind(BIND)
    b.connect(address(a2), timeout=2.0)
    check_pubsub(a, b, "reuse")
    a.close()
    b.close()
    assert wait_for(lambda: set(threading.enumerate()) == threads_before and fd_count() == fds_before, 3.0)


# -- big data -----------------------------------------------------------------------


def test_16mib_binary_messages_both_directions(make_ctx):
    a, _, b, _ = _connected(make_ctx)
    a2b_sub = yoton.SubChannel(b, "big-a2b", yoton.BINARY)
    b2a_sub = yoton.SubChannel(a, "big-b2a", yoton.BINARY)
    a2b_pub = yoton.PubChannel(a, "big-a2b", yoton.BINARY)
    b2a_pub = yoton.PubChannel(b, "big-b2a", yoton.BINARY)
    a2b = os.urandom(16 * MiB)
    b2a = os.urandom(16 * MiB)
    a2b_pub.send(a2b)
    b2a_pub.send(b2a)
    got_a2b = a2b_sub.recv(8.0)
    got_b2a = b2a_sub.recv(8.0)
    assert len(got_a2b) == 16 * MiB and got_a2b == a2b
    assert len(got_b2a) == 16 * MiB and got_b2a == b2a
    # The stream is still in step afterwards.
    a2b_pub.send(b"small")
    assert a2b_sub.recv(3.0) == b"small"


def test_many_1mib_messages_in_a_row_arrive_intact_and_in_order(make_ctx):
    a, _, b, _ = _connected(make_ctx)
    sub = yoton.SubChannel(b, "mib", yoton.BINARY)
    pub = yoton.PubChannel(a, "mib", yoton.BINARY)
    base = os.urandom(MiB)
    count = 60

    def message(i):
        # Every message differs (index and rotation), so swaps and tears show.
        k = (i * 7919) % MiB
        return i.to_bytes(4, "little") + (base[k:] + base[:k])[4:]

    sender = threading.Thread(target=lambda: [pub.send(message(i)) for i in range(count)])
    sender.start()
    try:
        for i in range(count):
            got = sub.recv(5.0)
            assert len(got) == MiB, f"message {i}: {len(got)} bytes"
            assert int.from_bytes(got[:4], "little") == i, (
                f"expected message {i}, got {int.from_bytes(got[:4], 'little')}"
            )
            assert got == message(i), f"message {i} corrupted"
    finally:
        sender.join(10.0)
    assert sub.recv(False) == b""


# -- process exit ----------------------------------------------------------------------


_CHILD = textwrap.dedent("""
    import sys
    import yoton

    def main(address, mode):
        ctx = yoton.Context()
        if mode == "bind-only":
            ctx.bind("127.0.0.1:0")
            print("bound", flush=True)
            return
        ctx.connect(address, timeout=3.0)
        pub = yoton.PubChannel(ctx, "exit-hello")
        sub = yoton.SubChannel(ctx, "exit-ack")
        pub.send("hello from child")
        if mode == "wait-ack":
            print("ack:", sub.recv(5.0), flush=True)
        # return without closing the context

    main(sys.argv[1], sys.argv[2])
""")


def _child_env():
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(yoton.__file__), os.pardir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(src), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("mode", ["immediate", "wait-ack"])
def test_process_with_connected_context_exits_promptly(make_ctx, mode):
    ctx = make_ctx()
    conn = ctx.bind(BIND)
    reasons: list = []
    conn.closed.bind(lambda c, reason: reasons.append(reason))
    sub = yoton.SubChannel(ctx, "exit-hello")
    pub = yoton.PubChannel(ctx, "exit-ack")
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, address(conn), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    try:
        assert sub.recv(6.0) == "hello from child"
        if mode == "wait-ack":
            pub.send("ack")
        start = time.monotonic()
        try:
            out, err = proc.communicate(timeout=3.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"child still running {time.monotonic() - start:.1f} s after it returned from main")
        assert proc.returncode == 0, err.decode()
        if mode == "wait-ack":
            assert out.decode().strip() == "ack: ack"
        assert wait_for(lambda: reasons, 3.0), "our side did not see the child go"
        assert reasons[0] in ("Closed from other end.", "Other end dropped the connection."), reasons
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_process_with_waiting_bind_exits_promptly():
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, "-", "bind-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(),
    )
    try:
        out, err = proc.communicate(timeout=6.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("child with a waiting bind did not exit")
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "bound"
    assert time.monotonic() - start < 6.0


def test_an_embedded_gui_callback_is_never_called_with_the_loop_lock_held():
    """Events posted on the loop side (a channel's ``received``) tell the GUI's
    callback only after the pass, not while the loop's lock is held: a
    callback that did yoton I/O itself would otherwise deadlock."""
    from helpers import link, wait_until

    import yoton

    a, b = yoton.Context(), yoton.Context()
    try:
        link(a, b)
        sub = yoton.SubChannel(b, "gui")
        sub.received.bind(lambda channel: None)
        loop = b.router.loop
        calls = []

        def callback():  # what a GUI's "post an event to my loop" would be
            calls.append((threading.current_thread().name, loop._lock.locked() and loop.on_loop_side()))
            yoton.call_later(yoton.process_events, 0)  # (and it runs them later)

        yoton.embed_event_loop(callback)
        try:
            pub = yoton.PubChannel(a, "gui")
            for i in range(20):
                pub.send(str(i))
                wait_until(lambda: calls, 5.0, "the callback")
                yoton.process_events(False)
                del calls[:-1]
            assert calls and not any(under_lock for _, under_lock in calls), calls
        finally:
            yoton.embed_event_loop(None)
    finally:
        a.close()
        b.close()


def _publisher_to_a_raw_peer(make_ctx):
    """A context bound for a raw peer that has done the handshake and reads only when
    the test does, with a small send buffer (it fills after some packages) and a
    BINARY publisher on slot "lone": ``(context, link, peer, publisher)``."""
    a = make_ctx()
    conn = a.bind("127.0.0.1:0")
    peer = RawClient(conn.port1)
    peer.handshake(0x0123456789ABCDEF)
    assert wait_for(lambda: conn.is_connected)
    link = conn._link
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    return a, link, peer, yoton.PubChannel(a, "lone", yoton.BINARY)


def test_lone_writes_that_meet_a_full_kernel_buffer_keep_every_byte_in_order(make_ctx):
    """A sparse send writes its package at once from the sending thread; when
    the kernel takes only part of it (the peer does not read), the rest and
    everything after it go out later, in order, from the queue."""
    from transport_util import pubsub_slot

    a, link, peer, pub = _publisher_to_a_raw_peer(make_ctx)
    bodies = [bytes([i % 251]) * 60_000 for i in range(30)]
    lone = 0
    for body in bodies:
        a.router._pump_after = link._direct_after = 0.0  # (every send sparse: the short way if idle)
        queued_before = len(link.sendq) + link.unwritten()
        pub.send(body)
        lone += queued_before == 0 and len(link.sendq) == 0
    assert lone and len(link.sendq) + link.unwritten() > 0  # (the short way first; then the kernel filled up)
    slot = pubsub_slot("lone", "bin")
    got = []
    while len(got) < len(bodies):
        fields, body = peer.read_package(10.0)
        if fields[1] == slot:
            got.append((fields[3], body))
    seqs = [seq for seq, _ in got]
    assert seqs == list(range(seqs[0], seqs[0] + len(bodies)))
    assert [body for _, body in got] == bodies


class _SocketWithHook:
    """A link's real socket, calling ``hook()`` in the sending thread right after
    a ``send`` or ``sendmsg`` the kernel took only part of (where a signal handler may run)."""

    def __init__(self, sock, hook):
        self._sock, self._hook = sock, hook

    def send(self, data, *flags):
        return self._after(self._sock.send(data, *flags), len(data))

    def sendmsg(self, buffers, *args):
        buffers = list(buffers)
        return self._after(self._sock.sendmsg(buffers, *args), sum(map(len, buffers)))

    def _after(self, sent, size):
        if sent < size and self._hook is not None:
            hook, self._hook = self._hook, None
            hook()
        return sent

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_send_from_a_signal_handler_right_after_a_partial_lone_write_goes_after_its_rest(make_ctx):
    """A signal handler (here SIGUSR1's) runs in the main thread between two
    bytecodes, also inside a send that holds the write lock: a package it sends
    right after the kernel took part of a lone write must not be written into
    the middle of that package (the stream would be corrupt)."""
    import signal

    from transport_util import pubsub_slot

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python runs signal handlers in the main thread only")
    a, link, peer, pub = _publisher_to_a_raw_peer(make_ctx)
    router = a.router
    nested = b"from the handler" * 10
    handled = []

    def handler(signum, frame):  # (sparse: past both gaps, as a handler that does some work first)
        while time.monotonic() < max(link._direct_after, router._pump_after):
            pass
        pub.send(nested)
        handled.append(True)

    link.sock = _SocketWithHook(link.sock, lambda: signal.raise_signal(signal.SIGUSR1))
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        bodies = []
        for i in range(40):
            assert wait_for(lambda: not link.sendq and not link.unwritten())  # (idle: the short way)
            router._pump_after = link._direct_after = 0.0
            bodies.append(bytes([i + 1]) * 60_000)
            pub.send(bodies[-1])
            if handled:
                break
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert handled, "no lone write was partial"
    expected = bodies[:-1] + [bodies[-1], nested]
    slot = pubsub_slot("lone", "bin")
    got = []
    while len(got) < len(expected):
        fields = HEADER.unpack(peer.read_exact(HEADER.size, 10.0))
        assert fields[0] == CONTROL, f"the stream is corrupt after {len(got)} of {len(expected)} packages"
        body = peer.read_exact(fields[6], 10.0)
        if fields[1] == slot:
            got.append(body)
    assert got == expected


def test_teardown_waits_for_a_direct_write_before_it_closes_the_socket(make_ctx):
    """A sending thread writing to the socket itself holds the writer's lock;
    the loop side's teardown must not close the socket under it (its number
    could be reused by the next socket opened, and the write land there)."""
    a, link, peer, pub = _publisher_to_a_raw_peer(make_ctx)
    sock = link.sock
    holding, release = threading.Event(), threading.Event()

    def writer():  # (stands for a direct write in progress)
        with link._wlock:
            holding.set()
            release.wait(10)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert holding.wait(5)
    peer.close()  # (the loop side finds the peer gone and tears the link down)
    try:
        loop = a.router.loop
        assert wait_for(lambda: link not in loop.housekeepers)  # (the teardown has begun)
        end = time.monotonic() + 0.1  # (and must not get to the close while the lock is held)
        while time.monotonic() < end:
            assert sock.fileno() != -1, "the socket was closed while a write held the writer's lock"
    finally:
        release.set()
        t.join(5)
    assert wait_for(lambda: sock.fileno() == -1)


def _relay_between_raw_peers(make_ctx):
    """A context bound for two raw peers (handshakes done): what one sends, it
    passes on to the other. ``(context, sender, receiver, receiver's link)``."""
    relay = make_ctx()
    conn = relay.bind("127.0.0.1:0", max_connections=2)
    sender = RawClient(conn.port1)
    sender.handshake(0x1111111111111111)
    assert wait_for(lambda: len(relay.router._live) == 1)
    receiver = RawClient(conn.port1)
    receiver.handshake(0x2222222222222222)
    assert wait_for(lambda: len(relay.router._live) == 2)
    link = next(lk for lk in relay.router._live if lk.peer_id == 0x2222222222222222)
    return relay, sender, receiver, link


def _raw_package(slot, seq, body):
    return HEADER.pack(CONTROL, slot, 0x1111111111111111, seq, 0, 0, len(body)) + body


def test_a_relay_passes_a_package_on_at_once_without_its_queue(make_ctx, monkeypatch):
    """On an idle link, the loop side writes what it passes on in the same
    pass (the round trip through a relay), not through the send queue."""
    from transport_util import pubsub_slot

    relay, sender, receiver, link = _relay_between_raw_peers(make_ctx)
    queued = []
    queue_type = type(link.sendq)
    extend = queue_type.extend

    def watched(queue, items, total):
        if queue is link.sendq:
            queued.append(len(items))
        return extend(queue, items, total)

    monkeypatch.setattr(queue_type, "extend", watched)
    slot = pubsub_slot("relayed", "bin")
    for seq in range(1, 6):
        link._direct_after = 0.0  # (sparse: past the gap)
        sender.send(_raw_package(slot, seq, b"hop %d" % seq))
        while True:
            fields, body = receiver.read_package(5.0)
            if fields[1] == slot:
                break
        assert (fields[3], body) == (seq, b"hop %d" % seq)
    assert queued == []


def test_a_relay_writing_into_a_full_kernel_buffer_keeps_every_byte_in_order(make_ctx):
    """Passed on in the same pass while the receiver does not read: once the
    kernel takes only part of a write, the rest and what follows go out
    later, in order, through the queue."""
    from transport_util import pubsub_slot

    relay, sender, receiver, link = _relay_between_raw_peers(make_ctx)
    link.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    slot = pubsub_slot("relayed", "bin")
    bodies = [bytes([i % 251]) * 50_000 for i in range(40)]
    for seq, body in enumerate(bodies, 1):
        sender.send(_raw_package(slot, seq, body))
    assert wait_for(lambda: link.unwritten() or link.sendq)  # (the kernel is full: the rest waits)
    got = []
    while len(got) < len(bodies):
        fields, body = receiver.read_package(10.0)
        if fields[1] == slot:
            got.append((fields[3], body))
    assert got == list(enumerate(bodies, 1))


def test_a_write_left_waiting_before_the_socket_is_served_goes_out_once_it_can(make_ctx, monkeypatch):
    """A connect's link is in use (direct writes from the sending thread) before its
    loop serves the socket; a write that met a full kernel buffer meanwhile left its
    rest waiting for 'writable'. Serving the socket must then watch for that too:
    else the rest sits until the next send (and flush() times out)."""
    from yoton.transport.stream import StreamLink
    from yoton.wire.frames import pack_header

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    slot, body, count = 0x5EED, b"z" * 4000, 0
    frames: list = []

    def accept():
        conn, _ = server.accept()
        frames.append(conn)
        peer = RawClient.__new__(RawClient)
        peer.sock, peer.buffer = conn, b""
        peer.read_line()  # (the client's hello)
        conn.sendall(b"YOTON!%016x.%d\r\n" % (0x0123456789ABCDEF, 4242))
        frames.append(peer)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    real_start_io = StreamLink.start_io

    def start_io_after_a_full_kernel(self):
        # What a sending thread's write leaves when the kernel takes part of it
        # before the loop serves the socket: the rest in the buffers, waiting.
        nonlocal count
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        with self._wlock:
            while True:
                count += 1
                frame = pack_header(slot, 7, count, 0, 0, len(body)) + body
                try:
                    sent = self.sock.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent < len(frame):
                    self._wbufs.append(frame[sent:])
                    self._wbytes += len(frame) - sent
                    self._want_write = True
                    break
        real_start_io(self)

    monkeypatch.setattr(StreamLink, "start_io", start_io_after_a_full_kernel)
    a = make_ctx()
    a.connect(f"127.0.0.1:{port}", timeout=5)
    assert wait_for(lambda: count > 0)  # (the loop serves the socket now)
    acceptor.join(5)
    peer = frames[1]
    got = []
    while len(got) < count:
        fields, data = peer.read_package(5.0)  # (the rest never came before: nobody watched for 'writable')
        if fields[1] == slot:
            got.append((fields[3], data))
    assert [seq for seq, _ in got] == list(range(1, count + 1)) and all(data == body for _, data in got)
    frames[0].close()
    server.close()
