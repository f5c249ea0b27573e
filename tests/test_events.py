"""Tests for yoton.events: signals, timers, call_later and the event loop.

All waiting is bounded: helpers process events until a condition holds or a
deadline passes, and timing assertions use generous tolerances.
"""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
import weakref

import pytest

from yoton import events
from yoton.events import (
    Signal,
    Timer,
    call_later,
    embed_event_loop,
    is_idle,
    post_event,
    process_events,
    start_event_loop,
    stop_event_loop,
)

DEADLINE = 5.0  # upper bound for anything that should happen "soon"


def run_until(predicate, timeout=DEADLINE, step=0.02):
    """Process events until ``predicate()`` is true; return whether it became true."""
    end = time.monotonic() + timeout
    while not predicate():
        remaining = end - time.monotonic()
        if remaining <= 0:
            return False
        process_events(min(step, remaining))
    return True


def run_for(duration):
    """Process events (blocking between them) for ``duration`` seconds."""
    end = time.monotonic() + duration
    while True:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        process_events(remaining)


def drain():
    for _ in range(1000):
        if is_idle():
            return
        process_events()


@pytest.fixture(autouse=True)
def clean_queue():
    embed_event_loop(None)
    drain()
    yield
    embed_event_loop(None)
    drain()


@pytest.fixture
def errors(caplog):
    caplog.set_level(logging.ERROR, logger="yoton")
    return caplog


