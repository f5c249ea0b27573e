"""The single I/O thread of a context.

One thread per context waits on a :mod:`selectors` selector for every socket
of that context: listening sockets, handshakes in progress and connections.
Other threads talk to it through two lock-free queues and a wake-up
socketpair:

* :meth:`IOLoop.call_soon` queues a callable to run in the I/O thread;
* :meth:`IOLoop.schedule_write` queues a connection that has new outgoing
  data, so the thread writes it with as few system calls as it can.

A wake-up byte is written only when the thread is not already due to wake,
so a burst of sends costs one wake-up. Time-based work (heartbeats,
handshake deadlines, channel re-announcements) runs from a timer heap and a
housekeeping pass at most every :data:`TICK` seconds; nothing on the message
path sleeps or polls.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import selectors
import socket
import threading
import time
from collections import deque

log = logging.getLogger("yoton")

__all__ = ["IOLoop", "TICK"]

TICK = 0.1  #: seconds between housekeeping passes while connections exist

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class IOLoop:
    """A selector thread that serves all sockets of one context.

    Handlers registered with :meth:`register` provide ``_on_readable()``
    and/or ``_on_writable()``; objects in :attr:`housekeepers` provide
    ``_housekeeping(now)``. All of those run in the I/O thread only.
    """

    def __init__(self, name: str = "yoton-io"):
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _READ, None)
        self._calls: deque = deque()
        self._dirty: deque = deque()
        self._woken = False
        self._timers: list = []
        self._timer_seq = itertools.count()
        self._running = True
        self.housekeepers: set = set()
        self._last_housekeeping = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the I/O thread is still serving."""
        return self._running

    def in_io_thread(self) -> bool:
        """Whether the caller is the I/O thread."""
        return threading.current_thread() is self._thread

    def wake(self) -> None:
        """Make the I/O thread look at its queues soon (cheap if already due)."""
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already full of wake-up bytes, or shutting down

    def call_soon(self, func, *args) -> None:
        """Run ``func(*args)`` in the I/O thread."""
        self._calls.append((func, args))
        if threading.current_thread() is not self._thread:
            self.wake()

    def schedule_write(self, conn) -> None:
        """Have the I/O thread write what ``conn`` has queued."""
        self._dirty.append(conn)
        if threading.current_thread() is not self._thread:
            self.wake()

    def call_later(self, delay: float, func, *args) -> list:
        """Run ``func(*args)`` in the I/O thread after ``delay`` seconds.

        Returns a handle; :meth:`cancel` it to drop the call.
        """
        entry = [time.monotonic() + delay, next(self._timer_seq), func, args]
        self.call_soon(heapq.heappush, self._timers, entry)
        return entry

    @staticmethod
    def cancel(handle: list) -> None:
        """Cancel a call made with :meth:`call_later` (harmless if it already ran)."""
        handle[2] = None

    def stop(self, timeout: float = 2.0) -> None:
        """End the I/O thread and release the selector and wake-up sockets."""
        if self._running:
            self.call_soon(self._stop_now)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- I/O thread -------------------------------------------------------

    def register(self, sock, handler, write: bool = False) -> None:
        """Watch ``sock`` for reading (and writing) on behalf of ``handler``."""
        self._sel.register(sock, _READ | (_WRITE if write else 0), handler)

    def want_write(self, sock, handler, flag: bool) -> None:
        """Turn interest in writability of ``sock`` on or off."""
        try:
            self._sel.modify(sock, _READ | (_WRITE if flag else 0), handler)
        except (KeyError, ValueError):
            pass

    def unregister(self, sock) -> None:
        """Stop watching ``sock`` (harmless if it is not watched)."""
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _stop_now(self) -> None:
        self._running = False

    def _timeout(self, now: float) -> float | None:
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - now)
        if self.housekeepers:
            wait = max(0.0, self._last_housekeeping + TICK - now)
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _run(self) -> None:
        sel, calls, dirty, wake_r = self._sel, self._calls, self._dirty, self._wake_r
        try:
            while self._running:
                ready = sel.select(self._timeout(time.monotonic()))
                for key, mask in ready:
                    handler = key.data
                    if handler is None:
                        # Drain first, then clear the flag: clearing it first
                        # let a waker's byte be drained here while its flag
                        # stayed set, so no later wake() wrote a byte again.
                        try:
                            while wake_r.recv(4096):
                                pass
                        except (BlockingIOError, OSError):
                            pass
                        self._woken = False
                        continue
                    try:
                        if mask & _READ:
                            handler._on_readable()
                        if mask & _WRITE:
                            handler._on_writable()
                    except Exception:  # a bug must not kill the thread
                        log.exception("yoton: error in I/O handler %r", handler)
                self._run_queued(calls, dirty)
                now = time.monotonic()
                self._run_timers(now)
                if self.housekeepers and now - self._last_housekeeping >= TICK:
                    self._last_housekeeping = now
                    for obj in list(self.housekeepers):
                        try:
                            obj._housekeeping(now)
                        except Exception:
                            log.exception("yoton: error in housekeeping of %r", obj)
                    self._run_queued(calls, dirty)
        finally:
            self._running = False
            self._run_queued(calls, dirty)
            sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _run_queued(self, calls: deque, dirty: deque) -> None:
        # Calls may queue writes and writes may queue calls: loop until quiet.
        while calls or dirty:
            while calls:
                func, args = calls.popleft()
                try:
                    func(*args)
                except Exception:
                    log.exception("yoton: error in I/O call %r", func)
            while dirty:
                conn = dirty.popleft()
                try:
                    conn._write_now()
                except Exception:
                    log.exception("yoton: error writing to %r", conn)

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, func, args = heapq.heappop(timers)
            if func is not None:
                try:
                    func(*args)
                except Exception:
                    log.exception("yoton: error in timed call %r", func)
