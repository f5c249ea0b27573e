"""The ``yoton`` command line, run for real: ``python -m yoton ...`` subprocesses
talking to each other and to yoton peers in this process, over 127.0.0.1.

A process that binds says so on stderr ("bound to 127.0.0.1:PORT"); the tests
read that line (with a deadline) before they start the other side.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import yoton
from yoton.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
# (our src first; entries already there stay, made absolute: the processes may run elsewhere)
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
        [str(SRC)] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
)
WAIT = 10.0  # deadline of any wait here (the machine may be busy)


def yoton_cli(*args, input=None, cwd=None, timeout=20):
    """Run ``python -m yoton ARGS`` to its end; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "yoton", *map(str, args)],
        input=input,
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _default_sigint():
    # (in the child: Ctrl-C as in a terminal, also when these tests run with
    # SIGINT ignored, as a shell's background job does)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Cli:
    """A ``python -m yoton ARGS`` running in the background; its stderr is read
    line by line as it comes (:meth:`wait_line`)."""

    def __init__(self, *args, cwd=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "yoton", *map(str, args)],
            cwd=cwd,
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_default_sigint,
        )
        self.lines: queue.Queue = queue.Queue()
        self.err: list = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.err.append(line)
            self.lines.put(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_line(self, pattern: str, timeout: float = WAIT):
        """The match of the first new stderr line matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(
                    f"no stderr line matching {pattern!r} within {timeout} s; stderr so far:\n{self.stderr}"
                ) from None
            match = re.search(pattern, line)
            if match:
                return match

    def port(self) -> int:
        """The port of the bind, from the banner."""
        return int(self.wait_line(r"bound to (?:tls://)?[\d.]+:(\d+)").group(1))

    def finish(self, timeout: float = WAIT):
        """Wait for the end; return (exit code, stdout, stderr)."""
        code = self.proc.wait(timeout)
        out = self.proc.stdout.read()
        self.reader.join(timeout)
        return code, out, self.stderr

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def cli():
    """``cli(*args, cwd=None)`` -> a started :class:`Cli`; all are killed at teardown."""
    started = []

    def start(*args, cwd=None):
        c = Cli(*args, cwd=cwd)
        started.append(c)
        return c

    yield start
    for c in started:
        c.kill()


def one_error_line(stderr: str, *words) -> str:
    """The last stderr line: an error naming each of ``words``, with no traceback before it."""
    assert "Traceback" not in stderr, stderr
    line = stderr.strip().splitlines()[-1]
    for word in words:
        assert word.lower() in line.lower(), stderr
    return line


@pytest.fixture
def peer(ctx, bind_free):
    """``peer(**context_kwargs)`` -> (context, its waiting bind's address) in this process."""

    def make(**kwargs):
        context = ctx(**kwargs)
        conn = bind_free(context)
        return context, f"127.0.0.1:{conn.port1}"

    return make


# -- help and usage ---------------------------------------------------------------------


def test_help_of_yoton_and_each_command(capsys):
    import yoton.__main__

    assert yoton.__main__.main is main  # (the console script's entry point)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("sub", "pub", "req", "state", "serve", "monitor", "bench", "demo", "exit codes"):
        assert command in text
    assert "_demo-worker" not in text and "_bench-peer" not in text
    for command in ("sub", "pub", "req", "state", "serve", "monitor", "bench"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: yoton {command}" in capsys.readouterr().out


def test_usage_errors_exit_2_and_name_the_problem(free_port, capsys):
    address = f"127.0.0.1:{free_port()}"
    proc = yoton_cli("sub", "news")  # (the real exit code; the other cases run in this process)
    assert proc.returncode == 2
    assert "usage: yoton sub" in proc.stderr and "--connect --bind is required" in proc.stderr
    cases = [
        (["sub", "news"], "one of the arguments --connect --bind is required"),
        (["sub", "--connect", address, "--bind", address, "news"], "not allowed with"),
        (["sub", "--connect", address, "--count", "0", "news"], "--count"),
        (["req", "--connect", address, "--timeout", "-1", "calc", "add"], "--timeout"),
        (["pub", "--bind", "tls://127.0.0.1:0", "news", "x"], "needs --tls-cert"),
        (["pub", "--connect", address, "--tls-ca", "ca.pem", "news", "x"], "only for tls://"),
        (["frobnicate"], "invalid choice"),
    ]
    for args, words in cases:
        with pytest.raises(SystemExit) as exit_:
            main(args)
        out, err = capsys.readouterr()
        assert exit_.value.code == 2, (args, err)
        assert words in err and "usage: yoton" in err
        assert out == ""


def test_errors_are_one_line_with_exit_code_1():
    # A port held (bound, not listening) for the test: connects are refused, and no
    # other test can take it meanwhile, as it could a port found free a moment ago.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        _errors_are_one_line(f"127.0.0.1:{holder.getsockname()[1]}")
    finally:
        holder.close()


def _errors_are_one_line(refused: str) -> None:
    proc = yoton_cli("pub", "--connect", refused, "--timeout", "0.3", "news", "hello")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "yoton pub:", "could not connect", "refused")
    # bad arguments are found before any connection is tried (nothing listens there)
    proc = yoton_cli("req", "--connect", refused, "calc", "add", "[1, 2", "3")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "yoton req:", "bad Python literal", "[1, 2")
    proc = yoton_cli("pub", "--connect", refused, "--type", "object", "--json", "news", '{"a": }')
    assert proc.returncode == 1
    one_error_line(proc.stderr, "bad JSON")
    proc = yoton_cli("state", "--connect", "no-port-here", "status")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "yoton state:", "host:port")


