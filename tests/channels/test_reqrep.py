"""Request/reply over real sockets on 127.0.0.1, our yoton at both ends (in-process).

Every context is a separate node connected over TCP (a star around the
requester unless a test says otherwise); repliers serve in their own thread
unless the test is about 'event' mode. Waiting is always for a condition with
a deadline. Contexts come from the ``ctx`` factory of tests/conftest.py
(closed at teardown, which also stops replier threads).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
from helpers import link
from helpers import wait_until as wait_for

import yoton

pytestmark = pytest.mark.timeout(15)


# -- helpers -----------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _clean_event_queue():
    yoton.process_events(False)
    yield
    yoton.process_events(False)


class Replier(yoton.RepChannel):
    """Methods for the tests; records what it served (and in which thread)."""

    def __init__(self, context, slot, rid="r", delay=0.0):
        super().__init__(context, slot)
        self.rid, self.delay = rid, delay
        self.served_log = []
        self.threads = set()

    def work(self, i):
        self.threads.add(threading.current_thread())
        if self.delay:
            time.sleep(self.delay)
        self.served_log.append(i)
        return [i, self.rid]

    def add(self, x, y):
        return x + y

    def fail(self, msg):
        raise ValueError(msg)

    def unencodable(self):
        return object()

    def a_set(self):
        return {1, 2}

    def kw(self, a, b=2, *, c=3):
        return [a, b, c]


def requester_and_repliers(ctx, n_repliers, slot="rr", delays=None, mode="thread"):
    """A requester context with n replier contexts each linked to it (a star)."""
    hub = ctx()
    req = yoton.ReqChannel(hub, slot)
    reps = []
    for k in range(n_repliers):
        c = ctx()
        link(hub, c)
        rep = Replier(c, slot, rid=f"r{k}", delay=(delays or [0.0] * n_repliers)[k])
        rep.set_mode(mode)
        reps.append(rep)
    return hub, req, reps


# -- load balancing ----------------------------------------------------------------------


def test_three_repliers_share_60_requests(ctx):
    delays = [0.0, 0.02, 0.1]
    hub, req, reps = requester_and_repliers(ctx, 3, delays=delays)
    futures = [req.work(i) for i in range(60)]
    results = [f.result(10) for f in futures]

    # each request answered, with its own index
    assert [r[0] for r in results] == list(range(60))
    by_replier = {rep.rid: [] for rep in reps}
    for i, rid in results:
        by_replier[rid].append(i)
    # served exactly once: what the repliers ran is exactly what came back
    served = sorted(i for rep in reps for i in rep.served_log)
    assert served == list(range(60)), f"served twice or lost: {served}"
    for rep in reps:
        assert sorted(rep.served_log) == by_replier[rep.rid]
        # (the counter goes up just after the reply is sent)
        wait_for(lambda: rep.statistics()["served"] == len(rep.served_log), 5, "the served counter")
        # thread mode (a slow replier may have served nothing on a loaded machine)
        assert bool(rep.threads) == bool(rep.served_log) and threading.current_thread() not in rep.threads
    counts = [len(by_replier[rep.rid]) for rep in reps]
    assert counts[2] < counts[0], f"slowest got {counts[2]}, fastest {counts[0]}"
    assert req.statistics()["pending_requests"] == 0 and len(req._futures) == 0


def requester_relay_replier(ctx, slot):
    """A requester's context linked to a relay (no channels) linked to a replier's
    context, a thread-mode Replier (rid "far") on ``slot``: ``(requester, replier,
    the replier's context)``."""
    a, relay, c = ctx(), ctx(), ctx()
    link(a, relay)
    link(relay, c)
    req = yoton.ReqChannel(a, slot)
    rep = Replier(c, slot, rid="far")
    rep.set_mode("thread")
    return req, rep, c


def test_chain_of_contexts_routes_requests(ctx):
    # requester - relay - replier: the relay has no channels, it only forwards
    req, rep, c = requester_relay_replier(ctx, "chain")
    assert [req.work(i).result(10) for i in range(5)] == [[i, "far"] for i in range(5)]
    assert req.echo("hop").result(5) == ("hop", hex(c.id))


def test_two_requesters_get_their_own_replies(ctx):
    # both requesters number their requests 1, 2, 3...: replies must go to the right one
    server = ctx()
    rep = Replier(server, "two")
    rep.set_mode("thread")
    reqs = []
    for name in ("A", "B"):
        c = ctx()
        link(server, c)
        reqs.append((name, yoton.ReqChannel(c, "two")))
    futures = [(name, i, req.echo(f"{name}{i}")) for i in range(20) for name, req in reqs]
    for name, i, f in futures:
        assert f.result(10) == (f"{name}{i}", hex(server.id))


# -- timing of repliers ------------------------------------------------------------------


@pytest.mark.parametrize("connected", [False, True], ids=["no-connection-yet", "connected-no-replier"])
def test_requests_posted_before_a_replier_exists(ctx, connected):
    a, b = ctx(), ctx()
    req = yoton.ReqChannel(a, "early")
    if connected:
        link(a, b)
    futures = [req.add(i, 100) for i in range(3)]
    assert not any(f.done() for f in futures)
    rep = Replier(b, "early")
    rep.set_mode("thread")
    if not connected:
        link(a, b)
    assert [f.result(8) for f in futures] == [100, 101, 102]
    wait_for(lambda: rep.statistics()["served"] == 3, 5, "the served counter to reach 3")


def test_auto_cancel_when_nobody_replies(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    req = yoton.ReqChannel(a, "ac", default_future_timeout=0.3)
    t0 = time.monotonic()
    f = req.work(1)
    with pytest.raises(yoton.CancelledError):
        f.result(5)
    assert 0.25 <= time.monotonic() - t0 < 3.0
    assert f.cancelled() and f.done()
    assert req.statistics()["pending_requests"] == 0 and len(req._futures) == 0

    # a replier appearing later never serves the cancelled request
    rep = Replier(b, "ac", rid="late")
    rep.set_mode("thread")
    assert req.work(2).result(5) == [2, "late"]
    assert rep.served_log == [2]


def test_per_future_auto_cancel_timeout(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    req = yoton.ReqChannel(a, "acf")  # default 10 s
    f = req.work(1)
    f.set_auto_cancel_timeout(0.2)
    g = req.work(2)
    with pytest.raises(yoton.CancelledError):
        f.result(5)
    assert not g.done()
    rep = Replier(b, "acf")
    rep.set_mode("thread")
    assert g.result(5) == [2, "r"]
    assert rep.served_log == [2]


def test_auto_cancel_none_waits_for_a_replier(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    req = yoton.ReqChannel(a, "acn", default_future_timeout=None)
    f = req.add(1, 1)
    with pytest.raises(yoton.TimeoutError):
        f.result(0.8)  # over the re-announce interval, and not cancelled
    assert not f.done()
    rep = Replier(b, "acn")
    rep.set_mode("thread")
    assert f.result(5) == 2


# -- modes ------------------------------------------------------------------------------


def test_mode_off_stops_answering(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="off")
    assert req.work(1).result(5) == [1, "r0"]
    rep.set_mode("off")
    f = req.work(2)
    f.set_auto_cancel_timeout(0.5)
    with pytest.raises(yoton.CancelledError):
        f.result(5)
    assert rep.served_log == [1]
    rep.set_mode("thread")
    assert req.work(3).result(5) == [3, "r0"]
    assert rep.served_log == [1, 3]  # the cancelled request 2 was never served


@pytest.mark.parametrize("bad", ["bogus", "threads", 3, -1, None, 1.5])
def test_set_mode_bad_value(ctx, bad):
    rep = Replier(ctx(), "bad")
    with pytest.raises(ValueError):
        rep.set_mode(bad)


@pytest.mark.parametrize("mode", [1, "event"])
def test_event_mode_is_served_by_process_events(ctx, mode):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="ev", mode=mode)
    f = req.work(7)
    # nobody runs the event loop: the request is acknowledged but not served
    with pytest.raises(yoton.TimeoutError):
        f.result(0.3)
    assert rep.served_log == []
    wait_for(f.done, 5, "the reply", pump=True)
    assert f.result() == [7, "r0"]
    assert rep.threads == {threading.current_thread()}


@pytest.mark.parametrize("mode", [2, "thread"])
def test_thread_mode_needs_no_event_loop(ctx, mode):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="th", mode=mode)
    assert req.work(1).result(5) == [1, "r0"]
    assert threading.current_thread() not in rep.threads


@pytest.mark.parametrize("off", [0, "off"])
def test_mode_zero_is_off(ctx, off):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="zero", mode=off)
    f = req.work(1)
    f.set_auto_cancel_timeout(0.4)
    with pytest.raises(yoton.CancelledError):
        f.result(5)
    assert rep.served_log == []


def test_switching_modes(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="sw", mode="thread")
    assert req.add(1, 2).result(5) == 3
    rep.set_mode("event")
    f = req.add(2, 2)
    wait_for(f.done, 5, "the reply in event mode", pump=True)
    assert f.result() == 4
    rep.set_mode(2)
    assert req.add(3, 2).result(5) == 5


def test_set_mode_repeatedly_keeps_one_housekeeping_timer(ctx):
    # white box: each set_mode('thread'/'event') used to start another endless
    # 1 s timer chain in the I/O thread
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="ticks")
    for mode in ["event", "thread"] * 5 + ["off", "thread"]:
        rep.set_mode(mode)
    loop = rep.context.router.loop
    barrier = threading.Event()
    loop.call_soon(barrier.set)  # calls run in order: earlier call_later()s are in place after it
    assert barrier.wait(5)
    ticks = [e for e in list(loop._timers) if e[2] is not None and getattr(e[2], "__self__", None) is rep]
    assert len(ticks) == 1, ticks
    assert req.add(1, 2).result(5) == 3


