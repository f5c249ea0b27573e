"""ipc://PATH: yoton over Unix domain sockets.

Real Unix sockets in a short temporary directory; the peer that must not be
allowed in runs as another user (when the tests run as root).
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

import pytest
from interop_helpers import SRC
from transport_util import wait_for

import yoton
from yoton.errors import AuthenticationError, BindError, ConnectError
from yoton.transport import stream, unix

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not unix.AVAILABLE, reason="no Unix domain sockets on this platform"),
]


@pytest.fixture
def sock_dir():
    """A directory with a short path (Unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="yt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_pubsub_reqrep_and_state_over_a_unix_socket(make_ctx, sock_dir):
    path = os.path.join(sock_dir, "app.sock")
    a, b = make_ctx(), make_ctx()
    bound = a.bind(f"ipc://{path}")
    assert isinstance(bound, yoton.IpcConnection) and bound.is_waiting
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    conn = b.connect(f"ipc://{path}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected) and conn.is_connected
    assert (bound.hostname1, bound.port, conn.hostname2, conn.port) == (path, 0, path, 0)
    assert conn.id2 == a.id and bound.pid2 == os.getpid()

    class Calc(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    Calc(a, "calc").set_mode("thread")
    assert yoton.ReqChannel(b, "calc").add(20, 22).result(5.0) == 42
    sub, pub = yoton.SubChannel(b, "big", yoton.BINARY), yoton.PubChannel(a, "big", yoton.BINARY)
    big = os.urandom(3 << 20)
    for i in range(100):
        pub.send(i.to_bytes(2, "little") + b"small")
    pub.send(big)
    got = [sub.recv(5.0) for _ in range(101)]
    assert got[:100] == [i.to_bytes(2, "little") + b"small" for i in range(100)] and got[100] == big
    state_a, state_b = yoton.StateChannel(a, "st"), yoton.StateChannel(b, "st")
    state_b.send("set over ipc")
    assert wait_for(lambda: state_a.recv() == "set over ipc")
    # the bind served its one peer: its file is gone, as a TCP bind's port is freed
    assert not os.path.exists(path)
    closed = []
    bound.closed.bind(lambda c, reason: closed.append(reason))
    b.close()
    assert wait_for(lambda: closed) and closed == ["Closed from other end."]


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@pytest.mark.skipif(not _wmem_max(), reason="reads the kernel's cap on send buffers from /proc (Linux)")
def test_both_ends_of_a_unix_socket_link_get_a_larger_send_buffer(make_ctx, sock_dir):
    # The default (~208 KiB) made a stream of small messages wait for the
    # reader every couple of thousand packages. Linux doubles what is asked
    # and caps the request at net.core.wmem_max (often the default itself).
    expected = 2 * min(stream.UNIX_SNDBUF, _wmem_max())
    path = os.path.join(sock_dir, "buf.sock")
    a, b = make_ctx(), make_ctx()
    bound = a.bind(f"ipc://{path}")
    conn = b.connect(f"ipc://{path}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected)
    for c in (bound, conn):
        sock = c._link.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= expected


def test_auth_key_and_limits_work_as_over_tcp(make_ctx, sock_dir):
    path = os.path.join(sock_dir, "auth.sock")
    a = make_ctx(auth_key=b"k1", max_package_size=1000)
    bound = a.bind(f"ipc://{path}", max_connections=None)
    with pytest.raises(AuthenticationError):
        make_ctx(auth_key=b"other").connect(f"ipc://{path}", timeout=2.0)
    try:  # a peer without a key sees a hello, then a challenge it cannot answer (as over TCP)
        plain = make_ctx().connect(f"ipc://{path}", timeout=2.0)
    except ConnectError as exc:  # (if the refusal came with the hello)
        assert "authentication failed" in str(exc)
    else:
        assert wait_for(lambda: not plain.is_alive)
        assert plain.close_reason == "authentication failed (the other end requires an auth key)"
    b = make_ctx(auth_key=b"k1")
    conn = b.connect(f"ipc://{path}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected)
    closed = []
    bound.closed.bind(lambda c, reason: closed.append(reason))
    yoton.PubChannel(b, "x", yoton.BINARY).send(b"y" * 2000)  # over a's max_package_size
    assert wait_for(lambda: closed) and closed == ["Package too large (2000 bytes; the limit is 1000)."]
    assert wait_for(lambda: not conn.is_alive)


def test_a_stale_socket_file_is_removed_and_the_bind_takes_the_path(make_ctx, sock_dir, caplog):
    path = os.path.join(sock_dir, "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a process that bound and died: the file stays, nobody listens
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with caplog.at_level(logging.INFO, logger="yoton"):
        bound = make_ctx().bind(f"ipc://{path}")
    assert any("removed the stale socket file" in r.getMessage() for r in caplog.records)
    make_ctx().connect(f"ipc://{path}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected)


def test_the_path_appears_only_once_the_socket_listens(make_ctx, sock_dir, monkeypatch):
    """Another bind's stale-file check must never find our path bound but not
    yet listening: it would take it for a dead process's file and remove it."""
    path = os.path.join(sock_dir, "k.sock")
    seen = []

    class Watched(socket.socket):
        def listen(self, *args):
            seen.append(os.path.exists(path))  # (what another process could see now)
            return super().listen(*args)

    monkeypatch.setattr(unix.socket, "socket", Watched)
    conn = make_ctx().bind("ipc://" + path)
    assert seen == [False] and stat.S_ISSOCK(os.lstat(path).st_mode)
    assert os.listdir(sock_dir) == ["k.sock"]  # (the temporary name is gone)
    monkeypatch.undo()
    peer = make_ctx()
    peer.connect("ipc://" + path, timeout=3.0)
    assert wait_for(lambda: conn.is_connected)


def test_a_path_in_use_or_not_a_socket_is_left_alone(make_ctx, sock_dir):
    live = os.path.join(sock_dir, "live.sock")
    first = make_ctx().bind(f"ipc://{live}")
    with pytest.raises(BindError, match="another bind listens there"):
        make_ctx().bind(f"ipc://{live}")
    conn = make_ctx().connect(f"ipc://{live}", timeout=3.0)  # the first bind is unharmed
    assert wait_for(lambda: first.is_connected) and conn.is_connected
    plain = os.path.join(sock_dir, "notes.txt")
    with open(plain, "w") as f:
        f.write("keep me")
    with pytest.raises(BindError, match="exists and is not a socket"):
        make_ctx().bind(f"ipc://{plain}")
    with open(plain) as f:
        assert f.read() == "keep me"


def test_the_socket_file_goes_when_the_bind_stops_listening(make_ctx, sock_dir):
    path = os.path.join(sock_dir, "gone.sock")
    ctx = make_ctx()
    bound = ctx.bind(f"ipc://{path}", max_connections=None)
    make_ctx().connect(f"ipc://{path}", timeout=3.0)
    assert wait_for(lambda: bound.is_connected) and os.path.exists(path)  # (many peers: still listening)
    ctx.close()
    assert wait_for(lambda: not os.path.exists(path), 3.0)
    waiting = make_ctx().bind(f"ipc://{path}")
    waiting.close()
    assert wait_for(lambda: not os.path.exists(path), 3.0)


def test_mode_sets_the_socket_files_permissions(make_ctx, sock_dir):
    path = os.path.join(sock_dir, "private.sock")
    make_ctx().bind(f"ipc://{path}", mode=0o600)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    assert [n for n in os.listdir(sock_dir)] == ["private.sock"]  # (the temporary name is gone)
    default = os.path.join(sock_dir, "default.sock")
    umask = os.umask(0)
    os.umask(umask)
    make_ctx().bind(f"ipc://{default}")
    assert stat.S_IMODE(os.lstat(default).st_mode) == 0o777 & ~umask
    for bad in (0o1777, -1, "600", True):
        with pytest.raises(ValueError):
            make_ctx().bind(f"ipc://{sock_dir}/bad.sock", mode=bad)


def _python_for(user) -> str | None:
    """An interpreter ``user`` may run (ours may sit in root's home), or None."""
    candidates = [
        sys.executable,
        shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}"),
        "/usr/bin/python3",
    ]
    for exe in candidates:
        if not exe:
            continue
        try:
            proc = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info >= (3, 8))"],
                capture_output=True,
                text=True,
                user=user.pw_uid,
                group=user.pw_gid,
                cwd="/",
                timeout=30,
            )
        except OSError:
            continue
        if proc.returncode == 0 and proc.stdout.strip() == "True":
            return exe
    return None


_CONNECT_AS_OTHER = """
import sys, yoton
try:
    yoton.Context().connect(sys.argv[1], timeout=2.0)
    print("connected")
except yoton.ConnectError as exc:
    print("refused:", exc)
"""


def _nobody():
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0 or _nobody() is None, reason="needs root to run a peer as 'nobody'")
@pytest.mark.skipif(sys.version_info < (3, 9), reason="subprocess user= needs Python 3.9")
def test_file_permissions_decide_who_may_connect(make_ctx, sock_dir):
    os.chmod(sock_dir, 0o755)
    other = _nobody()
    python = _python_for(other)
    if python is None:
        pytest.skip("no Python interpreter that 'nobody' may run")

    def connect_as_nobody(path: str) -> str:
        env = dict(os.environ, PYTHONPATH=str(SRC))
        proc = subprocess.run(
            [python, "-c", _CONNECT_AS_OTHER, f"ipc://{path}"],
            capture_output=True,
            text=True,
            env=env,
            user=other.pw_uid,
            group=other.pw_gid,
            cwd="/",
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    private, shared = os.path.join(sock_dir, "private.sock"), os.path.join(sock_dir, "shared.sock")
    make_ctx().bind(f"ipc://{private}", mode=0o600)
    shared_bind = make_ctx().bind(f"ipc://{shared}", mode=0o666)
    answer = connect_as_nobody(private)
    assert answer.startswith("refused:") and "Permission denied" in answer, answer
    assert "permissions decide who may connect" in answer
    assert connect_as_nobody(shared) == "connected"
    assert wait_for(lambda: shared_bind.pid2 not in (0, os.getpid()), 3.0)


def test_addresses_and_options_that_do_not_fit_are_refused(make_ctx, sock_dir, monkeypatch):
    ctx = make_ctx()
    with pytest.raises(ValueError, match="needs a path"):
        ctx.bind("ipc://")
    with pytest.raises(ValueError, match="ssl_context does not apply"):
        ctx.bind(f"ipc://{sock_dir}/x.sock", ssl_context=object())
    with pytest.raises(ValueError, match="max_tries does not apply"):
        ctx.bind(f"ipc://{sock_dir}/x.sock", max_tries=3)
    with pytest.raises(ConnectError, match="within 0.2 s"):
        ctx.connect(f"ipc://{sock_dir}/nobody.sock", timeout=0.2)
    with pytest.raises(BindError, match="too long|File name too long"):
        ctx.bind(f"ipc://{sock_dir}/{'x' * 200}.sock")
    monkeypatch.setattr(unix, "AVAILABLE", False)  # (what Windows gets)
    with pytest.raises(BindError, match="need Unix domain sockets"):
        ctx.bind(f"ipc://{sock_dir}/y.sock")
    with pytest.raises(ConnectError, match="need Unix domain sockets"):
        ctx.connect(f"ipc://{sock_dir}/y.sock")
