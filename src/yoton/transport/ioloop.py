"""The I/O loop of a context: one thread, and readers that lend a hand.

One thread per context waits for every socket of that context: listening
sockets, handshakes in progress and connections. Other threads talk to it
through two lock-free queues and a wake-up socketpair:

* :meth:`IOLoop.call_soon` queues a callable to run in the loop;
* :meth:`IOLoop.schedule_write` queues a connection that has new outgoing
  data, so the loop writes it with as few system calls as it can.

A wake-up byte is written only when the loop is not already due to wake, so
a burst of sends costs one wake-up. Time-based work (heartbeats, handshake
deadlines, channel re-announcements) runs from a timer heap and a
housekeeping pass at most every :data:`TICK` seconds; nothing on the message
path sleeps or polls.

Rules for who runs the loop's work (the "loop side"):

* Waiting for sockets needs no lock; *serving* what a wait returned (socket
  handlers, queued calls and writes, timers, housekeeping) happens under
  ``_lock``, so exactly one thread at a time is on the loop side.
  :meth:`in_io_thread` is true for that thread.
* On Linux the sockets sit in one epoll set with ``EPOLLONESHOT``: an event
  is reported to one waiting thread only, and the fd is re-armed after it
  has been served. Of several threads waiting, the kernel wakes the one that
  started waiting last.
* That is what :meth:`run_until` uses: a thread about to sleep until a
  package arrives for it (``recv``, ``Future.result``, a replier's worker)
  waits in the epoll set itself. When the package comes, it is the thread
  woken, it serves the socket and finds its package -- one thread switch
  fewer per message than being handed the package by the I/O thread. One
  such reader at a time; others wait on their channel's condition.
* A reader first polls the set without sleeping, for ``spin`` seconds
  (:data:`SPIN`) after it comes and after each pass with events, and only
  then sleeps in it: on a loopback the answer to what it just sent often
  comes sooner than a sleeping thread can be woken.
* While a reader is there, the I/O thread stays out of the epoll set (it
  waits on ``_reader_gone``): had it gone back in, the kernel would hand it
  the events the reader polls or waits for. It also stays out until no
  reader has been in for :data:`LINGER` seconds, since a thread that leaves
  ``run_until`` usually comes back soon (its next ``recv``, its next
  request). It looks by itself every LINGER seconds, so a reader leaving
  costs no thread wake-up; once readers have been in for
  :data:`DEEP_AFTER` seconds it sleeps until the reader that leaves tells
  it, and then looks every LINGER seconds again for DEEP_AFTER seconds. So
  a thread blocked in a long wait costs it no wake-ups, and steady traffic
  at most one per LINGER. A :meth:`wake` with no reader in brings it back
  at once. The reader serves everything meanwhile, timers and housekeeping
  included. (The I/O thread may still be in the set from before the reader
  came; it then wakes at most at its next timeout, serves, and steps out.)
* A reader must hear about a package it did not serve itself: a thread that
  serves a pass while a reader waits wakes the loop at the end of the pass,
  so the reader checks again. Whoever meets a reader's condition off the
  loop side (closing a channel, cancelling a future) wakes the loop too.
* The main thread serves only under yoton's SIGINT handler (see
  :func:`_sigint_handler`), so Ctrl-C never lands half-way through a pass.
* Elsewhere (no epoll) the I/O thread alone serves; :meth:`run_until`
  returns False and callers wait on their condition.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import selectors
import signal
import socket
import threading
import time
from collections import deque

log = logging.getLogger("yoton")

__all__ = ["IOLoop", "MainSending", "TICK", "SPIN", "default_spin"]

TICK = 0.1  #: seconds between housekeeping passes while connections exist
SPIN = 0.0002  #: seconds a thread in :meth:`IOLoop.run_until` polls before it sleeps
LINGER = 0.001  #: seconds the I/O thread waits for a reader to come back before it serves again
DEEP_AFTER = 0.05  #: seconds of readers coming and going before the I/O thread sleeps until told
_LIGHT, _DEEP = "light", "deep"


def default_spin() -> float:
    """:data:`SPIN`, or 0 on a single CPU (polling there only delays the peer)."""
    return SPIN if (os.cpu_count() or 1) > 1 else 0.0

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_EPOLL = hasattr(select, "epoll") and hasattr(select, "EPOLLONESHOT")


class _EpollSet:
    """An epoll set whose fds report once per arming (EPOLLONESHOT)."""

    def __init__(self):
        self._ep = select.epoll()
        self._map: dict = {}  # fd -> [handler, mask]

    @staticmethod
    def _flags(mask: int) -> int:
        flags = select.EPOLLONESHOT
        if mask & _READ:
            flags |= select.EPOLLIN
        if mask & _WRITE:
            flags |= select.EPOLLOUT
        return flags

    def register(self, sock, mask: int, handler) -> None:
        fd = sock.fileno()
        self._ep.register(fd, self._flags(mask))
        self._map[fd] = [handler, mask]

    def modify(self, sock, mask: int, handler) -> None:
        fd = sock.fileno()
        entry = self._map[fd]
        entry[0], entry[1] = handler, mask
        self._ep.modify(fd, self._flags(mask))

    def unregister(self, sock) -> None:
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
                    self._ep.modify(fd, self._flags(entry[1]))
                except OSError:
                    pass

    def close(self) -> None:
        self._ep.close()


class _SelectorSet:
    """The portable fallback: a :mod:`selectors` selector, waited on by the I/O thread only."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()
        self._parked: dict = {}  # sock -> handler, watched for nothing for now (mask 0)

    def register(self, sock, mask: int, handler) -> None:
        if mask:
            self._sel.register(sock, mask, handler)
        else:
            self._parked[sock] = handler

    def modify(self, sock, mask: int, handler) -> None:
        if sock in self._parked:
            del self._parked[sock]
            self.register(sock, mask, handler)
        elif mask:
            self._sel.modify(sock, mask, handler)
        else:
            self._sel.unregister(sock)
            self._parked[sock] = handler

    def unregister(self, sock) -> None:
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

    def __init__(self, loop: "IOLoop", sock: socket.socket):
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