# -- sub and pub ------------------------------------------------------------------------


def test_pub_lines_of_stdin_reach_sub_and_a_bound_sub_takes_publishers_in_turn(cli):
    sub = cli("sub", "--bind", "localhost:0", "--count", "4", "news")
    port = sub.port()
    first = yoton_cli("pub", "--connect", f"localhost:{port}", "news", input="a\nb c\n\n\xe9t\xe9\r\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""  # (stdout carries data only)
    assert "sent 3 message(s)" in first.stderr
    second = yoton_cli("pub", "--connect", f"localhost:{port}", "news", "last one")
    assert second.returncode == 0, second.stderr
    code, out, err = sub.finish()
    assert code == 0, err
    assert out == "a\nb c\n\xe9t\xe9\nlast one\n"
    assert "peer" in err  # (the publishers were told as they came and went)


def test_sub_connects_to_a_bound_pub(cli):
    pub = cli("pub", "--bind", "localhost:0", "--type", "object", "readings", "{'t': 21.5, 'ok': (1, None)}")
    sub = yoton_cli("sub", "--connect", f"localhost:{pub.port()}", "--type", "object", "--count", "1", "readings")
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout == "{'t': 21.5, 'ok': (1, None)}\n"
    code, out, err = pub.finish()
    assert (code, out) == (0, ""), err


def test_sub_json_lines_for_each_type(peer):
    ctx, address = peer()
    payloads = {
        "object": [{"k": [1, 2.5, None]}, "text", None, (1, 2)],
        "binary": [b"\x00\xffok", b"\n"],
        "text": ["line\nbreak", "\u2603"],
    }
    for kind, messages in payloads.items():
        pub = yoton.PubChannel(ctx, "feed", {"object": yoton.OBJECT, "binary": yoton.BINARY}.get(kind, yoton.TEXT))
        for message in messages:
            pub.send(message)  # (waits in the startup queue for the subscriber)
        proc = yoton_cli("sub", "--connect", address, "--type", kind, "--json", "--count", len(messages), "feed")
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["slot"] for line in lines] == ["feed"] * len(messages)
        got = [line["message"] for line in lines]
        if kind == "binary":
            got = [base64.b64decode(m) for m in got]
        if kind == "object":
            messages = [{"k": [1, 2.5, None]}, "text", None, [1, 2]]
        assert got == messages
        pub.close()
        address = f"127.0.0.1:{ctx.bind('127.0.0.1:0').port1}"  # (a bind serves one peer)