# -- errors ----------------------------------------------------------------------------


@pytest.fixture
def req_rep(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="err")
    return req, rep


def test_handler_error_arrives_as_remote_error(req_rep):
    req, rep = req_rep
    with pytest.raises(yoton.RemoteError, match="boom 123") as info:
        req.fail("boom 123").result(5)
    assert isinstance(info.value, RuntimeError)
    assert str(info.value) == "boom 123\n"  # yoton 2.2's text: no location for a ValueError
    f = req.fail("again")
    assert isinstance(f.exception(5), yoton.RemoteError)
    # the replier keeps serving
    assert req.add(2, 3).result(5) == 5


def test_unknown_method_arrives_as_remote_error(req_rep):
    req, rep = req_rep
    with pytest.raises(yoton.RemoteError, match="no_such_method"):
        req.no_such_method(1).result(5)


def test_bad_arguments_arrive_as_remote_error(req_rep):
    req, rep = req_rep
    with pytest.raises(yoton.RemoteError, match="missing 1 required positional argument"):
        req.add(1).result(5)


def test_keyword_arguments(req_rep):
    req, rep = req_rep
    assert req.kw(1).result(5) == [1, 2, 3]
    assert req.kw(1, c=30, b=20).result(5) == [1, 20, 30]


def test_private_names_cannot_be_called(req_rep):
    req, rep = req_rep
    with pytest.raises(AttributeError):
        req._secret  # noqa: B018 - attribute access is the test
    with pytest.raises(AttributeError):
        req._x  # noqa: B018
    # a raw request for a private name (crafted past __getattr__) is refused remotely
    with pytest.raises(yoton.RemoteError, match="_served"):
        req._post("_served", (), {}).result(5)
    with pytest.raises(yoton.RemoteError, match="__init__"):
        req._post("__init__", (), {}).result(5)


