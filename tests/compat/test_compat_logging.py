"""A replier's error (and a failing event handler) is seen by a user who configured no logging.

yoton 2.2 printed them on stdout. Ours logs them on the "yoton" logger and adds
no handler to it, so with no logging configured Python's handler of last
resort shows them on stderr; configured logging takes them instead.
"""

from __future__ import annotations

import textwrap

import pytest
from compat_run import run_script

pytestmark = pytest.mark.timeout(60)

FAILING = textwrap.dedent("""
    import sys, yoton
    if sys.argv[1] == "configured":
        import logging
        logging.basicConfig(stream=sys.stdout, format="LOG %(levelname)s %(name)s %(message)s")
    a, b = yoton.Context(), yoton.Context()
    c = a.bind("127.0.0.1:0")
    b.connect("127.0.0.1:%d" % c.port1, timeout=5)
    class Replier(yoton.RepChannel):
        def key(self):
            return {}["k"]
    Replier(a, "r").set_mode("thread")
    print("requester got", repr(str(yoton.ReqChannel(b, "r").key().exception(5))))
    signal = yoton.Signal()
    signal.bind(lambda: 1 / 0)
    signal.emit()
    yoton.process_events()
    print("done")
""")


def test_errors_reach_stderr_without_logging_configured():
    proc = run_script("ours", FAILING, "plain")
    assert proc.stdout.startswith("requester got \"'k'\\nline ")
    assert proc.stdout.endswith("done\n")
    err = proc.stderr
    assert "error handling request 'key'" in err and "KeyError: 'k'" in err  # with the traceback
    assert "Exception in event handler" in err and "ZeroDivisionError" in err


def test_configured_logging_takes_them_instead():
    proc = run_script("ours", FAILING, "configured")
    assert "LOG WARNING yoton yoton.RepChannel 'r.obj.req-rep': error handling request 'key'" in proc.stdout
    assert "LOG ERROR yoton Exception in event handler" in proc.stdout
    assert "error handling request" not in proc.stderr and "ZeroDivisionError" not in proc.stderr


def test_22_printed_them_on_stdout():
    # (the reference: why ours must not stay silent)
    proc = run_script("orig", FAILING.replace('print("done")', 'print("done", flush=True)'), "plain")
    assert "yoton.RepChannel: error handling request:" in proc.stdout
