"""tls:// addresses: the yoton handshake and every package inside TLS.

The tests make their own CA and certificates (trustme) and talk over real
sockets on 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import ssl

import pytest

import yoton

trustme = pytest.importorskip("trustme", reason="trustme is a dev extra (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def server_context(ca, *names):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("localhost", "127.0.0.1"))).configure_cert(context)
    return context


def client_context(ca=None):
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    return context


@pytest.fixture
def tls_pair(ctx, wait_for, ca):
    """(a, b, bound, conn): ``a`` binds tls://localhost, ``b`` connects with a trusting client context."""

    def make(a_kwargs=None, b_kwargs=None, host="localhost"):
        a, b = ctx(**(a_kwargs or {})), ctx(**(b_kwargs or {}))
        bound = a.bind(f"tls://{host}:0", ssl_context=server_context(ca))
        conn = b.connect(f"tls://{host}:{bound.port1}", timeout=3.0, ssl_context=client_context(ca))
        assert wait_for(lambda: bound.is_connected and conn.is_connected, 3.0)
        return a, b, bound, conn

    return make


def refusals(caplog):
    return [r.getMessage() for r in caplog.records if "refused client" in r.getMessage()]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_verified_connection_carries_every_channel_kind(tls_pair, wait_for, host):
    a, b, bound, conn = tls_pair(host=host)
    # pub/sub of each message type, both ways, including a body larger than a TLS chunk
    for mt, msgs in [
        (yoton.TEXT, ["hé ☃", "x" * 100_000]),
        (yoton.BINARY, [b"\x00\x01", bytes(range(256)) * 20_000]),
        (yoton.OBJECT, [{"k": [1, 2.5, None]}, ("t", 3)]),
    ]:
        for src, dst in [(a, b), (b, a)]:
            pub, sub = yoton.PubChannel(src, "p", mt), yoton.SubChannel(dst, "p", mt)
            for m in msgs:
                pub.send(m)
            assert [sub.recv(5) for _ in msgs] == msgs
            pub.close()
            sub.close()
    state_a, state_b = yoton.StateChannel(a, "st"), yoton.StateChannel(b, "st")
    state_a.send("green")
    assert wait_for(lambda: state_b.recv() == "green", 3.0)
    rep = yoton.RepChannel(a, "svc")
    rep.set_mode("thread")
    req = yoton.ReqChannel(b, "svc")
    assert req.echo([1, "two"]).result(5) == ([1, "two"], hex(a.id))


def test_many_packages_then_orderly_close_lose_nothing(tls_pair, wait_for):
    a, b, bound, conn = tls_pair(a_kwargs={"queue_params": (100_000, "new")})
    sub = yoton.SubChannel(a, "count")
    pub = yoton.PubChannel(b, "count")
    n = 20_000
    for i in range(n):
        pub.send(str(i))
    b.flush(10)
    conn.close()
    assert wait_for(lambda: not bound.is_alive, 5.0)
    assert [sub.recv(False) for _ in range(n)] == [str(i) for i in range(n)]
    assert sub.statistics()["discarded"] == 0


def test_tls_and_auth_key_combine(tls_pair, ctx, ca):
    a, b, bound, conn = tls_pair(a_kwargs={"auth_key": b"k"}, b_kwargs={"auth_key": b"k"})
    sub = yoton.SubChannel(b, "x")
    yoton.PubChannel(a, "x").send("over tls, authenticated")
    assert sub.recv(5) == "over tls, authenticated"
    # a TLS-trusting peer with the wrong key is still refused
    c = ctx(auth_key=b"other")
    bound2 = a.bind("tls://localhost:0", ssl_context=server_context(ca))
    with pytest.raises(yoton.AuthenticationError, match="authentication failed"):
        c.connect(f"tls://localhost:{bound2.port1}", timeout=3.0, ssl_context=client_context(ca))
    assert bound2.is_waiting


def test_client_that_does_not_trust_the_ca_is_refused(ctx, ca, wait_for, caplog):
    caplog.set_level(logging.INFO, logger="yoton")
    a = ctx()
    bound = a.bind("tls://localhost:0", ssl_context=server_context(ca))
    with pytest.raises(yoton.TLSError, match="certificate verify failed|self.signed|unable to get local issuer"):
        ctx().connect(f"tls://localhost:{bound.port1}", timeout=3.0, ssl_context=client_context())
    assert wait_for(lambda: any("TLS handshake failed" in m for m in refusals(caplog)), 3.0), refusals(caplog)
    assert bound.is_waiting
    # the bind still serves a proper client
    conn = ctx().connect(f"tls://localhost:{bound.port1}", timeout=3.0, ssl_context=client_context(ca))
    assert wait_for(lambda: conn.is_connected and bound.is_connected, 3.0)


def test_server_with_the_wrong_hostname_is_refused(ctx, ca):
    a = ctx()
    bound = a.bind("tls://127.0.0.1:0", ssl_context=server_context(ca, "otherhost.example"))
    with pytest.raises(yoton.TLSError, match="[Hh]ostname mismatch|doesn't match|not valid for"):
        ctx().connect(f"tls://localhost:{bound.port1}", timeout=3.0, ssl_context=client_context(ca))
    assert bound.is_waiting