def test_channel_api_cannot_be_called_remotely(req_rep):
    req, rep = req_rep
    with pytest.raises(yoton.RemoteError, match="set_mode"):
        req.set_mode("off").result(5)
    # ReqChannel has its own close/statistics: send those names the raw way
    for name in ("close", "statistics"):
        with pytest.raises(yoton.RemoteError, match=name):
            req._post(name, (), {}).result(5)
    assert not rep.closed
    assert req.add(1, 1).result(5) == 2  # still serving


def test_unencodable_reply_arrives_as_remote_error(req_rep):
    req, rep = req_rep
    with pytest.raises(yoton.RemoteError):
        req.unencodable().result(5)
    with pytest.raises(yoton.RemoteError):
        req.a_set().result(5)
    assert req.add(1, 1).result(5) == 2


def test_unencodable_arguments_raise_locally(req_rep):
    req, rep = req_rep
    with pytest.raises((ValueError, TypeError)):
        req.add(object(), 1)
    assert req.statistics()["pending_requests"] == 0


def test_echo(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="echo")
    assert req.echo("hi").result(5) == ("hi", hex(rep._context.id))
    assert req.echo([1, {"a": None}], sleep=0.01).result(5) == ([1, {"a": None}], hex(rep._context.id))


# -- threads, closing, leaks ---------------------------------------------------------------


def test_result_from_a_plain_thread_without_event_loop(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="plain")
    box = []

    def run():
        try:
            box.append([req.add(i, i).result(5) for i in range(10)])
        except BaseException as exc:  # noqa: BLE001
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)  # nobody calls process_events meanwhile
    assert box == [[2 * i for i in range(10)]]


def test_done_callback_with_a_real_reply(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="cb")
    seen = []
    f = req.add(20, 22)
    f.add_done_callback(lambda fut: seen.append(fut.result()))
    wait_for(lambda: seen, 5, "the done callback", pump=True)
    assert seen == [42]