class Recorder:
    """Callable that records its calls, thread-safely."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls.append((args, kwargs))

    @property
    def count(self):
        return len(self.calls)


# ---------------------------------------------------------------------------
# Signal
# ---------------------------------------------------------------------------


def test_bind_requires_callable():
    sig = Signal()
    with pytest.raises(ValueError):
        sig.bind(3)
    with pytest.raises(ValueError):
        sig.bind(None)


def test_type_property():
    assert Signal().type is Signal
    assert Timer().type is Timer


def test_emit_is_queued_with_args():
    sig = Signal()
    rec = Recorder()
    sig.bind(rec)
    sig.emit(1, "a", key=2)
    assert rec.calls == []  # nothing runs before events are processed
    assert not is_idle()
    process_events()
    assert rec.calls == [((1, "a"), {"key": 2})]
    assert is_idle()


def test_emit_queues_one_event_per_handler():
    sig = Signal()
    recs = [Recorder() for _ in range(3)]
    for rec in recs:
        sig.bind(rec)
    sig.emit(7)
    assert events._events.pending() == 3
    process_events()
    assert [rec.calls for rec in recs] == [[((7,), {})]] * 3


def test_emit_without_handlers_queues_nothing():
    Signal().emit(1)
    assert is_idle()


def test_emit_now_calls_directly_in_calling_thread():
    sig = Signal()
    threads = []
    sig.bind(lambda *a, **k: threads.append((threading.current_thread(), a, k)))
    sig.emit_now(1, x=2)
    assert threads == [(threading.current_thread(), (1,), {"x": 2})]
    assert is_idle()


def test_bind_twice_is_noop_and_unbind():
    sig = Signal()
    rec1, rec2 = Recorder(), Recorder()
    sig.bind(rec1)
    sig.bind(rec1)
    sig.bind(rec2)
    sig.emit_now()
    assert (rec1.count, rec2.count) == (1, 1)

    sig.unbind(rec1)
    sig.emit_now()
    assert (rec1.count, rec2.count) == (1, 2)

    sig.unbind(rec1)  # not bound any more: harmless
    sig.unbind(lambda: None)  # never bound: harmless
    sig.bind(rec1)
    sig.unbind()  # removes everything
    sig.emit_now()
    sig.emit()
    process_events()
    assert (rec1.count, rec2.count) == (1, 2)


def test_bound_methods_bind_once_per_object():
    class Obj:
        def __init__(self):
            self.n = 0

        def handler(self):
            self.n += 1

    a, b = Obj(), Obj()
    sig = Signal()
    sig.bind(a.handler)
    sig.bind(a.handler)  # a new bound-method object, same handler
    sig.bind(b.handler)
    sig.emit_now()
    assert (a.n, b.n) == (1, 1)
    sig.unbind(Obj().handler)  # another instance: does not match
    sig.unbind(a.handler)
    sig.emit_now()
    assert (a.n, b.n) == (1, 2)


def test_handler_may_unbind_itself_during_emit_now():
    sig = Signal()
    calls = []

    def once():
        calls.append("once")
        sig.unbind(once)

    sig.bind(once)
    sig.bind(lambda: calls.append("other"))
    sig.emit_now()
    sig.emit_now()
    assert calls == ["once", "other", "other"]


def test_emit_from_many_threads_each_handled_once():
    sig = Signal()
    rec = Recorder()
    sig.bind(rec)
    n_threads, per_thread = 8, 250
    barrier = threading.Barrier(n_threads)

    def worker(tid):
        barrier.wait(DEADLINE)
        for i in range(per_thread):
            sig.emit(tid, i)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    # Process concurrently with the emitters.
    assert run_until(lambda: rec.count >= n_threads * per_thread)
    for t in threads:
        t.join(DEADLINE)
        assert not t.is_alive()
    drain()
    counts = collections.Counter(args for args, _ in rec.calls)
    assert len(rec.calls) == n_threads * per_thread
    assert set(counts) == {(t, i) for t in range(n_threads) for i in range(per_thread)}
    assert set(counts.values()) == {1}
    # Per thread, emission order is preserved.
    for tid in range(n_threads):
        seq = [args[1] for args, _ in rec.calls if args[0] == tid]
        assert seq == list(range(per_thread))


# ---------------------------------------------------------------------------
# Weak references to bound methods
# ---------------------------------------------------------------------------


class Target:
    calls = 0

    def handler(self, *args):
        Target.calls += 1


def test_bound_method_does_not_keep_object_alive():
    Target.calls = 0
    sig = Signal()
    obj = Target()
    ref = weakref.ref(obj)
    sig.bind(obj.handler)
    sig.emit_now()
    assert Target.calls == 1
    del obj
    gc.collect()
    assert ref() is None
    sig.emit()
    sig.emit_now()
    process_events()
    assert Target.calls == 1
    assert sig._handlers == ()  # dead handler dropped


def test_object_deleted_after_emit_is_not_called():
    Target.calls = 0
    sig = Signal()
    obj = Target()
    ref = weakref.ref(obj)
    sig.bind(obj.handler)
    sig.emit(1)  # queued while the object is alive
    del obj
    gc.collect()
    assert ref() is None  # the queued event does not keep it alive either
    process_events()
    assert Target.calls == 0


def test_plain_callables_are_held_strongly():
    sig = Signal()
    hits = []
    sig.bind(lambda: hits.append(1))

    class CallableObj:
        def __call__(self):
            hits.append(2)

    sig.bind(CallableObj())
    gc.collect()
    sig.emit()
    process_events()
    assert sorted(hits) == [1, 2]


def test_method_of_object_without_weakref_support_is_held_strongly():
    class Slotted:
        __slots__ = ("hits",)

        def __init__(self):
            self.hits = 0

        def handler(self):
            self.hits += 1

    sig = Signal()
    obj = Slotted()
    sig.bind(obj.handler)
    sig.bind(obj.handler)
    sig.emit_now()
    assert obj.hits == 1
    sig.unbind(obj.handler)
    sig.emit_now()
    assert obj.hits == 1


# ---------------------------------------------------------------------------
# Exceptions in handlers
# ---------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def test_exception_in_queued_handler_is_logged_and_processing_continues(errors):
    sig = Signal()
    rec = Recorder()
    sig.bind(_boom)
    sig.bind(rec)
    sig.emit(1)
    call_later(_boom)
    call_later(rec, 0, "after")
    process_events()  # must not raise
    assert rec.calls == [((1,), {}), (("after",), {})]
    records = [r for r in errors.records if r.name == "yoton"]
    assert len(records) == 2
    assert all(r.levelno == logging.ERROR and r.exc_info for r in records)
    assert all(isinstance(r.exc_info[1], RuntimeError) for r in records)


def test_exception_in_emit_now_is_logged_not_raised(errors):
    sig = Signal()
    rec = Recorder()
    sig.bind(_boom)
    sig.bind(rec)
    sig.emit_now()
    assert rec.count == 1
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in errors.records)


def test_base_exception_keeps_rest_of_batch():
    order = []

    def interrupt():
        raise KeyboardInterrupt

    call_later(order.append, 0, "a")
    call_later(interrupt)
    call_later(order.append, 0, "b")
    with pytest.raises(KeyboardInterrupt):
        process_events()
    assert order == ["a"]
    process_events()
    assert order == ["a", "b"]


# ---------------------------------------------------------------------------
# Timer
# ---------------------------------------------------------------------------


def test_timer_defaults_and_properties():
    t = Timer()
    assert t.interval == 1.0
    assert t.oneshot is True
    assert t.running is False
    t.oneshot = 0
    assert t.oneshot is False
    t.interval = 2
    assert t.interval == 2.0
    t.interval = 0
    assert t.interval == 0.0


@pytest.mark.parametrize("bad", [-1, -0.01, "a", None, float("nan"), float("inf"), True, [1]])
def test_timer_interval_validation(bad):
    t = Timer(0.5)
    with pytest.raises(ValueError):
        t.interval = bad
    assert t.interval == 0.5
    if bad is not None:  # start(None) means "keep the current interval"
        with pytest.raises(ValueError):
            t.start(bad)
        assert not t.running
    with pytest.raises(ValueError):
        Timer(bad)


def test_timer_oneshot_fires_once_without_args():
    t = Timer(0.05)
    rec = Recorder()
    t.bind(rec)
    t0 = time.monotonic()
    t.start()
    assert t.running
    assert run_until(lambda: rec.count >= 1)
    elapsed = time.monotonic() - t0
    assert 0.045 <= elapsed < DEADLINE
    assert rec.calls == [((), {})]
    assert not t.running
    run_for(0.2)
    assert rec.count == 1


def test_timer_repeats_until_stopped():
    t = Timer(0.02, oneshot=False)
    rec = Recorder()
    t.bind(rec)
    try:
        t0 = time.monotonic()
        t.start()
        assert run_until(lambda: rec.count >= 5)
        elapsed = time.monotonic() - t0
        assert elapsed >= 5 * 0.02 - 0.005
        assert t.running
    finally:
        t.stop()
    assert not t.running
    n = rec.count
    run_for(0.15)  # an expiry already queued at stop() is discarded too
    assert rec.count == n


def test_timer_handler_can_stop_repeating_timer():
    t = Timer(0.01, oneshot=False)
    hits = []

    def handler():
        hits.append(1)
        if len(hits) == 3:
            t.stop()

    t.bind(handler)
    try:
        t.start()
        assert run_until(lambda: len(hits) >= 3)
        run_for(0.1)
        assert len(hits) == 3
        assert not t.running
    finally:
        t.stop()


def test_timer_restart_resets_deadline():
    t = Timer(0.3)
    fired = []
    t.bind(lambda: fired.append(time.monotonic()))
    t.start()
    run_for(0.15)
    assert fired == []
    t1 = time.monotonic()
    t.start()  # restart: deadline is now t1 + 0.3
    assert run_until(lambda: fired, timeout=DEADLINE)
    assert fired[0] - t1 >= 0.29
    run_for(0.1)
    assert len(fired) == 1


def test_timer_start_sets_interval_and_oneshot():
    t = Timer(10.0)
    rec = Recorder()
    t.bind(rec)
    try:
        t.start(0.02, False)
        assert t.interval == 0.02 and t.oneshot is False
        assert run_until(lambda: rec.count >= 2)
    finally:
        t.stop()


def test_timer_stop_before_expiry():
    t = Timer(0.05)
    rec = Recorder()
    t.bind(rec)
    t.start()
    t.stop()
    assert not t.running
    run_for(0.15)
    assert rec.count == 0


def test_running_timer_without_references_still_fires():
    hits = []
    t = Timer(0.03)
    t.bind(lambda: hits.append(1))
    t.start()
    del t
    gc.collect()
    assert run_until(lambda: hits)


def test_many_restarts_keep_timer_heap_small():
    t = Timer(5.0)
    for _ in range(2000):
        t.start()
    t.stop()
    assert len(events._scheduler._heap) < 500


def test_timer_expiry_wakes_blocking_process_events():
    t = Timer(0.05)
    rec = Recorder()
    t.bind(rec)
    watchdog = threading.Timer(DEADLINE, stop_event_loop)
    watchdog.start()
    try:
        t0 = time.monotonic()
        t.start()
        process_events(True)
        elapsed = time.monotonic() - t0
    finally:
        watchdog.cancel()
    assert rec.count == 1
    assert 0.045 <= elapsed < DEADLINE - 1


# ---------------------------------------------------------------------------
# call_later and post_event
# ---------------------------------------------------------------------------


def test_call_later_zero_and_negative_ordering():
    order = []
    call_later(order.append, 0, "a")
    call_later(order.append, 0.0, "b")
    call_later(order.append, -1, "front")
    assert order == []
    process_events()
    assert order == ["front", "a", "b"]


def test_call_later_passes_args_and_kwargs():
    rec = Recorder()
    call_later(rec, 0, 1, 2, x=3)
    process_events()
    assert rec.calls == [((1, 2), {"x": 3})]


def test_call_later_requires_callable():
    with pytest.raises(ValueError):
        call_later("nope")


def test_call_later_positive_delay():
    fired = []
    t0 = time.monotonic()
    call_later(lambda: fired.append(time.monotonic()), 0.1)
    process_events()
    assert fired == []
    assert run_until(lambda: fired)
    delay = fired[0] - t0
    assert 0.095 <= delay < DEADLINE


def test_call_later_delays_run_in_deadline_order():
    order = []
    call_later(order.append, 0.09, "late")
    call_later(order.append, 0.03, "early")
    call_later(order.append, 0.06, "middle")
    assert run_until(lambda: len(order) == 3)
    assert order == ["early", "middle", "late"]


def test_post_event_front_and_back():
    order = []
    post_event(order.append, "a")
    post_event(order.append, "b")
    post_event(order.append, "first", front=True)
    process_events()
    assert order == ["first", "a", "b"]


def test_is_idle_tracks_queue_and_running_batch():
    assert is_idle()
    seen = []
    post_event(lambda: seen.append(is_idle()))
    assert not is_idle()
    process_events()
    assert seen == [False]  # while an event runs, the loop is not idle
    assert is_idle()


def test_events_queued_during_processing_run_in_next_call():
    order = []

    def first():
        order.append("first")
        call_later(order.append, 0, "queued-by-handler")

    call_later(first)
    process_events()
    assert order == ["first"]
    process_events()
    assert order == ["first", "queued-by-handler"]


def test_self_reemitting_handler_does_not_trap_process_events():
    sig = Signal()
    hits = []

    def again():
        hits.append(1)
        sig.emit()

    sig.bind(again)
    sig.emit()
    process_events()
    process_events()
    assert len(hits) == 2
    sig.unbind()
    drain()


# ---------------------------------------------------------------------------
# process_events blocking
# ---------------------------------------------------------------------------


def test_process_events_nonblocking_returns_at_once():
    t0 = time.monotonic()
    process_events()
    process_events(False)
    process_events(0)
    assert time.monotonic() - t0 < 0.5


def test_process_events_block_timeout_when_nothing_comes():
    t0 = time.monotonic()
    process_events(0.2)
    elapsed = time.monotonic() - t0
    assert 0.19 <= elapsed < 2.0


def test_process_events_block_true_wakes_when_other_thread_emits():
    sig = Signal()
    rec = Recorder()
    sig.bind(rec)
    emitter = threading.Timer(0.1, sig.emit, args=("x",))
    watchdog = threading.Timer(DEADLINE, stop_event_loop)
    watchdog.start()
    try:
        t0 = time.monotonic()
        emitter.start()
        process_events(True)
        elapsed = time.monotonic() - t0
    finally:
        watchdog.cancel()
        emitter.join(DEADLINE)
    assert rec.calls == [(("x",), {})]
    assert 0.09 <= elapsed < 2.0


def test_process_events_block_number_wakes_early_on_event():
    rec = Recorder()
    poster = threading.Timer(0.05, post_event, args=(rec, "y"))
    t0 = time.monotonic()
    poster.start()
    process_events(DEADLINE)
    elapsed = time.monotonic() - t0
    poster.join(DEADLINE)
    assert rec.calls == [(("y",), {})]
    assert elapsed < DEADLINE - 1


# ---------------------------------------------------------------------------
# start_event_loop / stop_event_loop
# ---------------------------------------------------------------------------


def test_event_loop_stopped_from_other_thread():
    rec = Recorder()
    call_later(rec, 0, "queued-before")
    stopper = threading.Timer(0.1, stop_event_loop)
    t0 = time.monotonic()
    stopper.start()
    start_event_loop()
    elapsed = time.monotonic() - t0
    stopper.join(DEADLINE)
    assert rec.calls == [(("queued-before",), {})]
    assert 0.09 <= elapsed < 2.0


def test_event_loop_stopped_from_handler():
    hits = []

    def handler():
        hits.append(1)
        if len(hits) == 3:
            stop_event_loop()
        else:
            call_later(handler, 0.01)

    call_later(handler)
    t0 = time.monotonic()
    start_event_loop()
    assert hits == [1, 1, 1]
    assert time.monotonic() - t0 < 2.0


def test_stop_before_start_does_not_affect_later_loop():
    stop_event_loop()
    call_later(stop_event_loop, 0.1)
    t0 = time.monotonic()
    start_event_loop()
    assert time.monotonic() - t0 >= 0.09


def test_event_loop_in_background_thread_handles_emits():
    sig = Signal()
    done = threading.Event()
    handler_threads = []

    def handler(value):
        handler_threads.append((threading.current_thread(), value))
        if value == 9:
            done.set()

    sig.bind(handler)
    loop_thread = threading.Thread(target=start_event_loop, daemon=True)
    loop_thread.start()
    try:
        for i in range(10):
            sig.emit(i)
        assert done.wait(DEADLINE)
    finally:
        stop_event_loop()
        loop_thread.join(DEADLINE)
    assert not loop_thread.is_alive()
    assert [v for _, v in handler_threads] == list(range(10))
    assert all(t is loop_thread for t, _ in handler_threads)


# ---------------------------------------------------------------------------
# embed_event_loop
# ---------------------------------------------------------------------------


def test_embed_callback_called_on_emit_and_removed_with_none():
    calls = []
    sig = Signal()
    rec = Recorder()
    sig.bind(rec)
    embed_event_loop(lambda *args: calls.append(args))
    sig.emit()
    assert calls == [()]
    sig.emit()  # same batch: no second call needed
    assert len(calls) == 1
    process_events()
    assert rec.count == 2
    call_later(rec)  # new batch
    assert len(calls) == 2
    process_events()
    embed_event_loop(None)
    sig.emit()
    call_later(rec)
    assert len(calls) == 2
    process_events()
    assert rec.count == 5


def test_embed_callback_called_from_posting_thread_and_timer_thread():
    woke = []
    event = threading.Event()

    def callback():
        woke.append(threading.current_thread())
        event.set()

    embed_event_loop(callback)
    sig = Signal()
    rec = Recorder()
    sig.bind(rec)
    emitter = threading.Thread(target=sig.emit)
    emitter.start()
    assert event.wait(DEADLINE)
    emitter.join(DEADLINE)
    assert woke == [emitter]
    process_events()
    assert rec.count == 1

    event.clear()
    call_later(rec, 0.03)  # arrives through the timer thread
    assert event.wait(DEADLINE)
    assert woke[-1] is not threading.current_thread()
    process_events()
    assert rec.count == 2


def test_embed_with_pending_events_calls_back_immediately():
    calls = []
    call_later(lambda: None)
    embed_event_loop(lambda: calls.append(1))
    assert calls == [1]


def test_embed_callback_exception_logged(errors):
    rec = Recorder()
    embed_event_loop(_boom)
    call_later(rec)  # must not raise
    embed_event_loop(None)
    process_events()
    assert rec.count == 1
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in errors.records)


def test_embed_requires_callable_or_none():
    with pytest.raises(ValueError):
        embed_event_loop(3)


def test_the_event_queue_is_bounded_and_counts_what_it_discards(monkeypatch, caplog):
    import logging

    import yoton
    from yoton import events

    monkeypatch.setattr(events, "MAX_EVENTS", 1000)
    yoton.process_events(False)  # (whatever earlier tests left)
    before = events._events.discarded
    seen = []
    signal = yoton.Signal()
    signal.bind(seen.append)
    with caplog.at_level(logging.WARNING, logger="yoton"):
        for i in range(1500):  # nothing processes events meanwhile
            signal.emit(i)
        yoton.call_later(seen.append, 0, "late")
    assert events.statistics()["pending"] == 1000
    assert events.statistics()["discarded"] - before == 501
    assert len([r for r in caplog.records if "event queue is full" in r.message]) == 1
    yoton.process_events(False)
    assert seen == list(range(1000))  # the oldest kept, in order
    signal.emit("after")
    yoton.process_events(False)
    assert seen[-1] == "after"


def test_a_logging_handler_may_post_events_when_the_queue_is_full(monkeypatch):
    # The "queue full" warning is logged after the queue's lock is released: a
    # handler that posts (a GUI showing log records through yoton's events) does
    # not deadlock. A queue of its own: a deadlock must not hold the real one.
    from yoton import events

    monkeypatch.setattr(events, "MAX_EVENTS", 3)
    queue = events.EventQueue()

    class Post(logging.Handler):
        def emit(self, record):
            if "event queue is full" in record.getMessage():
                queue.post(print, ("from the handler",))

    handler = Post()
    logger = logging.getLogger("yoton")
    logger.addHandler(handler)

    def flood():
        for i in range(5):
            queue.post(print, (i,))
        queue.post_many([(print, (i,), {}) for i in range(2)])

    try:
        worker = threading.Thread(target=flood, daemon=True)
        worker.start()
        worker.join(5.0)
        assert not worker.is_alive(), "post() deadlocked: the discard was logged with the queue locked"
    finally:
        logger.removeHandler(handler)
    assert queue.pending() == 3 and queue.discarded == 5  # (the handler's post counted too; logged once)