# Ctrl-C and a main thread in run_until(). A KeyboardInterrupt raised between
# two bytecodes of the loop would leave a package half-parsed or half-routed,
# or drop events epoll has already reported (one-shot: never reported again).
# So the main thread waits and serves only under yoton's SIGINT handler,
# installed in place of Python's default the first time the main thread comes
# to run_until(): it raises KeyboardInterrupt like the default, except while
# the main thread is in run_until(), which it then wakes and leaves at the end
# of the pass, raising it there. If the program has a SIGINT handler of its
# own, the main thread does not serve (it waits to be woken, as elsewhere).
# The same handler holds KeyboardInterrupt back while the main thread sends
# (see MainSending): it could otherwise leave a connection's write lock held,
# or a write half booked, which corrupts the stream.
_MAIN = threading.main_thread()
_main_loop: "IOLoop | None" = None  # the loop the main thread is in run_until() of
_main_sending = 0  # > 0 while the main thread is inside MainSending
_sigint_pending: tuple | None = None


def _sigint_handler(signum, frame):
    """yoton's SIGINT handler: KeyboardInterrupt, as Python's default, but
    raised only once the main thread has finished a yoton I/O pass or send."""
    global _sigint_pending
    loop = _main_loop
    if loop is None and not _main_sending:
        signal.default_int_handler(signum, frame)
    _sigint_pending = (signum, frame)
    if loop is not None:
        loop._wake_set()  # (takes no lock: we may have interrupted the main thread holding one)


class MainSending:
    """``with MainSending():`` around a send's locks and writes, in any thread:
    in the main thread, Ctrl-C waits for the end of the block (it raises
    KeyboardInterrupt there), as it does for an I/O pass."""

    __slots__ = ("_on",)

    def __enter__(self):
        global _main_sending
        self._on = threading.current_thread() is _MAIN and (_main_sending or _main_may_serve())
        if self._on:
            _main_sending += 1
        return self

    def __exit__(self, *exc):
        global _main_sending, _sigint_pending
        if self._on:
            _main_sending -= 1
            if not _main_sending and _main_loop is None and _sigint_pending is not None:
                pending, _sigint_pending = _sigint_pending, None
                signal.default_int_handler(*pending)
        return False


try:  # signal.getsignal() converts to an enum first: ~5 us, once per wait
    from _signal import getsignal as _getsignal
except ImportError:  # pragma: no cover (not CPython)
    _getsignal = signal.getsignal


def _main_may_serve() -> bool:
    """Install :func:`_sigint_handler` if SIGINT has Python's default handler;
    return whether the main thread may serve (main thread only)."""
    try:
        handler = _getsignal(signal.SIGINT)
        if handler is signal.default_int_handler:
            signal.signal(signal.SIGINT, _sigint_handler)
            return True
    except (ValueError, OSError):  # not the main interpreter
        return False
    return handler is _sigint_handler