def test_pub_types_and_literals_reach_a_python_subscriber(peer):
    ctx, address = peer()
    objects = yoton.SubChannel(ctx, "o", yoton.OBJECT)
    proc = yoton_cli(
        "pub", "--connect", address, "--type", "object", "o", input="42\n'x'\n[1, (2, 3)]\nhello world\n-1.5\nNone\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert [objects.recv(WAIT) for _ in range(6)] == [42, "x", [1, (2, 3)], "hello world", -1.5, None]

    ctx2, address = peer()
    blobs = yoton.SubChannel(ctx2, "b", yoton.BINARY)
    proc = yoton_cli("pub", "--connect", address, "--type", "binary", "b", input="b'\\x00\\x01'\nplain\n")
    assert proc.returncode == 0, proc.stderr
    assert [blobs.recv(WAIT), blobs.recv(WAIT)] == [b"\x00\x01", b"plain"]

    ctx3, address = peer()
    objects = yoton.SubChannel(ctx3, "o", yoton.OBJECT)
    proc = yoton_cli("pub", "--connect", address, "--type", "object", "--json", "o", '{"a": [true, null]}')
    assert proc.returncode == 0, proc.stderr
    assert objects.recv(WAIT) == {"a": [True, None]}


def test_pub_stops_at_a_bad_literal_naming_its_line(peer):
    ctx, address = peer()
    objects = yoton.SubChannel(ctx, "o", yoton.OBJECT)
    proc = yoton_cli("pub", "--connect", address, "--type", "object", "o", input="1\n2\n{'a': 1\n4\n")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "line 3 of stdin", "bad Python literal")
    assert [objects.recv(WAIT), objects.recv(WAIT)] == [1, 2]  # (what came before still went out)
    assert objects.recv(0.2) is None


def test_sub_timeout_and_count(peer):
    ctx, address = peer()
    started = time.monotonic()
    proc = yoton_cli("sub", "--connect", address, "--timeout", "0.5", "quiet")
    assert proc.returncode == 0, proc.stderr  # (silence is the end of the stream)
    assert proc.stdout == "" and "timed out: nothing came for 0.5 s" in proc.stderr
    assert time.monotonic() - started < 5

    ctx, address = peer()
    yoton.PubChannel(ctx, "quiet").send("only one")
    proc = yoton_cli("sub", "--connect", address, "--timeout", "0.5", "--count", "2", "quiet")
    assert proc.returncode == 1  # (--count not reached)
    assert proc.stdout == "only one\n"
    one_error_line(proc.stderr, "timed out", "after 1 of 2 messages")


def test_sub_ends_when_the_peer_closes_and_prints_everything_first(cli, ctx, wait_for):
    context = ctx()
    sub = cli("sub", "--bind", "localhost:0", "--type", "object", "news")
    conn = context.connect(f"127.0.0.1:{sub.port()}", timeout=WAIT)
    pub = yoton.PubChannel(context, "news", yoton.OBJECT)
    for n in range(100):
        pub.send(n)
    context.flush()
    conn.close()
    # A bound sub keeps listening; one that connected ends with its connection.
    sub.wait_line("left: Closed from other end")
    sub2 = cli("sub", "--connect", f"127.0.0.1:{context.bind('127.0.0.1:0').port1}", "--type", "object", "news")
    sub2.wait_line("connected to")
    for n in range(100):
        pub.send(n)
    context.close()
    code, out, err = sub2.finish()
    assert code == 0, err
    assert out.split() == [str(n) for n in range(100)]
    assert "connection closed" in err
    assert sub.proc.poll() is None
    sub.proc.send_signal(signal.SIGINT)
    code, out, err = sub.finish()
    assert code == 130
    assert out.split() == [str(n) for n in range(100)]


