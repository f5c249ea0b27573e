"""FileWrapper (a text file over a Pub/SubChannel) and SimpleSocket, over real sockets.

The main test runs a child process whose sys.stdout and sys.stdin are
FileWrappers: ``print`` and ``input`` in the child talk to this process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from helpers import link
from helpers import wait_until as wait_for

import yoton
from yoton import FileWrapper

pytestmark = pytest.mark.timeout(15)

SRC = Path(__file__).resolve().parents[2] / "src"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def linked(ctx):
    """Two linked contexts (writer side, reader side); ``ctx`` is tests/conftest.py's."""
    a, b = ctx(), ctx()
    link(a, b)
    return a, b


@pytest.fixture
def simple_sockets():
    """Factory for SimpleSockets, closed at teardown."""
    made = []

    def make():
        s = yoton.SimpleSocket()
        made.append(s)
        return s

    yield make
    for s in reversed(made):
        try:
            s.close()
        except Exception:
            pass


def read_until(wrapper, expected: str, timeout=5.0) -> str:
    """Collect wrapper.read() until it equals `expected` (or fail at the deadline)."""
    text = ""
    deadline = time.monotonic() + timeout
    while text != expected:
        left = deadline - time.monotonic()
        if left <= 0 or len(text) > len(expected):
            raise AssertionError(f"read {text!r}, expected {expected!r}")
        text += wrapper.read(min(left, 0.5))
    return text


# -- print() and input() in a child process -----------------------------------------------

CHILD = textwrap.dedent("""
    import sys
    import yoton

    port = int(sys.argv[1])
    ctx = yoton.Context()
    ctx.connect(f"127.0.0.1:{port}", timeout=5)
    real_stdout = sys.stdout
    sys.stdout = yoton.FileWrapper(yoton.PubChannel(ctx, "child-stdout"))
    sys.stdin = yoton.FileWrapper(yoton.SubChannel(ctx, "child-stdin"))
    print("hello", 42)
    x = input("name? ")
    print(x.upper())
    sys.stdout.flush()
    sys.stdout = real_stdout
    ctx.flush(5)
    ctx.close()
    print("child done")
""")


def test_print_and_input_in_a_child_process(ctx):
    here = ctx()
    out = FileWrapper(yoton.SubChannel(here, "child-stdout"))
    inp = FileWrapper(yoton.PubChannel(here, "child-stdin"))
    conn = here.bind("127.0.0.1:0")
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(conn.port1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tempfile.gettempdir(),
        text=True,
    )
    try:
        wait_for(lambda: conn.is_connected or proc.poll() is not None, 10, "the child to connect")
        assert conn.is_connected, proc.communicate(timeout=5)

        got = read_until(out, "hello 42\nname? ", timeout=10)
        assert got == "hello 42\nname? "
        inp.write("bob\n")
        assert read_until(out, "BOB\n", timeout=10) == "BOB\n"

        stdout, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert stdout == "child done\n"  # nothing leaked onto the real stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


# -- writing ---------------------------------------------------------------------------------


def test_write_sends_each_write_as_a_message(linked):
    a, b = linked
    w = FileWrapper(yoton.PubChannel(a, "fw"))
    sub = yoton.SubChannel(b, "fw")
    assert w.write("one") == 3
    assert w.write("twø ☃\n") == 6
    w.writelines(["x\n", "y"])
    w.flush()
    assert [sub.recv(5) for _ in range(4)] == ["one", "twø ☃\n", "x\n", "y"]


def test_chunksize_splits_long_writes(linked):
    a, b = linked
    w = FileWrapper(yoton.PubChannel(a, "chunks"), chunksize=4)
    sub = yoton.SubChannel(b, "chunks")
    assert w.write("abcdefghij") == 10
    assert w.write("xy") == 2
    assert [sub.recv(5) for _ in range(4)] == ["abcd", "efgh", "ij", "xy"]
    assert sub.recv(0.2) == ""  # nothing more


