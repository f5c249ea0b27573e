"""The I/O loop of a context: one thread, and readers that lend a hand.

One thread per context waits for every socket of that context: listening
sockets, handshakes in progress and connections. Other threads talk to it
through two lock-free queues and a wake-up socketpair:

* :meth:`IOLoop.call_soon` queues a callable to run in the loop;
* :meth:`IOLoop.schedule_write` queues a connection that has new outgoing
  data, so the loop writes it with as few system calls as it can;
* :meth:`IOLoop.call_later` runs a callable after a delay (a timer heap).

A wake-up byte is written only when the loop is not already due to wake, so
a burst of sends costs one wake-up. Time-based work (heartbeats, handshake
deadlines, channel re-announcements) runs from the timer heap and a
housekeeping pass at most every :data:`TICK` seconds; nothing on the message
path sleeps or polls.

Who serves (the "loop side"):

* Waiting for sockets needs no lock; *serving* what a wait returned (socket
  handlers, queued calls and writes, timers, housekeeping) happens under
  ``_lock``, so exactly one thread at a time is on the loop side.
  :meth:`on_loop_side` is true for that thread.
* With the ``epoll`` poller (Linux) the sockets sit in one epoll set with
  ``EPOLLONESHOT``: an event is reported to one waiting thread only, and the
  fd is re-armed after it has been served. Of several threads waiting, the
  kernel wakes the one that started waiting last.
* That is what :meth:`run_until` uses: a thread about to sleep until a
  package arrives for it (``recv``, ``Future.result``, a replier's worker)
  waits in the epoll set itself (it takes the *reader seat*, see
  :class:`_ReaderSeat`). When the package comes, it is the thread woken, it
  serves the socket and finds its package -- one thread switch fewer per
  message than being handed the package by the I/O thread. One reader at a
  time; others wait on their own conditions.
* A reader first polls the set without sleeping, for ``spin`` seconds after
  it comes and after each pass with events, and only then sleeps in it: on a
  loopback the answer to what it just sent often comes sooner than a
  sleeping thread can be woken.
* While a reader is in, the I/O thread stays out of the epoll set (it would
  take the reader's events): see :class:`_ReaderSeat` for how long and how
  it comes back.
* A reader must hear about a package it did not serve itself: a thread that
  serves a pass while a reader waits wakes the loop at the end of the pass,
  so the reader checks again. Whoever meets a reader's condition off the
  loop side (closing a channel, cancelling a future) wakes the loop too.
* The main thread serves only under yoton's SIGINT handler (see
  :mod:`.sigint`), so Ctrl-C never lands half-way through a pass.
* With the portable ``select`` poller (macOS, Windows; or forced with
  ``IOLoop(poller="select")`` or the environment variable
  ``YOTON_POLLER=select``) the I/O thread alone serves; :meth:`run_until`
  returns False and callers wait on their condition.

Lock order (outer first; every lock of the package and its place are in
docs/design.md, section 3): a channel's or future's condition is never held
while taking the loop lock; the loop lock may be held while taking the
router's lock, a connection's write lock, a queue's lock, the event queue's
lock or the reader seat's lock. Callbacks of an embedded GUI loop are never called with
the loop lock held (see :func:`yoton.events.deferred_callbacks`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import selectors
import socket
import threading
import time
from collections import deque
from enum import Enum
from threading import get_ident
from typing import Any, Callable

from .. import events as _events_module
from ..events import deferred_callbacks
from . import sigint

#: Between two polls a spinning reader lets another runnable thread of this
#: CPU go first: with more busy processes than CPUs (a relay between two
#: spinning ends), the one with something to do would otherwise wait for
#: the spinner's time slice to end.
_yield = getattr(os, "sched_yield", lambda: None)

log = logging.getLogger("yoton")

__all__ = ["IOLoop", "TICK", "SPIN", "LINGER", "DEEP_AFTER", "IDLE_LOOK", "default_spin", "default_poller", "POLLERS"]

TICK = 0.1  #: seconds between housekeeping passes while connections exist
SPIN = 0.0002  #: seconds a thread in :meth:`IOLoop.run_until` polls before it sleeps
LINGER = 0.001  #: seconds the I/O thread waits for a reader to come back before it serves again
DEEP_AFTER = 0.05  #: seconds of readers coming and going before the I/O thread sleeps until told
#: seconds the I/O thread waits in the set at most when nothing timed is due
#: (no connections, no timers): a reader that came meanwhile and takes every
#: event (the kernel wakes the thread that began to wait last) would otherwise
#: have it beside itself in the set for as long as the reader stays.
IDLE_LOOK = 1.0

#: The pollers an IOLoop can use: "epoll" lets waiting threads serve (Linux),
#: "select" is the portable one (the I/O thread alone serves).
POLLERS = ("epoll", "select")
_HAVE_EPOLL = hasattr(select, "epoll") and hasattr(select, "EPOLLONESHOT")


def default_spin() -> float:
    """:data:`SPIN`, or 0 on a single CPU (polling there only delays the peer)."""
    return SPIN if (os.cpu_count() or 1) > 1 else 0.0


def default_poller() -> str:
    """``$YOTON_POLLER`` if set ("epoll" or "select"), else "epoll" where it exists."""
    forced = os.environ.get("YOTON_POLLER", "").strip().lower()
    if forced:
        if forced not in POLLERS:
            raise ValueError(f"YOTON_POLLER must be one of {POLLERS}, not {forced!r}")
        if forced == "epoll" and not _HAVE_EPOLL:
            raise ValueError("YOTON_POLLER=epoll, but this platform has no epoll")
        return forced
    return "epoll" if _HAVE_EPOLL else "select"


_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class _EpollSet:
    """An epoll set whose fds report once per arming (EPOLLONESHOT)."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._map: dict[int, list[Any]] = {}  # fd -> [handler, mask, its epoll flags]

    @staticmethod
    def _flags(mask: int) -> int:
        flags = select.EPOLLONESHOT
        if mask & _READ:
            flags |= select.EPOLLIN
        if mask & _WRITE:
            flags |= select.EPOLLOUT
        return flags

    def register(self, sock: socket.socket, mask: int, handler: Any) -> None:
        fd = sock.fileno()
        flags = self._flags(mask)
        self._ep.register(fd, flags)
        self._map[fd] = [handler, mask, flags]

    def modify(self, sock: socket.socket, mask: int, handler: Any) -> None:
        fd = sock.fileno()
        entry = self._map[fd]
        entry[0], entry[1], entry[2] = handler, mask, self._flags(mask)
        self._ep.modify(fd, entry[2])

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd < 0 or self._map.pop(fd, None) is None:
            raise KeyError(sock)
        self._ep.unregister(fd)

    def wait(self, timeout: float | None) -> list:
        """Wait for events (any thread, no lock): ``[(fd, events), ...]``."""
        try:
            return self._ep.poll(-1 if timeout is None else timeout)
        except OSError:  # closed under us at shutdown
            return []

    def serve(self, events: list) -> None:
        """Call the handlers for ``events`` and re-arm their fds (loop side only)."""
        entries = self._map
        for fd, ev in events:
            entry = entries.get(fd)
            if entry is None:  # unregistered meanwhile
                continue
            handler = entry[0]
            try:
                if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    handler._on_readable()
                if ev & (select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR) and entry[1] & _WRITE:
                    handler._on_writable()
            except Exception:  # a bug must not kill the loop
                log.exception("yoton: error in I/O handler %r", handler)
            if entries.get(fd) is entry:
                try:
                    self._ep.modify(fd, entry[2])
                except OSError:
                    pass

    def close(self) -> None:
        self._ep.close()