def test_ctrl_c_ends_sub_cleanly_with_code_130(cli):
    sub = cli("sub", "--bind", "localhost:0", "news")
    sub.port()  # (it waits for publishers now)
    sub.proc.send_signal(signal.SIGINT)
    code, out, err = sub.finish()
    assert code == 130
    assert out == ""
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_sub_whose_reader_left_exits_141_without_traceback(cli, peer):
    ctx, address = peer()
    pub = yoton.PubChannel(ctx, "news")
    sub = cli("sub", "--connect", address, "news")
    pub.send("first")
    assert sub.proc.stdout.readline() == "first\n"
    sub.proc.stdout.close()  # (like 'yoton sub ... | head -1')
    for n in range(20):
        pub.send(f"more {n}")
    code = sub.proc.wait(WAIT)
    sub.reader.join(WAIT)
    assert code == 141
    assert "Traceback" not in sub.stderr and "Error" not in sub.stderr


# -- req, serve, state ------------------------------------------------------------------


class Calculator(yoton.RepChannel):
    def add(self, a, b):
        return a + b

    def divide(self, a, b):
        return a / b

    def describe(self, *args, **kwargs):
        return [list(args), kwargs]


def test_req_calls_a_python_replier(peer):
    ctx, address = peer()
    Calculator(ctx, "calc").set_mode("thread")

    proc = yoton_cli("req", "--connect", address, "calc", "add", "20", "22")
    assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr

    ctx.bind(address)  # (each bind serves one peer: the next requester needs one)
    proc = yoton_cli("req", "--connect", address, "calc", "describe", "[1, 'a']", "hello", "x=None", "y=(1,)")
    assert (proc.returncode, proc.stdout) == (0, "[[[1, 'a'], 'hello'], {'x': None, 'y': (1,)}]\n"), proc.stderr

    ctx.bind(address)
    proc = yoton_cli("req", "--connect", address, "--json", "calc", "describe", '{"k": [true]}', "n=1.5")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [[{"k": [True]}], {"n": 1.5}]

    ctx.bind(address)
    proc = yoton_cli("req", "--connect", address, "calc", "divide", "1", "0")
    assert (proc.returncode, proc.stdout) == (1, "")
    one_error_line(proc.stderr, "yoton req: remote error", "division by zero")


def test_req_without_a_replier_times_out(peer):
    ctx, address = peer()
    started = time.monotonic()
    proc = yoton_cli("req", "--connect", address, "--timeout", "0.5", "nobody", "add", "1", "2")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "timed out", "no replier", "'nobody'")
    assert time.monotonic() - started < 5


SERVED = """
import yoton


class Calc(yoton.RepChannel):
    def add(self, a, b):
        return a + b


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self, by=1):
        self.n += by
        return self.n

    def close(self):  # (a name of the RepChannel API: not served)
        return "closed"


def square(x):
    return x * x
"""


def test_serve_answers_python_requesters_one_after_another(cli, ctx, tmp_path):
    (tmp_path / "served.py").write_text(SERVED)
    server = cli("serve", "--bind", "localhost:0", "calc", "served:Calc", cwd=tmp_path)
    port = server.port()
    server.wait_line("serving served:Calc on slot 'calc': add, echo")
    for n in range(2):  # (the bind takes the next requester when the first has gone)
        context = ctx()
        context.connect(f"127.0.0.1:{port}", timeout=WAIT)
        assert yoton.ReqChannel(context, "calc").add(n, 40).result(WAIT) == n + 40
        context.close()

    counter = cli("serve", "--bind", "localhost:0", "count", "served:Counter", cwd=tmp_path)
    counter.wait_line(r"not served \(names of the RepChannel API\): close")
    port = counter.port()
    counter.wait_line("serving served:Counter on slot 'count': bump, echo")
    context = ctx()
    context.connect(f"127.0.0.1:{port}", timeout=WAIT)
    req = yoton.ReqChannel(context, "count")
    assert [req.bump().result(WAIT), req.bump(by=5).result(WAIT)] == [1, 6]
    counter.proc.send_signal(signal.SIGINT)
    code, out, err = counter.finish()
    assert (code, out) == (130, "")
    assert "Traceback" not in err