class IOLoop:
    """The I/O thread that serves all sockets of one context.

    Handlers registered with :meth:`register` provide ``_on_readable()``
    and/or ``_on_writable()``; objects in :attr:`housekeepers` provide
    ``_housekeeping(now)``. All of those run on the loop side only: in the
    I/O thread, or in a thread inside :meth:`run_until`, one at a time.
    """

    def __init__(self, name: str = "yoton-io", spin: float | None = None):
        self._set = _EpollSet() if _EPOLL else _SelectorSet()
        self._shared = _EPOLL  # whether other threads may wait in the set too
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._set.register(self._wake_r, _READ, _Waker(self, self._wake_r))
        self._calls: deque = deque()
        self._dirty: deque = deque()
        self._woken = False
        self._timers: list = []
        self._timer_seq = itertools.count()
        self._running = True
        self.housekeepers: set = set()
        self._last_housekeeping = 0.0
        self._lock = threading.Lock()  # held while serving (the loop side)
        self._leader: threading.Thread | None = None  # the thread holding _lock
        self._reader: threading.Thread | None = None  # the thread in run_until()
        # Guards _reader changes; the I/O thread waits here while a reader is in.
        self._reader_gone_lock = threading.Lock()  # (entered with C-level `with` where we only notify)
        self._reader_gone = threading.Condition(self._reader_gone_lock)
        self._io_wake_at = 0.0  # when the I/O thread's current wait ends at the latest
        self._io_out = None  # _LIGHT / _DEEP while the I/O thread stays out of the set for a reader
        self._reader_since = 0.0  # (monotonic) when readers started to come while it stayed out
        self._reader_left = 0.0  # (monotonic) when the last reader left
        self.spin = default_spin() if spin is None else spin  # seconds a reader polls before it sleeps
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the loop is still serving."""
        return self._running

    def in_io_thread(self) -> bool:
        """Whether the caller is on the loop side (serving the loop's work now)."""
        return threading.current_thread() is self._leader

    def wake(self) -> None:
        """Make a thread waiting for the loop look at its queues soon (cheap if already due)."""
        self._wake_set()
        if self._io_out is not None and self._reader is None:
            with self._reader_gone_lock:  # the I/O thread waits for a reader to come back: not now
                self._reader_gone.notify()

    def _wake_set(self) -> None:
        # The wake-up byte alone (also from the SIGINT handler: no lock here).
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # already full of wake-up bytes, or shutting down

    def call_soon(self, func, *args) -> None:
        """Run ``func(*args)`` on the loop side."""
        self._calls.append((func, args))
        if threading.current_thread() is not self._leader:
            self.wake()

    def schedule_write(self, conn) -> None:
        """Have the loop write what ``conn`` has queued."""
        self._dirty.append(conn)
        if threading.current_thread() is not self._leader:
            self.wake()

    def call_later(self, delay: float, func, *args) -> list:
        """Run ``func(*args)`` on the loop side after ``delay`` seconds.

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
        """End the I/O thread and release the epoll set and wake-up sockets."""
        if self._running:
            self.call_soon(self._stop_now)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def run_until(self, done, deadline: float | None) -> bool:
        """Wait in the calling thread for ``done()`` to become true, serving
        the loop meanwhile, until the ``time.monotonic()`` ``deadline`` (None:
        no limit). See the module docstring for why.

        ``done`` is checked before every wait and after every pass served by
        another thread; whoever makes it true off the loop side must
        :meth:`wake` the loop. Returns False at once,
        without waiting, if the caller cannot be the reader (another thread
        is, the loop has stopped, the caller is on the loop side, or the
        platform has no epoll); the caller then waits its usual way.
        """
        me = threading.current_thread()
        if not self._shared or not self._running or me is self._leader or me is self._thread:
            return False
        main = me is _MAIN
        if main and not _main_may_serve():
            return False
        global _main_loop, _sigint_pending
        if main:
            _main_loop = self  # from here on, Ctrl-C waits for the end of the pass
        try:
            cond, lock = self._reader_gone, self._reader_gone_lock
            with lock:
                if self._reader is not None:
                    return False
                self._reader = me
                if self._io_out is None:
                    self._reader_since = time.monotonic()
            try:
                self._read(done, deadline, me, main)
            finally:
                with lock:
                    self._reader = None
                    self._reader_left = now = time.monotonic()
                    if self._io_out is _DEEP:
                        cond.notify()  # (else the I/O thread looks by itself soon)
                # The I/O thread may be sleeping in the set past a timer (or
                # the first housekeeping pass) that came while we served.
                timeout = self._timeout(now)
                if timeout is not None and now + timeout < self._io_wake_at - 0.001:
                    self.wake()
            return True
        finally:
            if main:
                _main_loop = None
                if _sigint_pending is not None:
                    pending, _sigint_pending = _sigint_pending, None
                    signal.default_int_handler(*pending)

    def _read(self, done, deadline: float | None, me: threading.Thread, main: bool) -> None:
        # The reader's loop (see run_until). It polls without sleeping for
        # self.spin seconds after it comes and after each pass with events:
        # an answer due within tens of microseconds is then taken without
        # being put to sleep and woken again, which costs more than that.
        wait, serve, clock, monotonic = self._set.wait, self._serve, time.perf_counter, time.monotonic
        spin = self.spin
        spin_end = clock() + spin if spin > 0 else 0.0
        while self._running and not done():
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
            if main and _sigint_pending is not None:
                return

    # -- loop side ----------------------------------------------------------

    def register(self, sock, handler, write: bool = False) -> None:
        """Watch ``sock`` for reading (and writing) on behalf of ``handler``."""
        self._set.register(sock, _READ | (_WRITE if write else 0), handler)

    def want_write(self, sock, handler, flag: bool) -> None:
        """Turn interest in writability of ``sock`` on or off (reading stays on)."""
        self.set_interest(sock, handler, True, flag)

    def set_interest(self, sock, handler, read: bool, write: bool) -> None:
        """Watch ``sock`` for reading and/or writing, or neither (paused)."""
        try:
            self._set.modify(sock, (_READ if read else 0) | (_WRITE if write else 0), handler)
        except (KeyError, ValueError, OSError):
            pass

    def unregister(self, sock) -> None:
        """Stop watching ``sock`` (harmless if it is not watched)."""
        try:
            self._set.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _stop_now(self) -> None:
        self._running = False
        self.wake()  # (for a reader in the set)
        with self._reader_gone:
            self._reader_gone.notify()  # (for the I/O thread, if a reader ran this)

    def _timeout(self, now: float) -> float | None:
        timeout = None
        if self._timers:
            timeout = max(0.0, self._timers[0][0] - now)
        if self.housekeepers:
            wait = max(0.0, self._last_housekeeping + TICK - now)
            timeout = wait if timeout is None else min(timeout, wait)
        return timeout

    def _run(self) -> None:
        me, wait, serve = self._thread, self._set.wait, self._serve
        try:
            while self._running:
                if self._reader is not None:
                    # A reader waits in the set and serves everything meanwhile
                    # (timers too). Stay out of the set: the kernel would hand
                    # events to us whenever we went back in after it.
                    self._io_wake_at = float("-inf")  # (we recompute when it leaves)
                    self._stay_out()
                    continue
                timeout = self._timeout(time.monotonic())
                self._io_wake_at = float("inf") if timeout is None else time.monotonic() + timeout
                serve(wait(timeout), me)
        finally:
            with self._lock:
                self._leader = me
                self._running = False
                self._run_queued(self._calls, self._dirty)
                self._leader = None
            # A reader leaves at its next pass; wake it, and close the set
            # only after it has (a thread in epoll_wait does not notice a close).
            self.wake()
            with self._reader_gone:
                self._reader_gone.wait_for(lambda: self._reader is None, 2.0)
            self._set.close()
            self._wake_r.close()
            self._wake_w.close()

    def _stay_out(self) -> None:
        # Stay out of the set while a reader is in, and until none has been
        # in for LINGER seconds: a thread that leaves run_until() usually
        # comes back soon (its next recv, its next request), and had we gone
        # into the set meanwhile, the kernel would hand us the package that
        # thread is about to poll for. We look by ourselves every LINGER
        # seconds, so a reader leaving costs no wake-up of this thread, and
        # sleep until notified (_DEEP) only once a reader has stayed in for
        # DEEP_AFTER seconds.
        cond = self._reader_gone
        with cond:
            try:
                while self._running:
                    now = time.monotonic()
                    if self._reader is None:
                        left = self._reader_left + LINGER - now
                        if left <= 0 or self._woken:
                            return
                        self._io_out = _LIGHT
                        cond.wait(left)
                    elif now - self._reader_since < DEEP_AFTER:
                        self._io_out = _LIGHT
                        cond.wait(LINGER)
                    else:
                        self._io_out = _DEEP
                        cond.wait()
                        self._reader_since = time.monotonic()
            finally:
                self._io_out = None

    def _serve(self, events: list, me: threading.Thread) -> None:
        """Serve what a wait returned, then queued work and due timers (loop side)."""
        calls, dirty = self._calls, self._dirty
        with self._lock:
            self._leader = me
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
                reader = self._reader
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