def test_echo_gets_what_is_read(linked):
    # yoton 2.2 (pyzo's stdin): the echo PubChannel gets each message read, as read
    a, b = linked
    pub = yoton.PubChannel(a, "in")
    echo_sub = yoton.SubChannel(a, "echo")
    r = FileWrapper(yoton.SubChannel(b, "in"), echo=yoton.PubChannel(b, "echo"))
    pub.send("typed")
    pub.send("more\n")
    assert r.readline() == "typed\n"
    assert r.read(5) == "more\n"
    assert r.read() == ""  # nothing read: nothing echoed
    assert [echo_sub.recv(5), echo_sub.recv(5)] == ["typed", "more\n"]
    assert echo_sub.recv(0.2) == ""


def test_echo_must_be_a_pub_channel(linked):
    a, b = linked
    for echo in (io.StringIO(), yoton.SubChannel(b, "e"), "echo"):
        with pytest.raises(ValueError):
            FileWrapper(yoton.SubChannel(b, "in"), echo=echo)


def test_flush_waits_until_written(linked):
    a, b = linked
    w = FileWrapper(yoton.PubChannel(a, "fl"))
    sub = yoton.SubChannel(b, "fl")
    for _ in range(100):
        w.write("x" * 1000)
    w.flush()  # Context.flush: everything is on the wire now
    assert a.statistics()["queued_bytes"] == 0
    assert len([sub.recv(5) for _ in range(100)]) == 100


def test_write_rejects_non_str(linked):
    a, _ = linked
    w = FileWrapper(yoton.PubChannel(a, "nonstr"))
    with pytest.raises(TypeError):
        w.write(b"bytes")


def test_writing_to_a_sub_side_wrapper_raises(linked):
    _, b = linked
    r = FileWrapper(yoton.SubChannel(b, "ro"))
    with pytest.raises(OSError):
        r.write("no")
    with pytest.raises(OSError):
        r.writelines(["no"])


def test_reading_from_a_pub_side_wrapper_raises(linked):
    a, _ = linked
    w = FileWrapper(yoton.PubChannel(a, "wo"))
    with pytest.raises(OSError):
        w.read()
    with pytest.raises(OSError):
        w.readline()


def test_only_pub_and_sub_channels(linked):
    a, _ = linked
    with pytest.raises(ValueError):
        FileWrapper(yoton.StateChannel(a, "state"))
    with pytest.raises(ValueError):
        FileWrapper("not a channel")


# -- reading ----------------------------------------------------------------------------------


@pytest.fixture
def rw(linked):
    """(writer wrapper, reader wrapper) on one slot across the link."""
    a, b = linked
    return FileWrapper(yoton.PubChannel(a, "rw")), FileWrapper(yoton.SubChannel(b, "rw"))


def test_read_non_blocking_and_blocking(rw):
    w, r = rw
    assert r.read() == "" and r.read(False) == ""
    t0 = time.monotonic()
    assert r.read(0.2) == ""  # waits at most that long
    assert 0.15 <= time.monotonic() - t0 < 3
    w.write("abc")
    assert r.read(True) == "abc"  # waits for at least one message
    w.write("d")
    w.write("e")
    assert read_until(r, "de") == "de"


def test_readline_is_one_message(rw):
    # yoton 2.2: one message per call, a newline appended if it has none
    w, r = rw
    w.write("abc\nde")
    w.write("f")
    w.write("gh\n")
    assert r.readline() == "abc\nde\n"
    assert r.readline() == "f\n"
    assert r.readline() == "gh\n"


def test_readline_size_drops_the_rest(rw):
    w, r = rw
    w.write("xyz\n")
    w.write("0123456789")
    assert r.readline(2) == "xy"
    assert r.readline(4) == "0123"
    w.write("next")
    assert r.readline(0) == "next\n"


def test_read_is_one_message(rw):
    w, r = rw
    w.write("one")
    w.write("two")
    wait_for(lambda: r._channel.pending == 2, 5, "both messages")
    assert r.read() == "one"
    assert r.read() == "two"
    assert r.read() == ""


def test_readline_returns_empty_once_closed_and_drained(rw):
    w, r = rw
    w.write("partial")
    wait_for(lambda: r._channel.pending == 1, 5, "the message")
    r.close()
    assert r.closed
    assert r.readline() == "partial\n"
    assert r.readline() == ""  # end of file (yoton 2.2 returned "\n" for ever)