def test_serve_a_function_from_a_file_and_a_missing_module(cli, ctx, tmp_path):
    path = tmp_path / "served.py"
    path.write_text(SERVED)
    server = cli("serve", "--bind", "localhost:0", "sq", f"{path}:square")
    port = server.port()
    context = ctx()
    context.connect(f"127.0.0.1:{port}", timeout=WAIT)
    assert yoton.ReqChannel(context, "sq").square(12).result(WAIT) == 144

    proc = yoton_cli("serve", "--bind", "localhost:0", "x", "no_such_module_here:thing", cwd=tmp_path)
    assert proc.returncode == 1
    one_error_line(proc.stderr, "cannot import no_such_module_here", "ModuleNotFoundError")
    proc = yoton_cli("serve", "--bind", "localhost:0", "x", "served:nothing", cwd=tmp_path)
    assert proc.returncode == 1
    one_error_line(proc.stderr, "served has no 'nothing'")


def test_req_calls_serve(cli, tmp_path):
    (tmp_path / "served.py").write_text(SERVED)
    server = cli("serve", "--bind", "localhost:0", "calc", "served:Calc", cwd=tmp_path)
    port = server.port()
    proc = yoton_cli("req", "--connect", f"localhost:{port}", "calc", "add", "'a'", "b")
    assert (proc.returncode, proc.stdout) == (0, "'ab'\n"), proc.stderr
    proc = yoton_cli("req", "--connect", f"localhost:{port}", "calc", "nope")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "remote error", "nope")


def test_state_read_and_set(peer, wait_for):
    ctx, address = peer()
    status = yoton.StateChannel(ctx, "status")
    status.send("green")
    proc = yoton_cli("state", "--connect", address, "status")
    assert (proc.returncode, proc.stdout) == (0, "green\n"), proc.stderr

    ctx.bind(address)
    proc = yoton_cli("state", "--connect", address, "status", "red")
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert wait_for(lambda: status.recv() == "red", WAIT)

    config = yoton.StateChannel(ctx, "config", yoton.OBJECT)
    config.send({"mode": (1, 2)})
    ctx.bind(address)
    proc = yoton_cli("state", "--connect", address, "--type", "object", "--json", "config")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, {"mode": [1, 2]}), proc.stderr

    ctx.bind(address)
    proc = yoton_cli("state", "--connect", address, "--timeout", "0.5", "never-set")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "timed out", "no state", "'never-set'")


def test_state_set_with_bind_succeeds_when_its_reader_takes_the_value_and_leaves(cli):
    # The reader gets the value at once and leaves, often before the setter
    # looks for its peer: the value went out all the same (exit 0, both).
    for _ in range(3):
        setter = cli("state", "--bind", "localhost:0", "status", "green")
        proc = yoton_cli("state", "--connect", f"localhost:{setter.port()}", "status")
        assert (proc.returncode, proc.stdout) == (0, "green\n"), proc.stderr
        code, _, err = setter.finish()
        assert code == 0, err


# -- security ----------------------------------------------------------------------------


def test_auth_key_file(cli, tmp_path):
    key, wrong = tmp_path / "key", tmp_path / "wrong"
    key.write_text("sesame\n")
    wrong.write_text("open barley\n")
    sub = cli("sub", "--bind", "localhost:0", "--auth-key-file", key, "--count", "1", "news")
    address = f"localhost:{sub.port()}"
    proc = yoton_cli("pub", "--connect", address, "--auth-key-file", wrong, "--timeout", "2", "news", "nope")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "authentication failed")
    proc = yoton_cli("pub", "--connect", address, "--auth-key-file", key, "news", "welcome")
    assert proc.returncode == 0, proc.stderr
    code, out, err = sub.finish()
    assert (code, out) == (0, "welcome\n"), err


def test_auth_key_matches_a_python_peer_with_the_same_key(peer, tmp_path):
    ctx, address = peer(auth_key=b"sesame")
    sub = yoton.SubChannel(ctx, "news")
    (tmp_path / "key").write_bytes(b"sesame\r\n")  # (one trailing newline is not part of the key)
    proc = yoton_cli("pub", "--connect", address, "--auth-key-file", tmp_path / "key", "news", "hi")
    assert proc.returncode == 0, proc.stderr
    assert sub.recv(WAIT) == "hi"


