"""``yoton.app``: yoton 2.2's event-system object (pyzo's IDE calls ``yoton.app.embed_event_loop``)."""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

APP = textwrap.dedent("""
    import time, yoton
    from yoton.events import Event, YotonApplication
    app = yoton.app
    print(isinstance(app, YotonApplication))
    log, told = [], []
    def add(x):  # (2.2 cannot hold builtin methods such as log.append in an Event)
        log.append(x)
    app.embed_event_loop(lambda: told.append(1))
    app.post_event(Event(add, "a"))
    app.post_event_asap(Event(add, "first"))
    app.call_later(add, 0, "b")
    app.call_later(add, -1, "asap")
    app.post_event_later(Event(add, "later"), 0.1)
    print(len(told) >= 1)        # the embedding callback was told
    app.process_events()
    print(log)
    del log[:]
    deadline = time.time() + 10
    while not log and time.time() < deadline:
        app.process_events(0.05)
    print(log)                   # the delayed one
    app.call_later(app.stop_event_loop, 0.1)
    t0 = time.time()
    app.start_event_loop()       # returns once stopped
    print(time.time() - t0 < 5)
    app.embed_event_loop(None)
    print(YotonApplication().process_events is not None)
""")


def test_app_does_what_22s_did(run_both):
    orig, ours = run_both(APP)
    assert orig == "True\nTrue\n['asap', 'first', 'a', 'b']\n['later']\nTrue\nTrue\n"
    assert ours == orig


def test_app_is_the_module_functions_on_one_queue():
    import yoton

    seen = []
    yoton.app.call_later(seen.append, 0, 1)
    yoton.process_events()  # the module-level function runs what app queued
    assert seen == [1]
    yoton.call_later(seen.append, 0, 2)
    yoton.app.process_events()
    assert seen == [1, 2]
    with pytest.raises(ValueError):
        yoton.app.post_event("neither callable nor an event")
