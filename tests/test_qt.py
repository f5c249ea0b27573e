"""embed_event_loop with a real Qt event loop: pyzo's way of running yoton's events.

A Qt application (PySide6, on the offscreen platform) runs in a subprocess
-- Qt wants its GUI thread to be a process's main thread and one application
per process -- and embeds yoton's event queue in its loop the way a GUI does:
the embedding callback (called from whichever thread posted an event) posts
a Qt event, and Qt delivers it in the GUI thread, which processes yoton's
events. Its peer is a context in this process, over TCP.

Skipped where no Qt binding is installed: PySide6-Essentials is the optional
'qt' test extra (``pip install -e ".[dev,qt]"``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
from helpers import wait_until
from interop_helpers import SRC

import yoton

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        importlib.util.find_spec("PySide6") is None,
        reason="no Qt binding: PySide6-Essentials is the optional 'qt' test extra (pip install -e '.[qt]')",
    ),
]

QT_APP = textwrap.dedent("""
    import json, sys, threading
    from PySide6 import QtCore, QtWidgets
    import yoton

    app = QtWidgets.QApplication([])
    gui = QtCore.QThread.currentThread()
    seen = {"callbacks": 0, "callback_on_loop_side": 0, "not_gui": [], "news": [], "served": 0}

    class Embedder(QtCore.QObject):
        # yoton calls post() from any thread; Qt runs customEvent() in the GUI thread.
        def post(self):
            seen["callbacks"] += 1
            if ctx.router.on_loop_side():  # (must never be: see yoton.events.deferred_callbacks)
                seen["callback_on_loop_side"] += 1
            QtCore.QCoreApplication.postEvent(self, QtCore.QEvent(QtCore.QEvent.Type.User))

        def customEvent(self, event):
            yoton.process_events(False)

    class Window(QtCore.QObject):
        news_arrived = QtCore.Signal(str)

        def check(self, what):
            if QtCore.QThread.currentThread() is not gui or threading.current_thread() is not threading.main_thread():
                seen["not_gui"].append(what)

        @QtCore.Slot(object)
        def on_received(self, channel):  # a yoton signal, bound to a Qt slot
            self.check("received")
            for message in channel.recv_all():
                self.news_arrived.emit(message)  # (and on to Qt's own signals and slots)

        @QtCore.Slot(str)
        def on_news(self, message):
            self.check("news")
            seen["news"].append(message)
            reply.send("got " + message)

        @QtCore.Slot(object, str)
        def on_closed(self, conn, reason):
            self.check("closed")
            seen["closed"] = reason
            app.quit()

    class Where(yoton.RepChannel):
        def where(self):  # served in 'event' mode: by the Qt loop
            window.check("served")
            seen["served"] += 1
            return QtCore.QThread.currentThread() is gui

    ctx = yoton.Context()
    embedder = Embedder()
    yoton.embed_event_loop(embedder.post)
    window = Window()
    window.news_arrived.connect(window.on_news)
    news = yoton.SubChannel(ctx, "news")
    news.received.bind(window.on_received)
    reply = yoton.PubChannel(ctx, "replies")
    Where(ctx, "where").set_mode("event")
    conn = ctx.connect(sys.argv[1], timeout=10.0)
    conn.closed.bind(window.on_closed)
    QtCore.QTimer.singleShot(20000, app.quit)  # (a watchdog: the test fails, but ends)
    print("connected", flush=True)
    app.exec()
    yoton.embed_event_loop(None)
    print(json.dumps(seen), flush=True)
    ctx.close()
""")


def test_signals_from_a_peer_reach_slots_in_the_gui_thread(ctx):
    peer = ctx()
    conn = peer.bind("127.0.0.1:0")
    news = yoton.PubChannel(peer, "news")
    replies = yoton.SubChannel(peer, "replies")
    where = yoton.ReqChannel(peer, "where")
    env = dict(os.environ, PYTHONPATH=str(SRC), QT_QPA_PLATFORM="offscreen", PYTHONUNBUFFERED="1")
    app = subprocess.Popen(
        [sys.executable, "-c", QT_APP, f"127.0.0.1:{conn.port1}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout.readline().strip() == "connected", app.stderr.read()
        wait_until(lambda: conn.is_connected, 10.0, "the Qt application")
        for word in ("one", "two", "three"):
            news.send(word)
        got = []
        wait_until(lambda: got.extend(replies.recv_all()) or len(got) == 3, 10.0, "the Qt slots to answer")
        assert got == ["got one", "got two", "got three"]
        assert where.where().result(10.0) is True  # served in the GUI thread
        conn.close()  # the Qt slot bound to `closed` quits the application
        out, err = app.communicate(timeout=20)
    finally:
        app.kill()
    assert app.returncode == 0, err
    seen = json.loads(out.splitlines()[-1])
    assert seen["news"] == ["one", "two", "three"]
    assert seen["served"] == 1
    assert seen["closed"] == "Closed from other end."
    assert seen["not_gui"] == []  # every handler ran in the GUI thread
    assert seen["callbacks"] >= 3 and seen["callback_on_loop_side"] == 0