def test_tls(cli, tmp_path):
    trustme = pytest.importorskip("trustme", reason="trustme is a dev extra (pip install -e '.[dev]')")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    sub = cli("sub", "--bind", "tls://localhost:0", "--tls-cert", tmp_path / "server.pem", "--count", "1", "news")
    address = f"tls://localhost:{sub.port()}"
    proc = yoton_cli("pub", "--connect", address, "--timeout", "2", "news", "untrusted")
    assert proc.returncode == 1  # (the system's CAs do not know ours)
    one_error_line(proc.stderr, "TLS", "certificate")
    proc = yoton_cli("pub", "--connect", address, "--tls-ca", tmp_path / "ca.pem", "news", "secret")
    assert proc.returncode == 0, proc.stderr
    code, out, err = sub.finish()
    assert (code, out) == (0, "secret\n"), err


# -- bench and demo ----------------------------------------------------------------------


# -- monitor --------------------------------------------------------------------------


@pytest.fixture
def network(ctx):
    """A live three-context network A - B - C (all introspecting), with traffic:
    A publishes 'news' (C subscribes) every few ms, B serves 'calc', C holds a
    state. Returns (a, b, c, the address of a second bind of A for the monitor)."""
    a, b, c = ctx(introspect=True), ctx(introspect=True), ctx(introspect=True)
    ab = a.bind("127.0.0.1:0")
    yoton.Context.connect(b, f"127.0.0.1:{ab.port1}", timeout=WAIT)
    bc = b.bind("127.0.0.1:0")
    c.connect(f"127.0.0.1:{bc.port1}", timeout=WAIT)
    for_monitor = a.bind("127.0.0.1:0")
    pub, sub = yoton.PubChannel(a, "news"), yoton.SubChannel(c, "news")

    class Calc(yoton.RepChannel):
        def add(self, x, y):
            return x + y

    Calc(b, "calc").set_mode("thread")
    yoton.StateChannel(c, "mode").send("on")
    stop = threading.Event()

    def feed():
        while not stop.wait(0.005):
            pub.send("tick")
            sub.recv_all()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    yield a, b, c, f"127.0.0.1:{for_monitor.port1}"
    stop.set()
    feeder.join(WAIT)


def hexid(context) -> str:
    return f"{context.id:016x}"