def test_plaintext_client_is_refused_with_a_clear_error(ctx, ca, wait_for, caplog):
    caplog.set_level(logging.INFO, logger="yoton")
    a = ctx()
    bound = a.bind("tls://localhost:0", ssl_context=server_context(ca))
    with pytest.raises(yoton.HandshakeError, match="TLS required"):
        ctx().connect(f"tcp://localhost:{bound.port1}", timeout=3.0)
    assert wait_for(lambda: any("not a TLS client" in m for m in refusals(caplog)), 3.0)
    # a raw plaintext client gets the same line
    with socket.create_connection(("127.0.0.1", bound.port1), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert s.recv(100) == b"ERROR: TLS required.\r\n"
    assert bound.is_waiting


def test_tls_client_to_a_plaintext_bind_raises_tls_error(ctx, bind_free, ca):
    a = ctx()
    bound = bind_free(a)
    with pytest.raises(yoton.TLSError, match="TLS handshake failed"):
        ctx().connect(f"tls://localhost:{bound.port1}", timeout=3.0, ssl_context=client_context(ca))


def test_garbage_tls_records_after_the_handshake_close_with_a_reason(ctx, ca, wait_for):
    # A client finishes TLS, then sends bytes that are not TLS records.
    a = ctx()
    bound = a.bind("tls://localhost:0", ssl_context=server_context(ca))
    closed = []
    bound.closed.bind(lambda conn, reason: closed.append(reason))
    raw = socket.create_connection(("127.0.0.1", bound.port1), timeout=3)
    with client_context(ca).wrap_socket(raw, server_hostname="localhost") as s:
        b = yoton.wire.protocol.format_hello(0x77, 1)
        s.sendall(b)
        assert s.recv(100).startswith(b"YOTON!")
        assert wait_for(lambda: bound.is_connected, 3.0)
        raw_fd = socket.socket(fileno=s.fileno())  # write beneath TLS
        try:
            raw_fd.sendall(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
        finally:
            raw_fd.detach()
        assert wait_for(lambda: closed, 3.0)
    assert closed[0].startswith("TLS error"), closed


@pytest.mark.parametrize(
    "address, kwargs, match",
    [
        ("tls://localhost:0", {}, "needs an ssl_context"),
        ("tcp://localhost:0", {"ssl_context": "x"}, "ssl.SSLContext"),
    ],
)
def test_bind_argument_errors(ctx, address, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ctx().bind(address, **kwargs)


def test_ssl_context_needs_a_tls_address(ctx, ca):
    with pytest.raises(ValueError, match="tls://"):
        ctx().bind("tcp://localhost:0", ssl_context=server_context(ca))
    with pytest.raises(ValueError, match="tls://"):
        ctx().connect("localhost:5", ssl_context=client_context(ca))


def test_client_certificates_when_the_server_requires_them(ctx, ca, wait_for):
    server = server_context(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server)
    bound = ctx().bind("tls://localhost:0", ssl_context=server)
    # without a client certificate: refused (with TLS 1.3 the client hears it in the yoton handshake)
    with pytest.raises(yoton.TLSError, match="TLS handshake failed .*certificate"):
        ctx().connect(f"tls://localhost:{bound.port1}", timeout=2.0, ssl_context=client_context(ca))
    assert bound.is_waiting
    client = client_context(ca)
    ca.issue_cert("client@example").configure_cert(client)
    conn = ctx().connect(f"tls://localhost:{bound.port1}", timeout=3.0, ssl_context=client)
    assert wait_for(lambda: conn.is_connected and bound.is_connected, 3.0)


@pytest.mark.parametrize("size", [10_000, 200_000], ids=["lone write", "direct write of the queue"])
def test_a_sender_that_saw_no_tls_while_the_link_moved_writes_nothing_in_plaintext(tls_pair, size):
    """A bind's link that takes its peer's re-dial stays CONNECTED while it drops
    the old socket (and its TLS) and takes the new one. A sending thread that
    looked at the link in between saw no TLS; once it holds the writer's lock
    the new socket may be there, TLS and all: it must not write plaintext into it."""
    a, b, bound, conn = tls_pair()
    sub = yoton.SubChannel(b, "moved")
    pub = yoton.PubChannel(a, "moved")
    link, loop = bound._link, a.router.loop
    tls, wlock = link.tls, link._wlock

    class TakenMeanwhile:  # (the loop side's _take_socket completes while the sender goes for the lock)
        def acquire(self, blocking=True, timeout=-1):
            link.tls = tls
            return wlock.acquire(blocking, timeout)

        def release(self):
            wlock.release()

    message = "m" * size
    with loop._lock:  # (the loop side is held in the middle of the move: it reads nothing meanwhile)
        link.tls = None  # (as _drop_socket leaves it)
        link._wlock = TakenMeanwhile()
        link._direct_after = 0.0
        try:
            pub.send(message)  # (a body over 4 KiB: pumped, and written if it can be, by this thread)
        finally:
            link._wlock, link.tls = wlock, tls
    assert sub.recv(5) == message
    assert bound.is_connected and conn.is_connected
