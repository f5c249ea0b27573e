"""Faults of the NATS transport: no server, bad arguments, a server that dies and comes back."""

from __future__ import annotations

import socket
import time

import pytest
from helpers import wait_until

import yoton
from yoton.transport import nats as nats_transport

pytestmark = pytest.mark.timeout(60)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # (nothing listens there once closed)


def test_no_server_raises_connect_error_naming_the_servers_within_the_timeout(ctx):
    c = ctx()
    urls = [f"nats://127.0.0.1:{_dead_port()}", f"nats://127.0.0.1:{_dead_port()}"]
    t0 = time.monotonic()
    with pytest.raises(yoton.ConnectError) as info:
        c.connect(",".join(urls), timeout=0.5)
    elapsed = time.monotonic() - t0
    assert elapsed < 3.0
    for url in urls:
        assert url in str(info.value)
    assert "0.5 s" in str(info.value)
    assert c.connection_count == 0 and len(c.connections_all) == 0
    # the context goes on: a later connect works as usual
    assert c.statistics()["discarded_outgoing"] == 0


def test_bad_arguments(ctx, nats_server):
    c = ctx()
    with pytest.raises(ValueError, match="network"):
        c.connect(nats_server.url, network="a.b")
    with pytest.raises(ValueError, match="empty server"):
        c.connect("nats://127.0.0.1:4222,,nats://127.0.0.1:4223")
    with pytest.raises(ValueError, match="nats://"):
        c.connect("nats://127.0.0.1:4222,tcp://127.0.0.1:4223")
    # an option the transport does not take is a ValueError, as for every scheme (transport/schemes.py)
    with pytest.raises(ValueError, match="no_such_option"):
        c.connect(nats_server.url, no_such_option=1)
    with pytest.raises(ValueError, match="no_echo: set by yoton"):
        c.connect(nats_server.url, no_echo=False)  # (the link sets it)
    with pytest.raises(ValueError, match="NATS reconnects by itself.*max_reconnect_attempts"):
        c.connect(nats_server.url, reconnect=True)
    with pytest.raises(ValueError, match="network does not apply"):
        c.connect("127.0.0.1:4222", network="x")  # (options are for nats:// only)
    with pytest.raises(ValueError, match="nats"):
        c.bind("nats://127.0.0.1:4222")
    assert len(c.connections_all) == 0


def test_without_nats_py_connect_says_what_to_install(ctx, monkeypatch):
    monkeypatch.setattr(nats_transport, "_MISSING", ImportError("No module named 'nats'"))
    with pytest.raises(yoton.ConnectError, match=r"pip install 'yoton\[nats\]'"):
        ctx().connect("nats://127.0.0.1:4222")


class _NoHook:
    pass


class _SyncHook:
    def _process_msg(self, sid, subject, reply, data, headers):
        pass


class _OtherHook:
    async def _process_msg(self, sid, subject, reply, data, headers, extra):
        pass


@pytest.mark.parametrize("client", [_NoHook, _SyncHook, _OtherHook])
def test_a_nats_py_whose_message_hook_changed_is_a_connect_error(ctx, monkeypatch, client):
    # The link overrides nats-py's private Client._process_msg: a release that
    # changed it is refused at connect time, saying so, before any connection.
    monkeypatch.setattr(nats_transport, "_NatsClient", client)
    c = ctx()
    with pytest.raises(yoton.ConnectError, match=r"nats-py .* is not supported .*_process_msg"):
        c.connect("nats://127.0.0.1:4222")
    assert len(c.connections_all) == 0


def test_the_extras_pin_nats_py_below_its_next_major():
    # (the message hook above is nats-py's private API: a new major is tested before it is allowed)
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    import importlib.metadata
    import pathlib

    pyproject = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    installed = int(importlib.metadata.version("nats-py").split(".")[0])
    for extra in ("nats", "dev"):
        (spec,) = [r for r in extras[extra] if r.replace(" ", "").startswith("nats-py")]
        upper = [part for part in spec.replace(" ", "")[len("nats-py") :].split(",") if part.startswith("<")]
        assert upper, f"the {extra} extra does not bound nats-py: {spec!r}"
        assert installed < int(upper[0].lstrip("<").split(".")[0]), (spec, installed)