def test_closing_the_req_channel_cancels_waiting_requests(ctx):
    a, b = ctx(), ctx()
    link(a, b)
    req = yoton.ReqChannel(a, "close")
    f = req.add(1, 2)
    req.close()
    assert f.done()
    with pytest.raises((yoton.CancelledError, yoton.ChannelClosedError)):
        f.result(1)
    # a request on the closed channel: a future cancelled already (yoton 2.2), nothing sent
    late = req.add(1, 2)
    assert late.cancelled() and late.done()
    with pytest.raises(yoton.CancelledError):
        late.result(0)
    assert req.statistics()["pending_requests"] == 0


def test_3000_sequential_requests_leave_nothing_pending(ctx):
    # (how fast they go is the benchmark's business: python -m bench --only reqrep_100B)
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="many")
    for i in range(3000):
        assert req.add(i, 1).result(5) == i + 1
    assert req.statistics()["pending_requests"] == 0
    assert len(req._futures) == 0
    wait_for(lambda: rep.statistics()["served"] == 3000, 5, "the served counter to reach 3,000")
    assert rep.statistics()["offers"] == 0


# -- yoton 2.2's interface (pyzo's kernel uses the private names) ------------------------------

SPELLINGS = ["event-driven", "thread-driven", "Event-Driven", "THREAD", True, False, 1.0, 2.0, "off", 0]


@pytest.fixture(scope="module")
def modes_of_22():
    """What yoton 2.2's set_mode makes of each spelling (its _run_mode), asked from the original."""
    from _orig import run_orig

    code = (
        "import yoton\n"
        f"for mode in {SPELLINGS!r}:\n"
        "    rep = yoton.RepChannel(yoton.Context(), 'm')\n"
        "    rep.set_mode(mode)\n"
        "    print(rep._run_mode)\n"
        "    rep.set_mode(0)\n"
    )
    return [int(line) for line in run_orig(code).split()]


@pytest.mark.parametrize("index", range(len(SPELLINGS)), ids=[repr(s) for s in SPELLINGS])
def test_set_mode_accepts_the_spellings_of_22(ctx, modes_of_22, index):
    rep = Replier(ctx(), f"spell{index}")
    assert rep._run_mode == 0
    rep.set_mode(SPELLINGS[index])
    assert rep._run_mode == rep._mode == modes_of_22[index]
    rep.set_mode("off")
    assert rep._run_mode == 0


def test_process_events_local_serves_a_replier_that_is_off(ctx):
    """pyzo's kernel with PYZO_INTROSPECT_IN_MAIN_THREAD=1: set_mode(0), then its main
    loop calls _process_events_local() on each pass (when _run_mode is 0)."""
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="local", mode=0)
    futures = [req.work(i) for i in range(3)]
    passes = 0
    while not all(f.done() for f in futures):
        assert passes < 500, "not served by _process_events_local"
        if rep._run_mode == 0:
            rep._process_events_local()
        passes += 1
        time.sleep(0.01)
    assert [f.result(0) for f in futures] == [[0, "r0"], [1, "r0"], [2, "r0"]]
    assert rep.threads == {threading.current_thread()}  # served in the caller's thread
    # nobody calls it: an off replier serves nothing
    f = req.work(9)
    f.set_auto_cancel_timeout(0.3)
    with pytest.raises(yoton.CancelledError):
        f.result(5)
    assert 9 not in rep.served_log


def test_process_events_local_alongside_the_other_modes(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="local2", mode="thread")
    rep._process_events_local()  # harmless next to the worker thread
    assert req.add(1, 2).result(5) == 3
    rep.set_mode(0)
    f = req.add(2, 2)
    wait_for(lambda: rep._process_events_local() or f.done(), 5, "a local serve")
    rep.set_mode("event")  # requests taken while off go to the event loop now
    g = req.add(3, 3)
    wait_for(g.done, 5, "the reply in event mode", pump=True)
    assert (f.result(0), g.result(0)) == (4, 6)


def test_requester_has_the_private_names_of_22(ctx):
    req = yoton.ReqChannel(ctx(), "names")
    assert req._run_mode == 1
    assert req._process_events_local() is None  # nothing to do: the loop side serves requests


class Failing(yoton.RepChannel):
    def key(self):
        return {}["k"]  # the line the text names

    def value(self):
        raise ValueError("I do not like 2.")