def test_input_uses_readline(rw, monkeypatch):
    w, r = rw
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", r)
    monkeypatch.setattr(sys, "stdout", out)
    w.write("answer\n")
    assert input("q? ") == "answer"
    assert out.getvalue() == "q? "


# -- file attributes --------------------------------------------------------------------------


def test_file_attributes(linked):
    a, b = linked
    w = FileWrapper(yoton.PubChannel(a, "attrs"))
    r = FileWrapper(yoton.SubChannel(b, "attrs"), isatty=True)
    for f in (w, r):
        assert f.encoding == "UTF-8"
        assert f.errors == "strict"
        assert f.newlines is None
        assert f.softspace is False
        f.softspace = 1  # settable, as print code of old did
        assert f.softspace is True
        assert f.closed is False
        with pytest.raises(OSError):
            f.fileno()
    assert w.isatty() is False
    assert r.isatty() is True


def test_close(linked):
    a, _ = linked
    pub = yoton.PubChannel(a, "closing")
    w = FileWrapper(pub)
    w.close()
    assert w.closed and pub.closed
    with pytest.raises(ValueError):
        w.write("after close")


def test_closed_follows_the_channel(linked):
    a, _ = linked
    pub = yoton.PubChannel(a, "chclose")
    w = FileWrapper(pub)
    pub.close()
    assert w.closed


# -- SimpleSocket -------------------------------------------------------------------------------


def test_simple_socket_send_and_recv(simple_sockets):
    s1, s2 = simple_sockets(), simple_sockets()
    assert isinstance(s1, yoton.Context)
    link(s1, s2)
    s1.send("ping ☃")
    assert s2.recv(5) == "ping ☃"
    s2.send("pong")
    s2.send("again")
    assert s1.recv(5) == "pong"
    assert s1.recv(5) == "again"
    assert s1.recv(False) == ""
    t0 = time.monotonic()
    assert s2.recv(0.2) == ""
    assert time.monotonic() - t0 >= 0.15


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_writes_to_the_real_stdout(ctx):
    # yoton 2.2: in a child made by fork (multiprocessing), where the context's
    # threads do not exist, the sys.stdout/sys.stderr wrapper writes to the real stream
    code = textwrap.dedent("""
        import os, sys, yoton
        a, b = yoton.Context(), yoton.Context()
        conn = a.bind("127.0.0.1:0")
        b.connect("127.0.0.1:%d" % conn.port1, timeout=5)
        sub = yoton.SubChannel(b, "out")
        sys.stdout = yoton.FileWrapper(yoton.PubChannel(a, "out"))
        pid = os.fork()
        if pid == 0:
            print("from the child")
            sys.stdout.flush()
            os._exit(0)
        os.waitpid(pid, 0)
        print("from the parent")
        sys.stdout.flush()
        sys.__stdout__.write("channel got %r\\n" % sub.recv(5.0))
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONIOENCODING="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30, cwd=tempfile.gettempdir()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from the child\nchannel got 'from the parent'\n"


def test_yotons_own_warnings_may_go_to_a_filewrapper_stderr():
    # A pyzo kernel's stderr is a FileWrapper, so Python's last-resort handler
    # writes yoton's warnings through the same context's queues. Here nothing
    # is connected (the IDE went away) and the startup queue overflows: its
    # warning is written to stderr, i.e. sent into that queue again.
    code = textwrap.dedent("""
        import sys, yoton
        ctx = yoton.Context(max_queue_bytes=2000)
        sys.stderr = yoton.FileWrapper(yoton.PubChannel(ctx, "stderr"))
        for i in range(100):
            sys.stderr.write("x" * 100)
        sys.__stdout__.write("discarded %d\\n" % (ctx.statistics()["discarded_outgoing"] > 0))
    """)
    env = dict(os.environ, PYTHONPATH=str(SRC), PYTHONIOENCODING="utf-8")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=10, cwd=tempfile.gettempdir()
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung: yoton logged a discard while holding the queue it discards from")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "discarded 1\n"