def test_core_imports_nothing_of_nats():
    import subprocess
    import sys

    code = (
        "import sys, yoton\n"
        "c = yoton.Context(); c.bind('127.0.0.1:0'); c.close()\n"
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', 'yoton.transport.nats'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_server_dies_sends_are_held_then_go_out_after_it_is_back(nats_servers, nats_ctx):
    server = nats_servers(jetstream=False)
    a, ca = nats_ctx(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    pub = yoton.PubChannel(a, "held")
    timedout, closed = [], []
    ca.timedout.bind(lambda conn, flag: timedout.append(flag))
    ca.closed.bind(lambda conn, reason: closed.append(reason))
    # (what the context says on a new link must be out first, or it counts among the held)
    wait_until(lambda: ca.statistics()["queued_packages"] == 0, 5, "the start-up messages to go out")
    server.stop()
    wait_until(lambda: ca.server == "", 5, "the link to notice")
    for i in range(50):
        pub.send(str(i))
    assert a.statistics()["queued_bytes"] > 0  # (numbers and queues what the senders staged)
    stats = ca.statistics()
    assert stats["queued_packages"] == 50 and stats["discarded"] == 0  # held, not lost
    wait_until(lambda: timedout == [True], 5, "timedout(True): the server does not answer", pump=True)
    assert ca.is_connected and ca.is_timedout  # (still the same connection: it reconnects)
    out_before = stats["bytes_out"]
    server.start()
    wait_until(lambda: ca.statistics()["reconnects"] == 1, 10, "the reconnect")
    wait_until(lambda: ca.statistics()["queued_packages"] == 0, 5, "the held packages to go out")
    assert ca.statistics()["bytes_out"] > out_before
    wait_until(lambda: timedout == [True, False], 5, "timedout(False): the server answers again", pump=True)
    assert closed == [] and ca.is_connected
    assert ca.server == server.url


def test_a_full_send_queue_while_down_holds_senders_then_stalls(nats_servers, nats_ctx):
    server = nats_servers(jetstream=False)
    a, ca = nats_ctx(server.url, context_kwargs={"max_queue_bytes": 20_000}, max_reconnect_attempts=-1)
    pub = yoton.PubChannel(a, "full")
    server.stop()
    wait_until(lambda: ca.server == "", 5, "the link to notice")
    with pytest.raises(yoton.WouldBlock):  # backpressure: nothing dropped silently
        for _ in range(1000):
            pub.send("x" * 100, block=False)
    # after the connection's timeout without progress it is stalled: senders go on, the queue discards (counted)
    wait_until(lambda: ca.statistics()["stalled"], 5, "the stall")
    for _ in range(300):
        pub.send("y" * 100, block=False)
    assert ca.statistics()["discarded"] > 0
    assert a.statistics()["discarded_outgoing"] > 0


def test_nats_gives_up_reconnecting_closed_says_why(nats_servers, nats_ctx):
    server = nats_servers(jetstream=False)
    a, ca = nats_ctx(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=2)
    closed = []
    ca.closed.bind(lambda conn, reason: closed.append(reason))
    server.stop()
    wait_until(lambda: closed, 10, "the closed signal", pump=True)
    assert len(closed) == 1 and closed[0].startswith("NATS connection closed")
    assert not ca.is_alive and a.connection_count == 0 and ca.close_reason == closed[0]


def test_close_while_the_server_is_down_returns_promptly(nats_servers, nats_ctx):
    server = nats_servers(jetstream=False)
    a, ca = nats_ctx(server.url, max_reconnect_attempts=-1)
    pub = yoton.PubChannel(a, "gone")
    server.stop()
    wait_until(lambda: ca.server == "", 5, "the link to notice")
    pub.send("never delivered")
    t0 = time.monotonic()
    ca.close()
    # (about CLOSE_FLUSH_TIME plus nats-py's own close; the bound is loose for a loaded machine,
    # yet far below a close that waits for a server that never comes back)
    assert time.monotonic() - t0 < 8.0
    assert ca.close_reason == "Closed on command." and not ca.is_alive
    # (counted, never written; a context message queued meanwhile may be counted with it)
    assert ca.statistics()["discarded"] >= 1


def test_credentials_go_as_nats_options(nats_servers, ctx):
    server = nats_servers(jetstream=False, extra='authorization { user: alice, password: "s3cret" }')
    a, b = ctx(), ctx()
    a.connect(server.url, timeout=5, user="alice", password="s3cret", network="auth")
    b.connect(server.url, timeout=5, user="alice", password="s3cret", network="auth")
    sub, pub = yoton.SubChannel(b, "x"), yoton.PubChannel(a, "x")
    pub.send("hello")
    assert sub.recv(block=5) == "hello"
    # (the server answers "-ERR 'Authorization Violation'" and closes: on a loaded machine the
    # client may meet the close first, and then reports the reset)
    with pytest.raises(yoton.ConnectError, match="(?i)authorization|connection reset"):
        ctx().connect(server.url, timeout=1, user="alice", password="wrong")


def test_tls_to_the_server_with_an_ssl_context(nats_servers, ctx, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    tls = (
        f'tls {{ cert_file: "{(tmp_path / "cert.pem").as_posix()}", key_file: "{(tmp_path / "key.pem").as_posix()}" }}'
    )
    server = nats_servers(jetstream=False, extra=tls)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    a, b = ctx(), ctx()
    a.connect(server.url, timeout=5, ssl_context=client, network="tls")
    b.connect(server.url, timeout=5, ssl_context=client, network="tls")
    sub, pub = yoton.SubChannel(b, "x"), yoton.PubChannel(a, "x")
    pub.send("secret")
    assert sub.recv(block=5) == "secret"
    with pytest.raises(yoton.ConnectError):  # (the server's certificate is not trusted by default)
        ctx().connect(server.url, timeout=1)