class _SelectorSet:
    """The portable fallback: a :mod:`selectors` selector, waited on by the I/O thread only."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._parked: dict = {}  # sock -> handler, watched for nothing for now (mask 0)

    def register(self, sock: socket.socket, mask: int, handler: Any) -> None:
        if mask:
            self._sel.register(sock, mask, handler)
        else:
            self._parked[sock] = handler

    def modify(self, sock: socket.socket, mask: int, handler: Any) -> None:
        if sock in self._parked:
            del self._parked[sock]
            self.register(sock, mask, handler)
        elif mask:
            self._sel.modify(sock, mask, handler)
        else:
            self._sel.unregister(sock)
            self._parked[sock] = handler

    def unregister(self, sock: socket.socket) -> None:
        if self._parked.pop(sock, None) is None:
            self._sel.unregister(sock)

    def wait(self, timeout: float | None) -> list:
        return self._sel.select(timeout)

    def serve(self, events: list) -> None:
        for key, mask in events:
            handler = key.data
            try:
                if mask & _READ:
                    handler._on_readable()
                if mask & _WRITE:
                    handler._on_writable()
            except Exception:  # a bug must not kill the loop
                log.exception("yoton: error in I/O handler %r", handler)

    def close(self) -> None:
        self._sel.close()


class _Waker:
    """The wake-up socketpair, registered like any socket."""

    def __init__(self, loop: IOLoop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock

    def _on_readable(self) -> None:
        # Drain first, then clear the flag: clearing it first let a waker's
        # byte be drained here while its flag stayed set, so no later wake()
        # wrote a byte again.
        try:
            while self.sock.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self.loop._woken = False


class _Out(Enum):
    """Where the I/O thread is while a reader has the seat (see _ReaderSeat)."""

    IN = "in"  #: in the poller set, serving (no reader around)
    LIGHT = "light"  #: out of the set, looking by itself every LINGER seconds
    DEEP = "deep"  #: out of the set, asleep until the leaving reader tells it


class _ReaderSeat:
    """The reader seat: which thread (if any) waits in the epoll set besides
    the I/O thread, and how the I/O thread steps aside for it.

    Rules:

    * One reader at a time (:meth:`take` fails while another has it).
    * While a reader is in, the I/O thread stays out of the set: had it gone
      back in, the kernel would hand it the events the reader polls or waits
      for. It also stays out until no reader has been in for
      :data:`LINGER` seconds, since a thread that leaves ``run_until``
      usually comes back soon (its next ``recv``, its next request).
    * It looks by itself every LINGER seconds (:attr:`_Out.LIGHT`), so a
      reader leaving costs no thread wake-up; once readers have been in for
      :data:`DEEP_AFTER` seconds it sleeps until the reader that leaves tells
      it (:attr:`_Out.DEEP`), and then looks every LINGER seconds again. So
      a thread blocked in a long wait costs it no wake-ups, and steady
      traffic at most one per LINGER.
    * A wake-up with no reader in brings it back at once.

    State is guarded by the seat's condition; the I/O thread waits on it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()  # (entered with C-level `with` where we only notify)
        self.cond = threading.Condition(self.lock)
        self.reader: threading.Thread | None = None
        self.out = _Out.IN
        self.since = 0.0  # (monotonic) when readers started to come while the I/O thread stayed out
        self.left = 0.0  # (monotonic) when the last reader left

    def take(self, me: threading.Thread) -> bool:
        """Become the reader; False if another thread is."""
        with self.lock:
            if self.reader is not None:
                return False
            self.reader = me
            if self.out is _Out.IN:
                self.since = time.monotonic()
            return True

    def leave(self) -> float:
        """Give the seat up; return the time (monotonic)."""
        with self.lock:
            self.reader = None
            self.left = now = time.monotonic()
            if self.out is _Out.DEEP:
                self.cond.notify()  # (else the I/O thread looks by itself soon)
        return now

    def nudge(self) -> None:
        """A wake-up: an I/O thread staying out with no reader in comes back."""
        if self.out is not _Out.IN and self.reader is None:
            with self.lock:
                self.cond.notify()

    def stay_out(self, loop: IOLoop) -> None:
        """The I/O thread's side: wait outside the set while it should (see the class rules)."""
        cond = self.cond
        with cond:
            try:
                while loop.running:
                    now = time.monotonic()
                    if self.reader is None:
                        left = self.left + LINGER - now
                        if left <= 0 or loop._woken:
                            return
                        self.out = _Out.LIGHT
                        cond.wait(left)
                    elif now - self.since < DEEP_AFTER:
                        self.out = _Out.LIGHT
                        cond.wait(LINGER)
                    else:
                        self.out = _Out.DEEP
                        cond.wait()
                        self.since = time.monotonic()
            finally:
                self.out = _Out.IN


