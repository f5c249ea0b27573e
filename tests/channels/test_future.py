"""Future semantics without a network: a Future made with ``req_channel=None``.

Futures are PEP 3148 style: PENDING -> RUNNING -> FINISHED, or CANCELLED
while still pending. Done callbacks run through the yoton event queue, so
they are called by :func:`yoton.process_events`, never synchronously.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time

import pytest
from helpers import wait_until as wait_for

import yoton

pytestmark = pytest.mark.timeout(15)


def make_future(timeout=None):
    return yoton.Future(None, b"", 1, timeout=timeout)


def drain_events():
    """Run whatever is queued on the process-wide yoton event queue (a few rounds)."""
    for _ in range(3):
        yoton.process_events(False)


@pytest.fixture(autouse=True)
def _clean_event_queue():
    drain_events()
    yield
    drain_events()


def start_waiter(target):
    """Run target() in a thread; returns (thread, box) where box gets ('ok'|'exc', value)."""
    box = []

    def run():
        try:
            box.append(("ok", target()))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            box.append(("exc", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def blocked_waiters(future) -> int:
    """How many threads wait on the future's condition (CPython's Condition._waiters)."""
    return len(future._waiter._cond._waiters)


# -- construction and states -------------------------------------------------------


def test_new_future_is_pending():
    f = make_future()
    assert not f.done() and not f.running() and not f.cancelled()
    assert "PENDING" in repr(f)


def test_future_is_exported_from_channels():
    assert yoton.Future is yoton.channels.Future


# -- results and exceptions ---------------------------------------------------------


def test_set_result_then_result():
    f = make_future()
    f.set_result({"answer": (4, 2)})
    assert f.done() and not f.running() and not f.cancelled()
    assert f.result() == {"answer": (4, 2)}
    assert f.result(0) == {"answer": (4, 2)}
    assert f.exception() is None
    assert "FINISHED" in repr(f)


def test_set_result_none_is_a_result():
    f = make_future()
    f.set_result(None)
    assert f.done()
    assert f.result(0) is None and f.exception(0) is None


def test_set_exception_then_result_raises():
    f = make_future()
    error = yoton.RemoteError("ValueError: boom")
    f.set_exception(error)
    assert f.done() and not f.cancelled()
    assert f.exception() is error
    with pytest.raises(yoton.RemoteError, match="boom") as info:
        f.result()
    assert info.value is error
    assert isinstance(error, RuntimeError) and isinstance(error, yoton.YotonError)


def test_only_the_first_completion_counts():
    f = make_future()
    f.set_result(1)
    f.set_result(2)
    f.set_exception(ValueError("late"))
    assert f.result() == 1 and f.exception() is None
    assert f.cancel() is False


def test_result_timeout_raises_yoton_timeout_error():
    f = make_future()
    t0 = time.monotonic()
    with pytest.raises(yoton.TimeoutError) as info:
        f.result(0.05)
    assert time.monotonic() - t0 >= 0.04
    assert isinstance(info.value, concurrent.futures.TimeoutError)
    assert isinstance(info.value, TimeoutError)  # the builtin too (what asyncio.timeout() raises)
    assert isinstance(info.value, yoton.YotonError)
    with pytest.raises(concurrent.futures.TimeoutError):
        f.exception(0.01)
    assert not f.done()  # a timeout does not cancel


def test_result_zero_timeout_on_pending():
    with pytest.raises(yoton.TimeoutError):
        make_future().result(0)


def test_result_from_another_thread_is_woken_by_set_result():
    f = make_future()
    thread, box = start_waiter(lambda: f.result(10))
    wait_for(lambda: blocked_waiters(f) == 1, what="the thread to block in result()")
    f.set_result("late answer")
    thread.join(5)
    assert box == [("ok", "late answer")]


def test_exception_from_another_thread_is_woken_by_set_exception():
    f = make_future()
    thread, box = start_waiter(lambda: f.exception(10))
    wait_for(lambda: blocked_waiters(f) == 1, what="the thread to block in exception()")
    err = yoton.RemoteError("remote says no")
    f.set_exception(err)
    thread.join(5)
    assert box == [("ok", err)]


# -- cancelling ------------------------------------------------------------------------


def test_cancel_pending():
    f = make_future()
    assert f.cancel() is True
    assert f.cancelled() and f.done() and not f.running()
    assert f.cancel() is True  # again: still cancelled
    with pytest.raises(yoton.CancelledError) as info:
        f.result()
    assert isinstance(info.value, concurrent.futures.CancelledError)
    with pytest.raises(yoton.CancelledError):
        f.exception()
    assert "CANCELLED" in repr(f)


def test_cancel_wakes_a_thread_blocked_in_result():
    f = make_future()
    thread, box = start_waiter(lambda: f.result(10))
    wait_for(lambda: blocked_waiters(f) == 1, what="the thread to block in result()")
    t0 = time.monotonic()
    assert f.cancel() is True
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - t0 < 2.0
    assert len(box) == 1 and box[0][0] == "exc"
    assert isinstance(box[0][1], yoton.CancelledError)


def test_set_result_after_cancel_is_ignored():
    f = make_future()
    f.cancel()
    f.set_result(5)
    f.set_exception(ValueError("x"))
    assert f.cancelled()
    with pytest.raises(yoton.CancelledError):
        f.result(0)


def test_set_running_or_notify_cancel():
    f = make_future()
    assert f.set_running_or_notify_cancel() is True
    assert f.running() and not f.done()
    assert "RUNNING" in repr(f)
    with pytest.raises(RuntimeError):
        f.set_running_or_notify_cancel()  # not PENDING any more
    # a request a replier is working on cannot be cancelled
    assert f.cancel() is False
    assert f.running() and not f.cancelled()
    f.set_result(3)
    assert f.done() and not f.running() and f.result() == 3


def test_set_running_or_notify_cancel_on_cancelled():
    f = make_future()
    f.cancel()
    assert f.set_running_or_notify_cancel() is False
    assert f.cancelled() and not f.running()


def test_cancel_after_finish_returns_false():
    f = make_future()
    f.set_exception(yoton.RemoteError("x"))
    assert f.cancel() is False
    assert not f.cancelled()


# -- result_or_cancel ----------------------------------------------------------------


def test_result_or_cancel_returns_result():
    f = make_future()
    f.set_result("fine")
    assert f.result_or_cancel(0.1) == "fine"


def test_result_or_cancel_cancels_on_timeout():
    f = make_future()
    assert f.result_or_cancel(0.05) is None
    assert f.cancelled()


def test_result_or_cancel_waits_for_a_result_from_another_thread():
    f = make_future()
    thread, box = start_waiter(lambda: f.result_or_cancel(10))
    wait_for(lambda: blocked_waiters(f) == 1, what="the thread to block")
    f.set_result(7)
    thread.join(5)
    assert box == [("ok", 7)]


def test_result_or_cancel_on_running_gives_none_without_cancelling():
    f = make_future()
    f.set_running_or_notify_cancel()
    assert f.result_or_cancel(0.05) is None
    assert f.running() and not f.cancelled()


def test_result_or_cancel_raises_remote_errors():
    f = make_future()
    f.set_exception(yoton.RemoteError("bad"))
    with pytest.raises(yoton.RemoteError):
        f.result_or_cancel(0.1)


# -- done callbacks --------------------------------------------------------------------


def test_done_callback_runs_once_through_process_events():
    f = make_future()
    calls = []
    f.add_done_callback(calls.append)
    drain_events()
    assert calls == []  # not done yet
    f.set_result(1)
    assert calls == []  # never synchronously: through the event queue
    yoton.process_events(False)
    assert calls == [f]
    f.set_result(2)  # ignored: already done
    drain_events()
    assert calls == [f]


def test_done_callback_runs_in_the_thread_that_processes_events():
    f = make_future()
    threads = []
    f.add_done_callback(lambda fut: threads.append(threading.current_thread()))
    setter = threading.Thread(target=f.set_result, args=(1,))
    setter.start()
    setter.join(5)
    assert threads == []
    yoton.process_events(False)
    assert threads == [threading.current_thread()]


def test_several_done_callbacks_in_order():
    f = make_future()
    calls = []
    for i in range(3):
        f.add_done_callback(lambda fut, i=i: calls.append(i))
    f.set_exception(yoton.RemoteError("x"))
    drain_events()
    assert calls == [0, 1, 2]


def test_done_callback_added_after_completion():
    f = make_future()
    f.set_result(1)
    drain_events()
    calls = []
    f.add_done_callback(calls.append)
    assert calls == []
    yoton.process_events(False)
    assert calls == [f]
    drain_events()
    assert calls == [f]


def test_done_callback_on_cancel():
    f = make_future()
    calls = []
    f.add_done_callback(lambda fut: calls.append(fut.cancelled()))
    f.cancel()
    f.cancel()
    drain_events()
    assert calls == [True]


def test_raising_done_callback_is_logged_not_propagated(caplog):
    f = make_future()
    after = []

    def bad(fut):
        raise ZeroDivisionError("callback exploded")

    f.add_done_callback(bad)
    f.add_done_callback(after.append)
    f.set_result(1)
    with caplog.at_level(logging.ERROR, logger="yoton"):
        yoton.process_events(False)  # must not raise
    assert after == [f]  # the next callback still ran
    records = [r for r in caplog.records if r.name == "yoton" and r.exc_info]
    assert records, caplog.text
    assert any(r.exc_info[0] is ZeroDivisionError for r in records)
    assert "callback exploded" in caplog.text


def test_timeout_message_names_the_timeout_given(ctx):
    # (it used to report what was left of it: "within 0.0 s")
    a = ctx()
    req = yoton.ReqChannel(a, "nobody")  # no replier, no connection: the request waits
    f = req.anything()
    with pytest.raises(yoton.TimeoutError, match=r"within 0\.25 s"):
        f.result(0.25)
    with pytest.raises(yoton.TimeoutError, match=r"within 0\.1 s"):
        f.exception(0.1)
    with pytest.raises(yoton.TimeoutError, match=r"within 0 s"):
        f.result(0)
    with pytest.raises(yoton.TimeoutError, match=r"within 0\.05 s"):
        make_future().result(0.05)


def test_edge_cases_as_in_22():
    from _orig import run_orig

    code = (
        "import yoton\n"
        "f = yoton.Future(None, b'', 1)\n"
        "for timeout in (0, -1, 0.0):\n"
        "    try:\n"
        "        f.set_auto_cancel_timeout(timeout)\n"
        "        print('accepted', timeout)\n"
        "    except ValueError:\n"
        "        print('ValueError', timeout)\n"
        "f.set_auto_cancel_timeout(None)\n"
        "f.set_auto_cancel_timeout(2.5)\n"
        "for fn in (5, None, 'text'):\n"
        "    try:\n"
        "        f.add_done_callback(fn)\n"
        "        print('accepted', repr(fn))\n"
        "    except ValueError:\n"
        "        print('ValueError', repr(fn))\n"
        "try:\n"
        "    f.set_exception(5)\n"
        "except ValueError:\n"
        "    print('ValueError for 5')\n"
        "f.set_running_or_notify_cancel()\n"
        "f.set_exception('remote text')\n"
        "e = f.exception(0)\n"
        "print(type(e).__name__, repr(str(e)))\n"
    )
    expected = run_orig(code)
    assert "ValueError 0" in expected and "Exception 'remote text'" in expected
    out = []
    namespace = {"yoton": yoton, "print": lambda *args: out.append(" ".join(map(str, args)))}
    exec(code.replace("import yoton\n", ""), namespace)
    assert "\n".join(out) + "\n" == expected