def test_remote_error_text_is_that_of_22(ctx):
    # yoton 2.2 sends str(exception), a newline, and "line N of FILE." where it was
    # raised (nothing after the newline for ValueError, OverflowError, SyntaxError)
    a, b = ctx(), ctx()
    link(a, b)
    Failing(a, "fail22").set_mode("thread")
    req = yoton.ReqChannel(b, "fail22")
    line = Failing.key.__code__.co_firstlineno + 1
    assert str(req.key().exception(5)) == f"'k'\nline {line} of {__file__}."
    assert str(req.value().exception(5)) == "I do not like 2.\n"
    text = str(req.nothing_here().exception(5))
    assert text.startswith("Method 'nothing_here' not implemented.\nline ")
    assert text.endswith("reqrep.py.")
    assert yoton.channels.reqrep.error_text(ValueError("no traceback")) == "no traceback\n"


def test_replier_error_is_logged_as_a_warning(ctx, caplog):
    a, b = ctx(), ctx()
    link(a, b)
    Failing(a, "failog").set_mode("thread")
    req = yoton.ReqChannel(b, "failog")
    with caplog.at_level(logging.WARNING, logger="yoton"):
        req.key().exception(5)
        wait_for(lambda: "error handling request 'key'" in caplog.text, 5, "the warning")
    record = [r for r in caplog.records if "error handling request" in r.getMessage()][0]
    assert record.levelno == logging.WARNING and record.exc_info  # with the traceback
    assert "'k'" in record.getMessage()


def test_a_second_acknowledgement_is_ignored_quietly(ctx, caplog):
    # Every free replier acknowledges a request; the first one gets it. The later
    # acknowledgements used to make set_running_or_notify_cancel() raise (the
    # future is RUNNING), logged as an error: printed on stderr by default now.
    from yoton.channels.reqrep import ACKNOWLEDGE, REF
    from yoton.wire.frames import Package

    c = ctx()
    req = yoton.ReqChannel(c, "acks")
    future = req.work(1)
    for replier_id in (111, 222, 333):
        req._receive(Package(ACKNOWLEDGE, 0, replier_id, 1, c.id, REF + future._request_id))
    assert future.running()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- direct requests between our own peers (one round trip) ------------------------------------


def serving_context(ctx, hub, replier_class, *args, **kwargs):
    """A new context linked to ``hub`` with a thread-mode replier of ``replier_class``
    (made with ``args``): ``(context, replier)``."""
    server = ctx()
    link(hub, server)
    replier = replier_class(server, *args, **kwargs)
    replier.set_mode("thread")
    return server, replier


class Gate(Replier):
    """A replier whose ``hold`` method waits until the test opens ``gate`` (its
    served_log records the order of everything served)."""

    def __init__(self, context, slot):
        super().__init__(context, slot)
        self.gate = threading.Event()
        self.first_gate = threading.Event()

    def hold(self, i):
        assert self.gate.wait(10), "the test never opened the gate"
        self.served_log.append(i)
        return i

    def first(self, i):
        assert self.first_gate.wait(10), "the test never opened the first gate"
        return i


@contextlib.contextmanager
def serving_locally(rep):
    """Serve ``rep`` (off) from an application loop, as pyzo's kernel does: a thread
    calling ``_process_events_local()`` every 2 ms while the block runs."""
    stop = threading.Event()

    def app_loop():
        while not stop.wait(0.002):
            rep._process_events_local()

    thread = threading.Thread(target=app_loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def gate_and_two_requesters(ctx, slot):
    """A Gate replier (thread mode) and two requester contexts linked to its context:
    ``(rep, (context 1, requester 1), (context 2, requester 2))``."""
    server = ctx()
    rep = Gate(server, slot)
    rep.set_mode("thread")
    requesters = []
    for _ in range(2):
        c = ctx()
        link(server, c)
        requesters.append((c, yoton.ReqChannel(c, slot)))
    return rep, requesters[0], requesters[1]


def first_then_held(req, rep, held_arg):
    """Post a request the replier holds at its first gate, then (announced: no reply
    has come, so nothing goes direct) one it holds at its gate; open the first gate.
    Returns the second future once the replier serves it; the requester then has
    the replier's reply to the first, so its next request goes straight to it."""
    me = req.context.id
    first = req.first(1)
    wait_for(lambda: serving(rep, (me, first._request_id)), 5, "the replier to serve the first request")
    held = req.hold(held_arg)
    wait_for(lambda: held._request_id in rep._offers.get(me, {}), 5, "the second request's announcement")
    rep.first_gate.set()
    assert first.result(5) == 1
    wait_for(lambda: serving(rep, (me, held._request_id)), 5, "the replier to serve the second request")
    return held


def serving(rep, key):
    """Whether ``rep`` serves request ``key`` (has its body: no acknowledgement timeout any more)."""
    return rep._state.value == "serving" and rep._current == key


@pytest.fixture
def long_window(monkeypatch):
    """A direct-request window long enough for a loaded test machine."""
    monkeypatch.setattr("yoton.channels.reqrep.DIRECT_WINDOW", 60.0)


def test_sequential_requests_go_direct_after_the_first(ctx):
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="direct")
    for i in range(20):
        assert req.add(i, 1).result(5) == i + 1
    # the first (and any that came more than DIRECT_WINDOW after a reply) took the 2.2 exchange
    stats = req.statistics()
    assert stats["direct"] >= 1 and stats["declined"] == 0 and stats["pending_requests"] == 0
    wait_for(lambda: rep.statistics()["served"] == 20, 5, "the served counter")
    assert rep.statistics()["direct"] == stats["direct"] and rep.statistics()["declined"] == 0


