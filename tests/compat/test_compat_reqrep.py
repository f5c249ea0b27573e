"""A failed request's text travels unchanged between yoton 2.2 and ours, both ways, and
each requester shows it as 2.2 does: ``str(future.exception())`` is the text."""

from __future__ import annotations

import textwrap
import threading

import compat_run
import pytest
from compat_run import run_script
from helpers import wait_until

import yoton

pytestmark = pytest.mark.timeout(60)


def test_orig_replier_error_reaches_our_requester_as_sent(ctx):
    code = textwrap.dedent("""
        import sys, time, yoton
        class Replier(yoton.RepChannel):
            def key(self):
                return {}["k"]
        ct = yoton.Context()
        Replier(ct, "x").set_mode("thread")
        ct.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
        deadline = time.time() + 10
        while ct.connection_count and time.time() < deadline:  # serve until the test closes
            time.sleep(0.02)
    """)
    a = ctx()
    conn = a.bind("127.0.0.1:0")
    box = []
    thread = threading.Thread(target=lambda: box.append(run_script("orig", code, conn.port1)), daemon=True)
    thread.start()
    wait_until(lambda: conn.is_connected, 15, "the original to connect")
    text = str(yoton.ReqChannel(a, "x").key().exception(10))
    a.close()
    thread.join(30)
    lines = (compat_run._CHECK + code).splitlines()  # (the script runs as python -c)
    line = next(number for number, source in enumerate(lines, 1) if 'return {}["k"]' in source)
    assert text == f"'k'\nline {line} of <string>."
    assert box and box[0].returncode == 0


def test_our_replier_error_reaches_the_orig_requester_as_sent(ctx):
    class Replier(yoton.RepChannel):
        def key(self):
            return {}["k"]

    code = textwrap.dedent("""
        import sys, yoton
        ct = yoton.Context()
        req = yoton.ReqChannel(ct, "x")
        ct.connect("127.0.0.1:%s" % sys.argv[1], timeout=5)
        error = req.key().exception(10)
        print(type(error).__name__, repr(str(error)))
    """)
    a = ctx()
    conn = a.bind("127.0.0.1:0")
    Replier(a, "x").set_mode("thread")
    line = Replier.key.__code__.co_firstlineno + 1
    text = f"'k'\nline {line} of {__file__}."
    assert run_script("orig", code, conn.port1).stdout == f"Exception {text!r}\n"