def test_monitor_json_snapshots_of_a_live_three_context_network(network):
    a, b, c, address = network
    proc = yoton_cli("monitor", "--connect", address, "--json", "--count", "2", "--interval", "0.5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    for snap in (first, second):
        contexts = {ctx["id"]: ctx for ctx in snap["contexts"]}
        assert set(contexts) == {hexid(a), hexid(b), hexid(c)}
        # A: its link to B and the monitor's; B: to A and C; C: to B.
        peers = {cid: {conn["peer"] for conn in ctx["connections"]} for cid, ctx in contexts.items()}
        assert hexid(b) in peers[hexid(a)] and len(peers[hexid(a)]) == 2
        assert peers[hexid(b)] == {hexid(a), hexid(c)} and peers[hexid(c)] == {hexid(b)}
        kinds = {cid: {(ch["kind"], ch["slot"]) for ch in ctx["channels"]} for cid, ctx in contexts.items()}
        assert kinds[hexid(a)] == {("PubChannel", "news.txt.pub-sub")}
        assert kinds[hexid(b)] == {("Calc", "calc.obj.req-rep")}
        assert kinds[hexid(c)] == {("SubChannel", "news.txt.pub-sub"), ("StateChannel", "mode.txt.state")}
    assert second["time"] > first["time"]
    # Rates from the second snapshot on: the news flows A -> B -> C.
    contexts = {ctx["id"]: ctx for ctx in second["contexts"]}
    (news_out,) = contexts[hexid(a)]["channels"]
    news_in = next(ch for ch in contexts[hexid(c)]["channels"] if ch["kind"] == "SubChannel")
    assert news_out["rates"]["sent"] > 10 and news_in["rates"]["received"] > 10
    (b_to_c,) = [conn for conn in contexts[hexid(b)]["connections"] if conn["peer"] == hexid(c)]
    assert b_to_c["rates"]["packages_out"] > 10 and b_to_c["rates"]["bytes_out"] > 100
    assert all("rates" not in conn for ctx in first["contexts"] for conn in ctx["connections"])
    assert "connected to" in proc.stderr


def test_monitor_prints_text_tables_when_not_on_a_terminal(network):
    a, b, c, address = network
    proc = yoton_cli("monitor", "--connect", address, "--count", "2", "--interval", "0.3")
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split("yoton network via ")[1:]
    assert "3 contexts" in first
    for context in (a, b, c):
        assert f"context {hexid(context)}" in first
    for word in ("CONNECTED", "PubChannel", "news.txt.pub-sub", "Calc", "calc.obj.req-rep", "StateChannel", "msgs in"):
        assert word in first
    assert "/s" in second  # (rates from the second on)


def test_monitor_live_view_on_a_terminal(network):
    """On a terminal the view is redrawn in place: rich's tables if installed, else text."""
    import pty
    import select

    a, b, c, address = network
    outputs = {}
    for mode in ("rich", "plain"):
        if mode == "rich" and importlib.util.find_spec("rich") is None:
            continue
        if outputs:  # (a bind serves one peer: the second monitor gets one of its own)
            address = f"127.0.0.1:{a.bind('127.0.0.1:0').port1}"
        master, slave = pty.openpty()
        extra = ["--plain"] if mode == "plain" else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "yoton", "monitor", "--connect", address, "--count", "2", "--interval", "0.3"]
            + extra,
            stdout=slave,
            stderr=subprocess.PIPE,
            env=dict(ENV, COLUMNS="200", LINES="80", TERM="xterm"),
        )
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], WAIT)
            if not ready:
                break
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # (the child closed the terminal)
                break
            if not data:
                break
            out += data
        os.close(master)
        assert proc.wait(WAIT) == 0, proc.stderr.read()
        proc.stderr.close()
        outputs[mode] = text = out.decode("utf-8", "replace")
        for context in (a, b, c):
            assert hexid(context) in text
        assert "news.txt.pub-sub" in text and "connections" in text
    assert outputs["plain"].count("\x1b[H\x1b[J") == 2  # (redrawn from the top each time)
    if "rich" in outputs:
        assert "┃" in outputs["rich"] or "|" in outputs["rich"]  # (tables)


def test_monitor_of_a_network_where_nobody_introspects(peer):
    context, address = peer()
    proc = yoton_cli("monitor", "--connect", address, "--count", "1", "--interval", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["contexts"] == []
    proc = yoton_cli("monitor", "--connect", "127.0.0.1:1", "--timeout", "0.3")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "connect")


def test_bench_json_results_and_plain_progress():
    proc = yoton_cli("bench", "--duration", "0.2", "--json", "--plain", timeout=60)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert results["oneway_100B"]["msgs_per_s"] > 0 and results["oneway_100B"]["messages"] > 0
    assert 0 < results["reqrep_100B"]["median_us"] <= results["reqrep_100B"]["p99_us"]
    assert "one-way pub/sub, 100 B" in proc.stderr and "req/rep round trip" in proc.stderr


def test_bench_progress_with_rich():
    pytest.importorskip("rich", reason="rich is the optional 'cli' extra (pip install -e '.[cli]')")
    proc = yoton_cli("bench", "--duration", "0.2", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("one-way pub/sub, 100 B messages: ")
    assert "msgs/s" in proc.stderr and "median" in proc.stderr  # (rich's bars carry the summaries)


def test_demo_still_runs():
    proc = yoton_cli("demo", timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[worker] served 3 requests" in proc.stdout


def test_the_monitor_prints_no_control_characters_from_remote_contexts():
    from yoton.cli.monitor import channel_row, connection_row, context_title

    evil = "x\x1b]0;owned\x07\x1b[2J\x9b31m"
    cells = [
        context_title({"id": evil, "program": evil, "host": evil}),
        *connection_row({"name": evil, "remote": evil, "state": evil}),
        *channel_row({"kind": evil, "slot": evil}),
        *connection_row({"name": 7}),  # (not even a string)
    ]
    for cell in cells:
        assert isinstance(cell, str) and not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in cell), repr(cell)