def test_a_relayed_replier_gets_no_direct_requests(ctx):
    req, rep, _ = requester_relay_replier(ctx, "far")
    assert [req.add(i, 1).result(10) for i in range(5)] == [i + 1 for i in range(5)]
    assert req.statistics()["direct"] == 0 and rep.statistics()["direct"] == 0


def test_a_busy_replier_declines_and_the_request_takes_the_usual_way(ctx, long_window):
    rep, (r1, req1), (r2, req2) = gate_and_two_requesters(ctx, "busy")
    assert req1.add(1, 1).result(5) == 2  # (req1 now knows the replier is free)
    held = req2.hold("r2")
    wait_for(lambda: serving(rep, (r2.id, held._request_id)), 5, "the replier to serve r2's request")
    late = req1.add(2, 2)  # straight to the replier, which is busy with another requester: declined
    wait_for(lambda: req1.statistics()["declined"] == 1, 5, "the decline")
    assert not late.done() and late._state.value == "PENDING"  # (announced again, waiting its turn)
    rep.gate.set()
    assert held.result(5) == "r2" and late.result(5) == 4
    assert req1.statistics()["direct"] == 1 and rep.statistics()["declined"] == 1


def test_a_direct_request_waits_behind_its_requesters_previous_one(ctx, long_window):
    hub, req, _ = requester_and_repliers(ctx, 0, slot="next")
    server, rep = serving_context(ctx, hub, Gate, "next")
    second = first_then_held(req, rep, "b")
    third = req.add(3, 3)  # straight to the replier, which still serves our previous one: kept for next
    wait_for(lambda: rep._parked is not None, 5, "the replier to keep the direct request")
    rep.gate.set()
    assert second.result(5) == "b" and third.result(5) == 6
    assert req.statistics()["declined"] == 0 and rep.statistics()["direct"] == 1


def test_a_kept_direct_request_yields_to_a_waiting_requester(ctx, long_window):
    rep, (r1, req1), (r2, req2) = gate_and_two_requesters(ctx, "fair")
    held = first_then_held(req1, rep, "r1")
    other = req2.hold("r2")  # r2 waits for the replier now
    wait_for(lambda: r2.id in rep._offers, 5, "r2's announcement")
    mine = req1.hold("r1-next")  # kept by the replier, then declined: r2 was waiting first
    wait_for(lambda: rep._parked is not None, 5, "the replier to keep the direct request")
    rep.gate.set()
    assert held.result(5) == "r1" and other.result(5) == "r2" and mine.result(5) == "r1-next"
    assert rep.served_log == ["r1", "r2", "r1-next"]
    assert req1.statistics()["declined"] == 1


def test_a_direct_request_fails_when_the_replier_goes_away(ctx, long_window):
    hub, req, _ = requester_and_repliers(ctx, 0, slot="gone")
    server, rep = serving_context(ctx, hub, Gate, "gone")
    assert req.add(1, 1).result(5) == 2
    f = req.hold("x")  # direct, and RUNNING at once: it cannot be cancelled
    assert f.running() and not f.cancel()
    wait_for(lambda: serving(rep, (hub.id, f._request_id)), 5, "the replier to serve it")
    server.close()
    rep.gate.set()
    with pytest.raises(yoton.RemoteError, match="connection closed before it answered"):
        f.result(5)
    assert req.statistics()["pending_requests"] == 0


def _park_a_direct_request(ctx, slot, timeout=10.0):
    """A requester whose third request the replier keeps (parked) while it serves the
    second, held at its gate: ``(hub, req, server, rep, second, third)``."""
    hub = ctx()
    req = yoton.ReqChannel(hub, slot, timeout)
    server, rep = serving_context(ctx, hub, Gate, slot)
    second = first_then_held(req, rep, "b")
    third = req.add(3, 3)
    assert req.statistics()["direct"] == 1
    wait_for(lambda: rep._parked is not None, 5, "the replier to keep the direct request")
    return hub, req, server, rep, second, third


