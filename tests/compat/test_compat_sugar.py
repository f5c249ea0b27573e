"""FileWrapper, SimpleSocket, RequestServer / do_request behave as in yoton 2.2.

Each scenario runs as a script with yoton 2.2 and with ours; both must print
the same. (The rows marked "breaks" in the comparison of the two.)
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
import threading

import pytest
from compat_run import run_script, script_command
from helpers import wait_until

import yoton

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- FileWrapper -------------------------------------------------------------------------------

FILEWRAPPER = textwrap.dedent("""
    import sys, time
    import yoton

    a, b = yoton.Context(), yoton.Context()
    c = a.bind("127.0.0.1:%s" % sys.argv[1])
    b.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
    pub, sub = yoton.PubChannel(a, "in"), yoton.SubChannel(b, "in")
    echo_pub, echo_sub = yoton.PubChannel(b, "echo"), yoton.SubChannel(a, "echo")
    stdin = yoton.FileWrapper(sub, echo=echo_pub, isatty=True)
    for m in ["one", "two\\nthree\\n", "four\\n", "x", "0123456789", "rest"]:
        pub.send(m)
    deadline = time.time() + 10
    while sub.pending < 6 and time.time() < deadline:
        time.sleep(0.01)
    print(repr(stdin.readline()))    # one message, newline appended
    print(repr(stdin.readline()))    # one message, even with two lines in it
    print(repr(stdin.read()))        # the next message only
    print(repr(stdin.readline(1)))
    print(repr(stdin.readline(4)))   # the rest of the message is dropped
    print(repr(stdin.read(False)))
    print(repr(stdin.read()))        # nothing left: '' at once
    deadline = time.time() + 10
    while echo_sub.pending < 6 and time.time() < deadline:
        time.sleep(0.01)
    print(echo_sub.recv_all())       # what was read, message by message
    print(stdin.isatty(), stdin.encoding, stdin.errors, stdin.newlines, stdin.softspace)
    stdin.softspace = 1
    print(stdin.softspace)
    for echo in (sys.stdout, yoton.SubChannel(b, "other")):
        try:
            yoton.FileWrapper(sub, echo=echo)
        except ValueError:
            print("ValueError")
    out = yoton.FileWrapper(yoton.PubChannel(a, "out"), 4)
    got = yoton.SubChannel(b, "out")
    out.write("abcdefghij")
    out.write("")
    out.writelines(["k", "lm"])
    out.flush()
    deadline = time.time() + 10
    while got.pending < 5 and time.time() < deadline:
        time.sleep(0.01)
    print(got.recv_all())
    stdin.close()
    print(stdin.closed, sub.closed)
""")


def test_filewrapper_reads_message_by_message_and_echoes_what_it_reads(run_both):
    orig, ours = run_both(FILEWRAPPER, _free_port())
    assert "'one\\n'" in orig  # (the scenario ran)
    assert ours == orig


def test_input_in_a_kernel_like_child_echoes_the_answer(ctx):
    """pyzo's kernel: sys.stdin = FileWrapper(ctrl_command, echo=strm_echo); input() echoes."""
    code = textwrap.dedent("""
        import sys, yoton
        ct = yoton.Context()
        command = yoton.SubChannel(ct, "ctrl-command")
        out, echo = yoton.PubChannel(ct, "strm-out"), yoton.PubChannel(ct, "strm-echo")
        ct.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
        real = sys.stdout
        sys.stdin = yoton.FileWrapper(command, echo=echo, isatty=True)
        sys.stdout = yoton.FileWrapper(out, 256, isatty=True)
        name = input("name? ")
        print("hello " + name.upper())
        sys.stdout.flush()
        sys.stdout = real
        ct.close()
    """)
    here = ctx()
    conn = here.bind("127.0.0.1:0")
    command = yoton.PubChannel(here, "ctrl-command")
    out, echo = yoton.SubChannel(here, "strm-out"), yoton.SubChannel(here, "strm-echo")
    argv, env, cwd = script_command("ours", code, conn.port1)
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: conn.is_connected or proc.poll() is not None, 10, "the child to connect")
        got = []
        wait_until(lambda: got.extend(out.recv_all()) or "".join(got) == "name? ", 10, "the prompt")
        command.send("bob\n")
        assert echo.recv(10) == "bob\n"  # the kernel echoes what input() read
        wait_until(lambda: got.extend(out.recv_all()) or "".join(got).endswith("hello BOB\n"), 10, "the answer")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr


# -- SimpleSocket --------------------------------------------------------------------------------


def test_simple_sockets_of_both_talk(ctx):
    code = textwrap.dedent("""
        import sys, yoton
        s = yoton.SimpleSocket()
        s.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
        s.send("hello from " + yoton.__version__)
        print(s.recv(10.0))
        s.flush()
        s.close()
    """)
    for impl in ("orig", "ours"):
        here = yoton.SimpleSocket()
        try:
            conn = here.bind("127.0.0.1:0")
            box = []
            t = threading.Thread(target=lambda: box.append(run_script(impl, code, conn.port1)))
            t.start()
            got = here.recv(15)
            here.send("hello back")
            t.join(30)
            version = "2.2" if impl == "orig" else yoton.__version__
            assert got == "hello from " + version
            assert box and box[0].stdout == "hello back\n"
        finally:
            here.close()


def test_simple_socket_recv_default_does_not_block():
    code = textwrap.dedent("""
        import time, yoton
        s = yoton.SimpleSocket()
        t0 = time.time()
        print(repr(s.recv()), time.time() - t0 < 0.5)
        print(repr(s.recv(False)))
        t0 = time.time()
        print(repr(s.recv(0.2)), time.time() - t0 >= 0.15)
    """)
    assert run_script("ours", code).stdout == run_script("orig", code).stdout == "'' True\n''\n'' True\n"


# -- RequestServer / do_request --------------------------------------------------------------------

CLIENTSERVER = textwrap.dedent("""
    import sys, time, socket
    import yoton
    from yoton.clientserver import RequestServer, do_request

    addr = "127.0.0.1:%s" % sys.argv[1]
    class Server(RequestServer):
        def handle_request(self, request):
            print("handler got", repr(request), flush=True)
            if request.strip() == "stopserver":
                self.stop()
            return "got " + request
    server = Server(addr)
    server.start()
    for i in range(500):  # (yoton 2.2 listens once its thread runs)
        try:
            do_request(addr, "probe", 5)
            break
        except RuntimeError:
            time.sleep(0.01)
    print(repr(do_request(addr, "hello")))
    print(repr(do_request(addr, "hello\\r\\n", 5)))
    print(repr(do_request(addr, "two\\r\\nlines", 5)))
    print(repr(do_request(addr, "", 5)))
    for bad in (b"bytes", 42):
        try:
            do_request(addr, bad)
        except ValueError:
            print("ValueError for", type(bad).__name__)
    # pyzo's way to stop its command server: stop(), then a last request to wake it
    # (pyzo waits 0.1 s for the answer; 1 s here: a loaded test machine is slower)
    server.stop()
    print(repr(do_request(addr, "stopserver", 1.0)))
    server.join(5)
    print("server alive:", server.is_alive())
    try:
        do_request(addr, "anyone?", 0.5)
    except RuntimeError:
        print("RuntimeError: nobody listens")
    # a silent server: the timeout gives what came ('' here)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    t0 = time.time()
    print(repr(do_request("127.0.0.1:%d" % silent.getsockname()[1], "hi", 0.3)), round(time.time() - t0, 1))
""")


def test_request_server_and_do_request_as_in_22(run_both):
    # The scenario has short timeouts (pyzo's) and a port found free beforehand: on a
    # loaded machine one run can miss one. A real difference shows in both attempts.
    for _attempt in range(2):
        orig, ours = run_both(CLIENTSERVER, _free_port())
        if ours == orig:
            break
    assert "'got hello\\r\\n'" in orig  # (the scenario ran)
    assert ours == orig


def test_default_handler_commands_work_with_the_crlf():
    # ours: 'stop' and 'wait' work through do_request (yoton 2.2 compared the text
    # with its CRLF, so they only worked for clients that sent none)
    server = yoton.RequestServer("127.0.0.1:0")
    server.start()
    host, port = server.address
    assert yoton.do_request(f"{host}:{port}", "stop", 5) == "Requested: stop\r\n"
    wait_until(lambda: not server.is_alive(), 5, "the server to stop")
