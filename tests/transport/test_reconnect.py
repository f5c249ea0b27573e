"""Reconnecting: connect(..., reconnect=...) survives losing its peer.

The far end is a real process that is killed and started again on the same
address (tests/peer.py through PeerProcess), a relay in this process that
cuts the network and heals it (silence, not a closed socket), or two
network namespaces whose link goes down and up again. Every wait is on a
condition with a deadline.
"""

from __future__ import annotations

import logging
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time

import pytest
from helpers import record
from interop_helpers import PeerProcess, killed_and_restarted
from transport_util import HOST, Netns, free_port, wait_for

import yoton
from yoton import ReconnectPolicy

pytestmark = pytest.mark.timeout(60)

QUICK = ReconnectPolicy(initial_delay=0.02, max_delay=0.2, attempt_timeout=1.0)


@pytest.fixture
def short_dir():
    """A directory with a short path (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="yt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- the policy ---------------------------------------------------------------------------------


def test_policy_delays_grow_to_the_cap_with_jitter_and_bad_values_are_refused():
    policy = ReconnectPolicy(initial_delay=0.1, max_delay=1.0, factor=2, jitter=0.5)
    assert [policy.delay(k, rand=lambda: 0.0) for k in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert [policy.delay(k, rand=lambda: 1.0) for k in range(3)] == [0.05, 0.1, 0.2]
    assert policy.delay(10_000, rand=lambda: 0.0) == 1.0
    assert ReconnectPolicy.from_option(True) == ReconnectPolicy()
    assert ReconnectPolicy.from_option(False) is None and ReconnectPolicy.from_option(policy) is policy
    for bad in (
        dict(initial_delay=-1),
        dict(max_delay=float("inf")),
        dict(initial_delay=2.0, max_delay=1.0),
        dict(factor=0.5),
        dict(jitter=1.5),
        dict(attempt_timeout=0),
        dict(give_up_after="soon"),
        dict(dead_after=0),
    ):
        with pytest.raises(ValueError):
            ReconnectPolicy(**bad)
    with pytest.raises(ValueError, match="reconnect must be"):
        ReconnectPolicy.from_option("yes")


def test_reconnect_is_refused_where_it_does_not_apply(make_ctx):
    with pytest.raises(ValueError, match="reconnect does not apply"):
        make_ctx().connect("itc://nowhere", timeout=0.1, reconnect=True)


# -- the bind's process killed and started again ------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "ipc"])
def test_bind_process_killed_and_restarted_on_the_same_address(scheme, short_dir):
    if scheme == "ipc" and not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets here")
    addr = f"localhost:{free_port()}" if scheme == "tcp" else f"ipc://{short_dir}/peer.sock"
    killed_and_restarted("ours", addr, QUICK)


# -- what is not a loss, and giving up ------------------------------------------------------------


def test_an_orderly_close_by_the_peer_is_final(pair):
    a, b, conn_a, conn_b = pair()
    other = b.connect(f"{HOST}:{a.bind(f'{HOST}:0').port}", timeout=3.0, reconnect=QUICK)
    closed = record(other.closed)
    assert wait_for(lambda: a.connection_count == 2)
    a.connections[-1].close()
    assert wait_for(lambda: closed, 3.0)
    assert closed[0][2] == "Closed from other end." and not other.is_alive and not other.is_reconnecting


def test_a_send_between_losing_the_socket_and_the_state_change_is_queued_not_raised(make_ctx):
    """lost() and resume() drop the socket before the state leaves CONNECTED:
    a sending thread's direct write in that gap must leave its package queued
    (it went out with an AssertionError and the package stayed in a buffer the
    next drop threw away)."""
    server, client = make_ctx(), make_ctx()
    first = server.bind(f"{HOST}:0")
    conn = client.connect(f"{HOST}:{first.port}", timeout=3.0, reconnect=QUICK)
    pub, sub = yoton.PubChannel(client, "gap"), yoton.SubChannel(server, "gap")
    pub.send("before")
    assert sub.recv(3.0) == "before"
    link = conn._link
    with link._wlock:  # (as _drop_socket leaves it: no socket, state still CONNECTED)
        sock, link.sock = link.sock, None
    try:
        link._direct_after = 0.0
        pub.send("in the gap")  # (the direct write sees no socket and leaves it to the loop side)
    finally:
        with link._wlock:
            link.sock = sock
    link.kick_writer()
    assert sub.recv(3.0) == "in the gap"


def test_gives_up_after_give_up_after_and_closes_saying_why(make_ctx):
    a, b = make_ctx(), make_ctx()
    bound = a.bind(f"{HOST}:0")
    policy = ReconnectPolicy(initial_delay=0.02, max_delay=0.1, give_up_after=0.5)
    conn = b.connect(f"{HOST}:{bound.port}", timeout=3.0, reconnect=policy)
    assert wait_for(lambda: bound.is_connected)
    closed = record(conn.closed)
    t0 = time.monotonic()
    bound.close_on_problem()  # dropped without a goodbye; the bind served its one peer: nobody listens now
    assert wait_for(lambda: conn.is_reconnecting, 3.0)
    assert wait_for(lambda: closed, 5.0), "it never gave up"
    took = time.monotonic() - t0
    reason = closed[0][2]
    assert reason.startswith(f"Gave up reconnecting to 127.0.0.1:{bound.port} after ") and "attempts" in reason
    # (the loss: the end of the stream, or a reset when our heartbeat was unread)
    assert "Connection refused" in reason and ("Other end dropped the connection" in reason or "reset" in reason)
    assert 0.5 <= took < 3.0, took
    assert not conn.is_alive and len(closed) == 1


def test_close_while_reconnecting_stops_redialling(make_ctx):
    a, b = make_ctx(), make_ctx()
    bound = a.bind(f"{HOST}:0")
    port = bound.port
    conn = b.connect(f"{HOST}:{port}", timeout=3.0, reconnect=QUICK)
    closed = record(conn.closed)
    assert wait_for(lambda: bound.is_connected)
    yoton.PubChannel(b, "x").send("queued")
    bound.close_on_problem()
    assert wait_for(lambda: conn.is_reconnecting, 3.0)
    conn.close()
    assert wait_for(lambda: closed, 3.0) and [e[2] for e in closed] == ["Closed on command."]
    # nobody dials any more: a bind on that port now gets no peer
    again = make_ctx().bind(f"{HOST}:{port}")
    time.sleep(0.5)  # (several re-dial periods of QUICK: what must NOT happen)
    assert again.is_waiting and not conn.is_alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs 127.0.0.2 on the loopback (Linux)")
def test_a_host_name_is_looked_up_again_before_each_redial(make_ctx, monkeypatch, caplog):
    # The host moves (a new address, as after a DHCP lease or a DNS change):
    # the re-dial must reach it there, not keep dialling where it was.
    real = socket.getaddrinfo
    where = {"ip": HOST}
    looked_up = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "moving.yoton.invalid":
            looked_up.append(threading.current_thread().name)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (where["ip"], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    old_home, client = make_ctx(), make_ctx()
    first = old_home.bind(f"{HOST}:0")
    port = first.port
    conn = client.connect(f"moving.yoton.invalid:{port}", timeout=3.0, reconnect=QUICK)
    assert wait_for(lambda: first.is_connected) and conn.hostname2 == HOST
    new_home = make_ctx()
    second = new_home.bind(f"127.0.0.2:{port}")
    sub = yoton.SubChannel(new_home, "moved")
    where["ip"] = "127.0.0.2"
    with caplog.at_level(logging.INFO, logger="yoton"):
        first.close_on_problem()  # (lost without a goodbye; nobody listens at the old address now)
        assert wait_for(lambda: second.is_connected, 5.0), "the re-dial never reached the new address"
    assert wait_for(lambda: conn.is_connected, 3.0)
    yoton.PubChannel(client, "moved").send("found you")
    assert sub.recv(3.0) == "found you"
    # (on the loop side's behalf, never in it: a lookup may take seconds)
    assert looked_up[0] == "MainThread" and set(looked_up[1:]) == {"yoton-lookup"}
    assert f"moving.yoton.invalid:{port} is now at 127.0.0.2" in caplog.text


@pytest.fixture
def linked_by_a_name_that_stops_answering(make_ctx, monkeypatch):
    """``link(policy)`` -> ``(bound, conn)``: ``conn`` connected, with ``policy``, through a host
    name for 127.0.0.1 whose lookups after the first hang (until the test ends)."""
    real, calls, release = socket.getaddrinfo, [], threading.Event()

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "hanging.yoton.invalid":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        if len(calls) > 1:
            release.wait(30)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (HOST, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def link(policy):
        bound = make_ctx().bind(f"{HOST}:0")
        conn = make_ctx().connect(f"hanging.yoton.invalid:{bound.port}", timeout=3.0, reconnect=policy)
        assert wait_for(lambda: bound.is_connected)
        return bound, conn

    yield link
    release.set()


def test_a_lookup_that_hangs_leaves_the_address_found_last(make_ctx, linked_by_a_name_that_stops_answering):
    # A DNS server that does not answer during an outage must not stop the
    # re-dials: after attempt_timeout the address found last is dialled.
    policy = ReconnectPolicy(initial_delay=0.02, max_delay=0.2, attempt_timeout=0.3)
    first, conn = linked_by_a_name_that_stops_answering(policy)
    first.close_on_problem()
    assert wait_for(lambda: conn.is_reconnecting, 3.0)
    again = make_ctx().bind(f"{HOST}:{first.port}")
    assert wait_for(lambda: again.is_connected and conn.is_connected, 5.0), "stuck behind the lookup"


def test_give_up_after_holds_while_a_lookup_hangs(linked_by_a_name_that_stops_answering):
    policy = ReconnectPolicy(initial_delay=0.02, max_delay=0.1, attempt_timeout=0.3, give_up_after=0.5)
    first, conn = linked_by_a_name_that_stops_answering(policy)
    closed = record(conn.closed)
    t0 = time.monotonic()
    first.close_on_problem()  # (nobody listens there any more)
    assert wait_for(lambda: closed, 5.0), "it never gave up"
    assert time.monotonic() - t0 < 2.5 and closed[0][2].startswith("Gave up reconnecting")


def test_a_redial_without_a_thread_for_the_lookup_dials_the_address_found_last(make_ctx, monkeypatch):
    from yoton.transport import stream

    server, client = make_ctx(), make_ctx()
    first = server.bind(f"{HOST}:0")
    conn = client.connect(f"{HOST}:{first.port}", timeout=3.0, reconnect=QUICK)
    assert wait_for(lambda: first.is_connected)
    conn._link.target.name = ("unreachable.yoton.invalid", first.port)  # (as if connected by name)

    class NoThread(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")

    successor = make_ctx()
    successor.bind(f"{HOST}:0")  # (its I/O thread starts now: no thread can start below)
    monkeypatch.setattr(stream.threading, "Thread", NoThread)
    first.close_on_problem()
    assert wait_for(lambda: conn.is_reconnecting, 3.0)
    again = successor.bind(f"{HOST}:{first.port}")
    assert wait_for(lambda: again.is_connected and conn.is_connected, 5.0)


def test_an_ip_address_is_dialled_again_without_a_lookup(make_ctx, monkeypatch):
    server, client = make_ctx(), make_ctx()
    first = server.bind(f"{HOST}:0")
    conn = client.connect(f"{HOST}:{first.port}", timeout=3.0, reconnect=QUICK)
    assert wait_for(lambda: first.is_connected)
    assert conn._link.target.name is None
    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: looked_up.append(a) or [])
    first.close_on_problem()
    assert wait_for(lambda: conn.is_reconnecting, 3.0)
    again = make_ctx().bind(f"{HOST}:{first.port}")
    assert wait_for(lambda: again.is_connected and conn.is_connected, 5.0)
    assert looked_up == []


# -- an outage with a full queue ------------------------------------------------------------------


def test_an_outage_longer_than_the_queue_stalls_discards_counted_and_delivers_the_rest_in_order(make_ctx, caplog):
    kib = 1024
    a = make_ctx(queue_params=(100_000, "old"))
    port = a.bind(f"{HOST}:0").port
    b = make_ctx(max_queue_bytes=64 * kib)  # (old, the default discard mode)
    conn = b.connect(f"{HOST}:{port}", timeout=3.0, reconnect=QUICK)
    assert wait_for(lambda: a.connection_count == 1)
    reconnected = record(conn.reconnected)
    pub = yoton.PubChannel(b, "outage", yoton.BINARY)
    a.connections[0].close_on_problem()
    a.close()  # (nobody listens until a new bind comes)
    assert wait_for(lambda: conn.is_reconnecting, 3.0)

    n, body = 400, b"x" * 1000  # 400 KB into a 64 KiB queue
    sent = threading.Event()

    def send_all():
        for i in range(n):
            pub.send(i.to_bytes(4, "little") + body)  # blocking sends
        sent.set()

    with caplog.at_level(logging.WARNING, logger="yoton"):
        t0 = time.monotonic()
        threading.Thread(target=send_all, daemon=True).start()
        # the senders wait for room at most the connection's timeout, then the queue discards
        assert sent.wait(conn.timeout + 5.0), "a sender was held up by a connection that is not there"
        took = time.monotonic() - t0
    assert any("discarding the oldest" in r.getMessage() for r in caplog.records), caplog.text
    discarded = b.statistics()["discarded_outgoing"]
    assert discarded > 0 and conn.statistics()["stalled"]

    c = make_ctx(queue_params=(100_000, "old"))
    sub = yoton.SubChannel(c, "outage", yoton.BINARY)
    c.bind(f"{HOST}:{port}")
    assert wait_for(lambda: reconnected, 5.0)
    got: list = []
    assert wait_for(lambda: got.extend(sub.recv_all()) or (got and got[-1][:4] == (n - 1).to_bytes(4, "little")), 5.0)
    numbers = [int.from_bytes(m[:4], "little") for m in got]
    assert numbers == sorted(set(numbers)), "repeated or out of order"
    assert numbers[-1] == n - 1 and len(numbers) + discarded == n, (len(numbers), discarded)
    print(f"{n} sent during the outage in {took:.2f} s; {discarded} discarded, {len(numbers)} delivered after")


# -- silence: a cut network that heals ------------------------------------------------------------


class Relay:
    """A TCP relay in this process between clients and a port; :meth:`cut` makes every
    stream through it go silent for ever (as if the path lost them), new ones too,
    until :meth:`heal`: then new streams flow again."""

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.cutting = False
        self.streams: list = []  # [client, upstream, {"dead": bool}]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        self.listener.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection((HOST, self.target))
            stream = [client, upstream, {"dead": self.cutting}]
            self.streams.append(stream)
            thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, stream):
        client, upstream, state = stream
        other = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while not self.stopping.is_set():
                if state["dead"]:  # (read nothing, send nothing: the data is lost on the way)
                    self.stopping.wait(0.05)
                    continue
                for key, _ in sel.select(0.05):
                    try:
                        data = key.fileobj.recv(65536)
                        if not data:
                            other[key.fileobj].shutdown(socket.SHUT_WR)
                            sel.unregister(key.fileobj)
                            continue
                        other[key.fileobj].sendall(data)
                    except OSError:
                        return

    def cut(self):
        self.cutting = True
        for stream in list(self.streams):
            stream[2]["dead"] = True

    def heal(self):
        self.cutting = False  # (the streams cut stay dead: new ones flow)

    def close(self):
        self.stopping.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(2.0)
        for client, upstream, _ in self.streams:
            client.close()
            upstream.close()


def test_a_silent_peer_is_redialled_and_a_many_peer_bind_keeps_the_same_connection(make_ctx):
    server = make_ctx()
    first = server.bind(f"{HOST}:0", max_connections=None)
    accepted = record(first.accepted)
    relay = Relay(first.port)
    try:
        client = make_ctx()
        policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.2, attempt_timeout=0.5, dead_after=1.0)
        conn = client.connect(f"{HOST}:{relay.port}", timeout=3.0, reconnect=policy)
        assert wait_for(lambda: first.is_connected)
        ours, theirs = record(conn.reconnected), record(first.reconnected)
        closed = record(conn.closed), record(first.closed)
        up, up_sub = yoton.PubChannel(client, "up"), yoton.SubChannel(server, "up")
        down, down_sub = yoton.PubChannel(server, "down"), yoton.SubChannel(client, "down")
        up.send("u0")
        down.send("d0")
        assert up_sub.recv(3.0) == "u0" and down_sub.recv(3.0) == "d0"

        relay.cut()
        t_cut = time.monotonic()
        assert wait_for(lambda: conn.is_reconnecting, 5.0), "silence did not count as a loss"
        noticed = time.monotonic() - t_cut
        assert first.is_connected  # (the bind has not noticed: a cut looks like silence)
        for i in range(1, 101):
            up.send(f"u{i}")
            down.send(f"d{i}")
        time.sleep(0.3)  # (let a re-dial or two time out into the cut network)
        relay.heal()
        assert wait_for(lambda: ours and theirs, 5.0), "no re-dial, or the bind did not take it"
        # the bind's connection took the re-dial: the same connection, no new peer
        assert first.is_connected and server.connection_count == 1 and len(accepted) == 1
        assert first.id2 == client.id and first.statistics()["reconnects"] == 1
        got = [up_sub.recv(3.0) for _ in range(100)]
        assert got == [f"u{i}" for i in range(1, 101)], "what was queued during the cut did not all arrive in order"
        # what the bind had already written into the dead stream is lost; the rest comes in order
        down.send("d-after")
        came: list = []
        assert wait_for(lambda: came.extend(down_sub.recv_all()) or (came and came[-1] == "d-after"), 3.0)
        numbers = [int(m[1:]) for m in came[:-1]]
        assert numbers == sorted(set(numbers)), came
        assert closed == ([], [])
        print(f"the loss was noticed {noticed:.2f} s after the cut; {len(numbers)} of 100 d's survived")
    finally:
        relay.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces")
def test_network_cut_between_two_hosts_heals_by_redialling_without_loss_or_disorder():
    net = Netns()
    peers: list = []
    try:
        net.setup()
        host_a = PeerProcess("ours", "host-a", prefix=net.prefix(net.ns_a))
        peers.append(host_a)
        host_b = PeerProcess("ours", "host-b", prefix=net.prefix(net.ns_b))
        peers.append(host_b)
        port = host_a.call("bind", addr=f"{net.ADDR_A}:0", max_connections=None)["port"]
        policy = {"initial_delay": 0.05, "max_delay": 0.3, "attempt_timeout": 0.5, "dead_after": 1.0}
        assert host_b.call("connect", addr=f"{net.ADDR_A}:{port}", timeout=5.0, reconnect=policy)["is_connected"]
        host_a.call("sub", slot="cut", type="txt")
        host_b.call("stream_start", slot="cut", interval=0.005)
        assert len(host_a.call("recv_n", slot="cut", type="txt", n=20, timeout=5.0)["msgs"]) == 20

        net.link(up=False)
        lost = host_b.call("wait_reconnecting", conn=0, timeout=5.0)
        assert lost["ok"], "host-b did not count the silence as a loss"
        time.sleep(0.5)  # (an outage with re-dials that fail)
        net.link(up=True)
        assert host_b.call("reconnected_events", count=1, timeout=10.0)["events"], "no re-dial after the cut healed"
        sent = host_b.call("stream_stop")["sent"]
        got = host_a.call("drain", slot="cut", type="txt", quiet=1.0, max_time=10.0)["msgs"]
        numbers = [int(m) for m in got]
        assert numbers == sorted(set(numbers)), "repeated or out of order"
        assert numbers[-1] == sent - 1, (numbers[-10:], sent)
        # everything sent after the loss was noticed arrived (what the dead stream held is lost)
        missing = set(range(lost["sent"], sent)) - set(numbers)
        assert not missing, f"{len(missing)} sent during the outage did not arrive"
        print(f"{sent} sent; {sent - 20 - len(numbers)} lost with the cut stream; loss noticed at {lost['sent']}")
        assert host_a.call("info")["connection_count"] == 1
    finally:
        for peer in peers:
            peer.close()
        net.cleanup()