def test_a_kept_direct_request_is_declined_when_the_replier_is_switched_off(ctx, long_window):
    # Off, nobody may ever serve it: declined, it is announced again and auto-cancelled
    # like any request no replier takes (it must not stay RUNNING for ever).
    hub, req, server, rep, second, third = _park_a_direct_request(ctx, "off", timeout=1.0)
    rep.set_mode("off")
    rep.gate.set()
    assert second.result(5) == "b"
    with pytest.raises(yoton.CancelledError):
        third.result(5)
    assert req.statistics()["declined"] == 1 and rep.served_log == ["b"]


def test_a_kept_direct_request_goes_to_another_replier_when_its_replier_closes(ctx, long_window):
    hub, req, server, rep, second, third = _park_a_direct_request(ctx, "closing")
    rep.close()
    rep.gate.set()  # (the worker ends; a closed replier sends no reply, as in 2.2)
    other = ctx()
    link(hub, other)
    Replier(other, "closing", rid="other").set_mode("thread")
    assert third.result(5) == 6
    assert req.statistics()["declined"] == 1 and rep.served_log == ["b"]


def test_a_replier_served_from_the_applications_loop_gets_no_direct_requests(ctx, long_window):
    # pyzo's kernel with PYZO_INTROSPECT_IN_MAIN_THREAD=1: mode 0, _process_events_local()
    # called by the application. Off, the replier declines direct requests, so it must not
    # invite them: each would cost a decline and a round trip more than the 2.2 exchange.
    hub, req, _ = requester_and_repliers(ctx, 0, slot="local")
    server = ctx()
    link(hub, server)
    rep = Replier(server, "local")
    with serving_locally(rep):
        assert [req.add(i, 1).result(5) for i in range(5)] == [1, 2, 3, 4, 5]
    assert req.statistics()["direct"] == 0 and rep.statistics()["declined"] == 0


def hold_reading(context):
    """Have ``context`` read nothing more from its only connection until the
    returned function is called (so what its peer sends meanwhile waits)."""
    (lk,) = context.router.links
    context.router.call_soon(context.router.hold_reading, lk, "test")
    wait_for(lambda: lk.read_holds, 5, "the read hold")
    return lambda: context.router.release_reading(lk, "test")


def test_a_direct_request_to_a_replier_that_closed_meanwhile_goes_to_another(ctx, long_window):
    # The replier's channel closes, its context stays connected: a direct request
    # on its way reaches no channel there; it must be announced to the other
    # repliers, not wait for ever.
    hub, req, _ = requester_and_repliers(ctx, 0, slot="gone-ch")
    server, rep = serving_context(ctx, hub, Replier, "gone-ch", rid="first")
    assert req.add(1, 1).result(5) == 2  # (the next one goes straight to it)
    release = hold_reading(hub)  # (the requester hears of the closing only after it sent the next)
    rep.close()
    late = req.add(2, 2)
    assert req.statistics()["direct"] == 1
    release()
    other = ctx()
    link(hub, other)
    Replier(other, "gone-ch", rid="other").set_mode("thread")
    assert late.result(5) == 4
    assert req.statistics()["pending_requests"] == 0


def test_a_direct_request_meant_for_a_closed_replier_is_not_served_twice_by_its_successor(ctx, long_window):
    # A new replier on the same slot of the same context gets what was sent to the
    # old one, which the requester announces again (the old one closed): it must
    # decline it (it never invited that requester), or it would serve it twice.
    hub, req, _ = requester_and_repliers(ctx, 0, slot="successor")
    server, old = serving_context(ctx, hub, Replier, "successor", rid="old")
    assert req.work(0).result(5) == [0, "old"]
    release = hold_reading(hub)
    old.close()
    new = Replier(server, "successor", rid="new")
    new.set_mode("thread")
    late = req.work(1)
    assert req.statistics()["direct"] == 1
    release()
    assert late.result(5) == [1, "new"]  # (a reply is taken only from the replier that acknowledged it)
    assert new.served_log == [1] and new.statistics()["declined"] == 1


def test_a_requester_remembers_new_repliers_when_old_ones_have_gone(ctx, long_window, monkeypatch):
    monkeypatch.setattr("yoton.channels.reqrep.MAX_DIRECT", 1)  # (the bound, made small)
    hub, req, _ = requester_and_repliers(ctx, 0, slot="turnover")
    for k in range(3):  # one replier after the other, each in its own context that then closes
        server = ctx()
        link(hub, server)
        Replier(server, "turnover").set_mode("thread")
        before = req.statistics()["direct"]
        assert [req.add(i, k).result(5) for i in range(3)] == [i + k for i in range(3)]
        assert req.statistics()["direct"] > before, f"replier {k} got no direct request"
        server.close()
        wait_for(lambda: not hub.router.is_direct_peer(server.id), 5, "the replier to go")