class IOLoop:
    """The I/O thread that serves all sockets of one context.

    Handlers registered with :meth:`register` provide ``_on_readable()``
    and/or ``_on_writable()``; objects in :attr:`housekeepers` provide
    ``_housekeeping(now)``. All of those run on the loop side only: in the
    I/O thread, or in a thread inside :meth:`run_until`, one at a time.
    ``poller`` is "epoll" or "select" (default: :func:`default_poller`).
    """

    def __init__(self, name: str = "yoton-io", spin: float | None = None, poller: str | None = None) -> None:
        poller = default_poller() if poller is None else poller
        if poller not in POLLERS or (poller == "epoll" and not _HAVE_EPOLL):
            choices = "'epoll' or 'select'" if _HAVE_EPOLL else "'select' (no epoll here)"
            raise ValueError(f"poller must be {choices}, not {poller!r}")
        self.poller = poller
        self._set = _EpollSet() if poller == "epoll" else _SelectorSet()
        self._shared = poller == "epoll"  # whether other threads may wait in the set too
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._set.register(self._wake_r, _READ, _Waker(self, self._wake_r))
        self._calls: deque = deque()
        self._dirty: deque = deque()
        self._woken = False
        self._timers: list = []
        self._timer_seq = itertools.count()
        self.running = True  #: whether the loop is still serving (read by any thread)
        self.housekeepers: set = set()
        self._last_housekeeping = 0.0
        self._lock = threading.Lock()  # held while serving (the loop side)
        self._leader: int | None = None  # the thread holding _lock (its ident: compared without a Python call)
        self._seat = _ReaderSeat()
        self._io_wake_at = 0.0  # when the I/O thread's current wait ends at the latest
        self.spin = default_spin() if spin is None else spin  # seconds a reader polls before it sleeps
        #: Links whose peer is in this process (loop side): while there are any,
        #: readers do not poll -- the peer needs the GIL a polling reader takes.
        self.no_spin = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------

    @property
    def shared(self) -> bool:
        """Whether threads waiting in :meth:`run_until` serve the loop (epoll)."""
        return self._shared

    def on_loop_side(self) -> bool:
        """Whether the calling thread is serving the loop's work right now
        (the I/O thread in a pass, or a reader in run_until in a pass)."""
        return get_ident() == self._leader

    def wake(self) -> None:
        """Make a thread waiting for the loop look at its queues soon (cheap if already due)."""
        self.wake_from_signal()
        self._seat.nudge()

    def wake_from_signal(self) -> None:
        """The wake-up byte alone: takes no lock (the SIGINT handler calls it)."""
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already full of wake-up bytes, or shutting down

    def call_soon(self, func: Callable[..., object], *args: Any) -> None:
        """Run ``func(*args)`` on the loop side."""
        self._calls.append((func, args))
        if get_ident() != self._leader:
            self.wake()

    def schedule_write(self, conn: Any) -> None:
        """Have the loop write what ``conn`` has queued (it provides ``_write_now()``)."""
        self._dirty.append(conn)
        if get_ident() != self._leader:
            self.wake()

    def call_later(self, func: Callable[..., object], delay: float, *args: Any) -> list:
        """Run ``func(*args)`` on the loop side after ``delay`` seconds.

        The order of the arguments is that of :func:`yoton.call_later`.
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
        """End the I/O thread and release the poller and wake-up sockets."""
        if self.running:
            self.call_soon(self._stop_now)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def run_until(self, done: Callable[[], object], deadline: float | None) -> bool:
        """Wait in the calling thread for ``done()`` to become true, serving
        the loop meanwhile, until the ``time.monotonic()`` ``deadline`` (None:
        no limit). See the module docstring for why.

        ``done`` is checked before every wait and after every pass served by
        another thread; whoever makes it true off the loop side must
        :meth:`wake` the loop. Returns False at once, without waiting, if the
        caller cannot take the reader seat (another thread has it, the loop
        has stopped, the caller is on the loop side, or the poller is not
        epoll); the caller then waits its usual way.
        """
        me = threading.current_thread()
        if not self._shared or not self.running or me is self._thread or get_ident() == self._leader:
            return False
        main = me is sigint.MAIN_THREAD
        if main and not sigint.serve_enter(self):  # (a Ctrl-C now waits for serve_exit)
            return False
        seat = self._seat
        try:
            if not seat.take(me):
                return False
            try:
                self._read(done, deadline, me, main)
            finally:
                now = seat.leave()
                # The I/O thread may be sleeping in the set past a timer (or
                # the first housekeeping pass) that came while we served.
                timeout = self._timeout(now)
                if timeout is not None and now + timeout < self._io_wake_at - 0.001:
                    self.wake()
            return True
        finally:
            if main:
                sigint.serve_exit()

    def _read(self, done: Callable[[], object], deadline: float | None, me: threading.Thread, main: bool) -> None:
        # The reader's loop (see run_until). It polls without sleeping for
        # self.spin seconds after it comes and after each pass with events:
        # an answer due within tens of microseconds is then taken without
        # being put to sleep and woken again, which costs more than that.
        wait, serve, clock, monotonic = self._set.wait, self._serve, time.perf_counter, time.monotonic
        interrupted = sigint.interrupted
        spin = 0.0 if self.no_spin else self.spin
        spin_end = clock() + spin if spin > 0 else 0.0
        while self.running and not done():
            now = monotonic()
            timeout = self._timeout(now)
            if deadline is not None:
                if now >= deadline:
                    return
                timeout = deadline - now if timeout is None else min(timeout, deadline - now)
            if spin_end:
                events = wait(0)
                if not events and timeout != 0:
                    started = clock()
                    until = spin_end if timeout is None else min(spin_end, started + timeout)
                    while not events and clock() < until:
                        _yield()
                        events = wait(0)
                    if not events and clock() >= spin_end:
                        spin_end = 0.0
                        if timeout is not None:  # (less what the spin took)
                            timeout = max(0.0, timeout - (clock() - started))
                        events = wait(timeout)
            else:
                events = wait(timeout)
            serve(events, me)
            if events and spin > 0:
                spin_end = clock() + spin
            if main and interrupted():
                return

    # -- loop side ----------------------------------------------------------

    def register(self, sock: socket.socket, handler: Any, write: bool = False) -> None:
        """Watch ``sock`` for reading (and writing) on behalf of ``handler``."""
        self._set.register(sock, _READ | (_WRITE if write else 0), handler)

    def set_interest(self, sock: socket.socket, handler: Any, read: bool, write: bool) -> None:
        """Watch ``sock`` for reading and/or writing, or neither (paused)."""
        try:
            self._set.modify(sock, (_READ if read else 0) | (_WRITE if write else 0), handler)
        except (KeyError, ValueError, OSError):
            pass

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching ``sock`` (harmless if it is not watched)."""
        try:
            self._set.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _stop_now(self) -> None:
        self.running = False
        self.wake()  # (for a reader in the set)
        with self._seat.cond:
            self._seat.cond.notify()  # (for the I/O thread, if a reader ran this)

    def _timeout(self, now: float) -> float | None:
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - now)
        if self.housekeepers:
            wait = max(0.0, self._last_housekeeping + TICK - now)
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _run(self) -> None:
        me, wait, serve, seat = self._thread, self._set.wait, self._serve, self._seat
        try:
            while self.running:
                if seat.reader is not None:
                    # A reader waits in the set and serves everything meanwhile
                    # (timers too). Stay out of the set: the kernel would hand
                    # events to us whenever we went back in after it.
                    self._io_wake_at = float("-inf")  # (we recompute when it leaves)
                    seat.stay_out(self)
                    continue
                timeout = self._timeout(time.monotonic())
                if timeout is None:
                    timeout = IDLE_LOOK
                self._io_wake_at = time.monotonic() + timeout
                serve(wait(timeout), me)
        finally:
            with self._lock:
                self._leader = get_ident()
                self.running = False
                self._run_queued(self._calls, self._dirty)
                self._leader = None
            # A reader leaves at its next pass; wake it, and close the set
            # only after it has (a thread in epoll_wait does not notice a close).
            self.wake()
            with seat.cond:
                seat.cond.wait_for(lambda: seat.reader is None, 2.0)
            self._set.close()
            self._wake_r.close()
            self._wake_w.close()

    def _serve(self, events: list, me: threading.Thread) -> None:
        """Serve what a wait returned, then queued work and due timers (loop side)."""
        if _events_module.embedding:  # (a GUI's callback waits for the end of the pass)
            with deferred_callbacks():
                self._serve_locked(events, me)
        else:
            self._serve_locked(events, me)

    def _serve_locked(self, events: list, me: threading.Thread) -> None:
        calls, dirty = self._calls, self._dirty
        with self._lock:
            self._leader = get_ident()
            try:
                if events:
                    self._set.serve(events)
                self._run_queued(calls, dirty)
                now = time.monotonic()
                if self._timers and self._timers[0][0] <= now:
                    self._run_timers(now)
                    self._run_queued(calls, dirty)  # (what the timers queued: not a tick later)
                if self.housekeepers and now - self._last_housekeeping >= TICK:
                    self._last_housekeeping = now
                    for obj in list(self.housekeepers):
                        try:
                            obj._housekeeping(now)
                        except Exception:
                            log.exception("yoton: error in housekeeping of %r", obj)
                    self._run_queued(calls, dirty)
            finally:
                self._leader = None
                # A reader waiting in the set checks its condition only when
                # it wakes: whatever we served may have met it. (Waking it from
                # inside the pass could be undone: the wake-up byte is drained
                # by whoever serves the waker, which may be us.)
                reader = self._seat.reader
                if reader is not None and reader is not me:
                    self.wake()

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