def test_a_replier_invites_new_requesters_when_old_ones_have_gone(ctx, long_window, monkeypatch):
    monkeypatch.setattr("yoton.channels.reqrep.MAX_REQUESTERS", 2)  # (the bound, made small)
    server = ctx()
    rep = Replier(server, "turnover")
    rep.set_mode("thread")
    for k in range(4):  # one requester after the other, each in its own context that then closes
        client = ctx()
        link(server, client)
        req = yoton.ReqChannel(client, "turnover")
        assert [req.add(i, k).result(5) for i in range(3)] == [i + k for i in range(3)]
        assert req.statistics()["direct"] >= 1, f"requester {k} was not invited"
        client.close()
        wait_for(lambda: not server.router.is_direct_peer(client.id), 5, "the requester to go")


def test_a_direct_request_is_never_announced_by_the_requesters_tick(ctx, long_window, monkeypatch):
    # The I/O thread's tick re-announces the PENDING futures it finds: one that is
    # to go straight to a replier must not be found PENDING while _post decides, or
    # its 'req?' has the repliers acknowledge (and wait for) a request taken already.
    hub, req, (rep,) = requester_and_repliers(ctx, 1, slot="tick")
    assert req.add(1, 1).result(5) == 2
    real = hub.router.is_direct_peer

    def ticking_meanwhile(peer_id):
        req._tick()  # (the I/O thread's tick, at the worst moment)
        return real(peer_id)

    monkeypatch.setattr(hub.router, "is_direct_peer", ticking_meanwhile)
    req._req_lock = threading.RLock()  # (the tick takes it only at its end; here it runs inside _post's)
    future = req.add(2, 2)
    assert future._direct and future._announced == 0.0
    assert future.result(5) == 4


def test_a_replier_switched_off_withdraws_its_invitations(ctx, long_window):
    # Served from the application's loop after it was on: the requesters it invited
    # must stop sending it direct requests (it would decline every one of them).
    hub, req, _ = requester_and_repliers(ctx, 0, slot="was-on")
    server, rep = serving_context(ctx, hub, Replier, "was-on")
    assert req.add(0, 1).result(5) == 1  # (invited)
    rep.set_mode("off")
    with serving_locally(rep):
        assert [req.add(i, 1).result(5) for i in range(1, 6)] == [2, 3, 4, 5, 6]
    assert rep.statistics()["declined"] <= 1  # (the first one may have left before the news came)
    rep.set_mode("thread")  # (on again: it invites the requester again)
    assert [req.add(i, 1).result(5) for i in range(3)] == [1, 2, 3]
    assert req.statistics()["direct"] >= 2


def test_direct_requests_that_reach_a_closing_replier_out_of_order_all_go_elsewhere(ctx, long_window, monkeypatch):
    # Two threads' direct requests to one replier may leave in either order (each
    # is numbered under the lock, sent after it). The replier closes having seen the
    # later one only: the earlier, still on its way, must be announced to the others.
    from yoton.channels.reqrep import REF

    hub, req, _ = requester_and_repliers(ctx, 0, slot="order")
    server, rep = serving_context(ctx, hub, Gate, "order")
    assert req.add(0, 1).result(5) == 1
    busy = req.hold("a")  # (direct, #2: served, held at the gate)
    wait_for(lambda: serving(rep, (hub.id, busy._request_id)), 5, "the replier to serve #2")
    held, real_send = [], hub.router.send

    def send(slot, body, dest_id=0, dest_seq=0, block=True, force=False):
        if bytes(body[:4]) == b"req=" and dest_seq == REF + 3:
            held.append((slot, body, dest_id, dest_seq))  # (#3 leaves after #4)
            return None
        return real_send(slot, body, dest_id, dest_seq, block, force)

    monkeypatch.setattr(hub.router, "send", send)
    req._free = (server.id, time.monotonic())  # (as another reply of that replier would)
    third = req.add(3, 3)
    req._free = (server.id, time.monotonic())
    fourth = req.add(4, 4)
    assert third._direct and fourth._direct and held
    wait_for(lambda: rep._parked is not None, 5, "the replier to keep #4")
    rep.close()
    real_send(*held[0], force=True)  # (#3 reaches the replier's context after it closed)
    other = ctx()
    link(hub, other)
    Replier(other, "order", rid="other").set_mode("thread")
    assert third.result(5) == 6 and fourth.result(5) == 8
    rep.gate.set()
