"""Signals, timers and the yoton event queue.

yoton delivers notifications (a channel received something, a connection
closed, a timer expired) by putting small "events" on one process-wide
queue. Nothing runs until some thread drains that queue by calling
:func:`process_events`, runs :func:`start_event_loop`, or lets a GUI toolkit
do so via :func:`embed_event_loop`. Handlers therefore run in a thread of the
application's choosing, never in yoton's I/O thread.

Building blocks:

* :class:`Signal` -- a list of handlers; :meth:`Signal.emit` queues one event
  per handler, :meth:`Signal.emit_now` calls them right away.
* :class:`Timer` -- a signal that emits (without arguments) when its
  interval has passed, once or repeatedly.
* :func:`call_later` -- run a callable through the queue, now, first, or
  after a delay.

Design notes:

* The queue is a :class:`collections.deque` guarded by a
  :class:`threading.Condition`; posting only notifies when a thread waits.
* Delays (timers, positive ``call_later``) are kept in a heap by one lazily
  started daemon thread per process that sleeps on a condition until the
  earliest deadline and then posts the expiry to the queue. There is no
  polling, and delayed work also wakes a blocking :func:`process_events`
  and the embedding callback.
* :func:`process_events` takes the whole queue as one batch. Events queued
  while that batch runs (by handlers or by other threads) are left for the
  next call, so a handler that re-emits its own signal cannot trap a call
  in an endless loop.
* Exceptions raised by handlers and callbacks are logged on the ``"yoton"``
  logger and never escape the event machinery.

Internal hooks for the rest of the package: :func:`post_event` and
:func:`is_idle`.

yoton 2.2 reached these functions through an object, ``yoton.app`` (pyzo's
IDE calls ``yoton.app.embed_event_loop``); :data:`app` is that object here,
with 2.2's methods, working on the same queue as the module-level functions.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from numbers import Real
from typing import Any, Callable, Literal, Sequence

__all__ = [
    "Signal",
    "Timer",
    "call_later",
    "process_events",
    "start_event_loop",
    "stop_event_loop",
    "embed_event_loop",
    "release_event_loop",
    "post_event",
    "is_idle",
    "statistics",
    "MAX_EVENTS",
    "EventQueue",
    "EventLoop",
    "deferred_callbacks",
    "Event",
    "YotonApplication",
    "app",
]

log = logging.getLogger("yoton")

_monotonic = time.monotonic


def _describe(func: object) -> str:
    """Return a short, safe text naming *func* for log messages."""
    try:
        return repr(func)
    except Exception:  # a broken __repr__ must not hide the real error
        return object.__repr__(func)


# ---------------------------------------------------------------------------
# The event queue
# ---------------------------------------------------------------------------


#: Events the queue holds at most; more are discarded (counted, logged once
#: until the queue is processed). yoton itself keeps its own events few (one
#: pending ``received`` per channel, one pending expiry per timer, one
#: request per replier in 'event' mode); what piles up is signals emitted by
#: the application, or by connections, while nothing processes events.
MAX_EVENTS = 100_000


class EventQueue:
    """The process-wide queue of pending events (internal).

    Each event is a ``(func, args, kwargs)`` triple. Any thread may post;
    whichever thread calls :meth:`process_events` runs the events. Use the
    module-level functions rather than this class; there is one instance.
    It holds at most :data:`MAX_EVENTS`; beyond that, new events are
    discarded and counted in :attr:`discarded`.
    """

    def __init__(self) -> None:
        self._init_sync()
        self._queue: deque = deque()
        self.discarded = 0  # events discarded because the queue was full
        self._dropping = False
        self._callback: Callable[[], object] | None = None
        # True once the embedding callback was told about the current batch.
        self._callback_told = False
        # Bumped by stop(); loops started earlier see the change and return.
        self._stop_gen = 0

    def _init_sync(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._waiters = 0  # threads blocked in process_events
        self._busy = 0  # batches being run right now

    # -- posting ------------------------------------------------------------

    def post(
        self, func: Callable[..., object], args: tuple = (), kwargs: dict | None = None, front: bool = False
    ) -> None:
        """Queue ``func(*args, **kwargs)``; at the front if *front* is true."""
        item = (func, args, kwargs or {})
        with self._cond:
            if len(self._queue) >= MAX_EVENTS:
                full, callback = self._discard(1), None
            else:
                if front:
                    self._queue.appendleft(item)
                else:
                    self._queue.append(item)
                callback = self._note_posted()
                full = None
        if full is not None:
            self._log_full(full)
        if callback is not None:
            self._call_callback(callback)

    def post_many(self, items: Sequence[tuple[Callable[..., object], tuple, dict]]) -> None:
        """Queue several ``(func, args, kwargs)`` triples in order, at the back."""
        full = None
        with self._cond:
            room = MAX_EVENTS - len(self._queue)
            if len(items) > room:
                full = self._discard(len(items) - max(0, room))
                items = items[: max(0, room)]
            self._queue.extend(items)
            callback = self._note_posted()
        if full is not None:
            self._log_full(full)
        if callback is not None:
            self._call_callback(callback)

    def _discard(self, count: int) -> int | None:
        # (with the lock) Count; return the queue's length if this discard is to
        # be logged (once until the queue is processed), else None. The caller
        # logs it after releasing the lock: a logging handler may post events.
        self.discarded += count
        if self._dropping:
            return None
        self._dropping = True
        return len(self._queue)

    @staticmethod
    def _log_full(length: int) -> None:
        log.warning(
            "yoton: the event queue is full (%d events: nothing processes them?); "
            "discarding new events until it is processed",
            length,
        )

    def _note_posted(self) -> Callable[[], object] | None:
        """Wake a waiter; return the embedding callback if it must be called.

        Called with the lock held, right after something was queued.
        """
        if self._waiters:
            self._cond.notify()
        callback = self._callback
        if callback is None or self._callback_told:
            return None
        self._callback_told = True
        return callback

    @staticmethod
    def _call_callback(callback: Callable[[], object]) -> None:
        if _deferring.active:  # (see deferred_callbacks)
            _deferring.pending.append(callback)
            return
        EventQueue._run_callback(callback)

    @staticmethod
    def _run_callback(callback: Callable[[], object]) -> None:
        try:
            callback()
        except Exception:
            log.exception("Exception in the embedded event loop callback %s", _describe(callback))

    # -- processing ---------------------------------------------------------

    @staticmethod
    def _timeout_for(block: bool | float | None) -> float | None:
        """Translate a ``block`` argument into a wait time (None = forever)."""
        if block is None or block is False:
            return 0.0
        if block is True:
            return None
        timeout = float(block)
        if math.isnan(timeout) or timeout <= 0:
            return 0.0
        if math.isinf(timeout):
            return None
        return timeout

    def process_events(self, block: bool | float = False) -> None:
        """Run the events queued now; see the module-level :func:`process_events`."""
        self._process(self._timeout_for(block), None)

    def _process(self, timeout: float | None, stop_gen: int | None) -> None:
        cond = self._cond
        with cond:
            if not self._queue and timeout != 0:
                gen = self._stop_gen if stop_gen is None else stop_gen
                self._waiters += 1
                try:
                    cond.wait_for(lambda: self._queue or self._stop_gen != gen, timeout)
                finally:
                    self._waiters -= 1
            if not self._queue:
                return
            batch = self._queue
            self._queue = deque()
            self._callback_told = False
            self._dropping = False
            self._busy += 1
        try:
            popleft = batch.popleft
            while batch:
                func, args, kwargs = popleft()
                try:
                    func(*args, **kwargs)
                except Exception:
                    log.exception("Exception in event handler %s", _describe(func))
        finally:
            with cond:
                self._busy -= 1
                if batch:
                    # Interrupted by KeyboardInterrupt/SystemExit: keep the
                    # rest of the batch for the next call, in order.
                    self._queue.extendleft(reversed(batch))

    def run(self) -> None:
        """Process events until :meth:`stop` is called; see :func:`start_event_loop`."""
        with self._cond:
            gen = self._stop_gen
        while self._stop_gen == gen:
            self._process(None, gen)

    def stop(self) -> None:
        """Make every running :meth:`run` return; see :func:`stop_event_loop`."""
        with self._cond:
            self._stop_gen += 1
            self._cond.notify_all()

    # -- embedding and state ------------------------------------------------

    def embed(self, callback: Callable[[], object] | None) -> None:
        """Set (or with None clear) the callback told about new events."""
        if callback is not None and not callable(callback):
            raise ValueError("embed_event_loop() needs a callable or None.")
        global embedding
        with self._cond:
            self._callback = callback
            embedding = callback is not None
            # If events are already waiting, tell the new callback at once.
            self._callback_told = False
            callback = self._note_posted() if self._queue else None
        if callback is not None:
            self._call_callback(callback)

    def unembed(self, callback: Callable[[], object] | None) -> bool:
        """Clear the embedding callback if it is ``callback``; return whether it was."""
        global embedding
        with self._cond:
            if self._callback is not callback:
                return False
            self._callback = None
            embedding = False
            return True

    def is_idle(self) -> bool:
        """Return True if no event is queued and none is being run."""
        with self._cond:
            return not self._queue and not self._busy

    def pending(self) -> int:
        """Return the number of queued events not yet taken for processing."""
        return len(self._queue)


_events = EventQueue()
EventLoop = EventQueue  # (the name it had)


#: Whether an embedding callback is set (see :func:`embed_event_loop`); the
#: I/O loop defers callbacks (see :class:`deferred_callbacks`) only then.
embedding = False


class _Deferring(threading.local):
    active = False

    def __init__(self) -> None:
        self.pending: list = []


_deferring = _Deferring()


class deferred_callbacks:  # noqa: N801 (used like a function)
    """``with deferred_callbacks():`` -- the embedding callback (see
    :func:`embed_event_loop`) is not called from inside the block, in this
    thread, but once at its end.

    yoton's I/O loop serves each pass inside one: events it posts then never
    call a GUI's callback while it holds the loop's lock (a callback that did
    yoton I/O itself could deadlock).
    """

    __slots__ = ("_outer",)

    def __enter__(self) -> deferred_callbacks:
        self._outer = _deferring.active
        _deferring.active = True
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._outer:
            return False
        _deferring.active = False
        pending = _deferring.pending
        if pending:
            callbacks = list({id(c): c for c in pending}.values())  # (each once, in first-posted order)
            pending.clear()
            for callback in callbacks:
                EventQueue._run_callback(callback)
        return False


def post_event(func: Callable[..., object], *args: Any, front: bool = False, **kwargs: Any) -> None:
    """Queue ``func(*args, **kwargs)`` on the event queue (internal hook).

    Thread-safe. With ``front=True`` the call goes before everything already
    queued. (``front`` is consumed here and cannot be passed on to *func*.)
    """
    _events.post(func, args, kwargs, front)


def statistics() -> dict:
    """Counters of the event queue: ``pending`` events, and events
    ``discarded`` because it held :data:`MAX_EVENTS` already."""
    return {"pending": _events.pending(), "discarded": _events.discarded}


def is_idle() -> bool:
    """Return True if the event queue is empty and no event is being run (internal hook)."""
    return _events.is_idle()


def process_events(block: bool | float = False) -> None:
    """Run the events that are queued at the moment of the call.

    ``block`` says what to do when nothing is queued: ``False`` (default)
    returns at once; ``True`` waits until an event arrives; a number waits
    at most that many seconds. Events queued while the batch runs, for
    example by the handlers themselves, are run by the next call.
    A blocked call also returns when :func:`stop_event_loop` is called.
    Exceptions raised by handlers are logged, never raised.
    """
    _events.process_events(block)


def start_event_loop() -> None:
    """Run events as they arrive until :func:`stop_event_loop` is called.

    Blocks the calling thread; idles without using CPU while nothing is
    queued. Returns shortly after the stop request (once the batch running
    at that moment is done).
    """
    _events.run()


def stop_event_loop() -> None:
    """Ask every running :func:`start_event_loop` to return.

    May be called from any thread, including from an event handler. It has
    no effect on loops started after the call.
    """
    _events.stop()


def embed_event_loop(callback: Callable[[], object] | None) -> None:
    """Hook yoton's event queue into another event loop, e.g. a GUI's.

    ``callback`` takes no arguments and is called, from whichever thread
    queued the event, when an event arrives in an empty queue (once per
    batch, and immediately if events are already waiting). It should
    arrange for :func:`process_events` to be called soon in the GUI thread,
    and must therefore be thread-safe. ``None`` removes the callback.
    Exceptions from the callback are logged.
    """
    _events.embed(callback)


def release_event_loop(callback: Callable[[], object] | None) -> bool:
    """Remove ``callback`` as the embedding callback (see
    :func:`embed_event_loop`) if it still is the one set; return whether it
    was. For code that embeds for a while and must not remove a callback
    someone else set meanwhile."""
    return _events.unembed(callback)


# ---------------------------------------------------------------------------
# The timer thread
# ---------------------------------------------------------------------------


class _Entry:
    """One scheduled call in the timer heap."""

    __slots__ = ("deadline", "func", "args", "cancelled")

    def __init__(self, deadline: float, func: Callable[..., object], args: tuple) -> None:
        self.deadline = deadline
        self.func = func
        self.args = args
        self.cancelled = False


class _Scheduler:
    """Runs calls at monotonic deadlines from one daemon thread.

    The thread is started on first use and sleeps on a condition until the
    earliest deadline; scheduled calls must be quick (they just post to the
    event queue).
    """

    _COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Entry]] = []
        self._seq = itertools.count()
        self._cancelled = 0
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def schedule(self, deadline: float, func: Callable[..., object], *args: Any) -> _Entry:
        """Call ``func(*args)`` from the timer thread at *deadline* (monotonic)."""
        entry = _Entry(deadline, func, args)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), entry))
            if self._thread is None:
                self._start_thread()
            elif self._heap[0][2] is entry:
                self._cond.notify()
        return entry

    def cancel(self, entry: _Entry) -> None:
        """Forget *entry* if it has not run yet."""
        with self._cond:
            if entry.cancelled:
                return
            entry.cancelled = True
            self._cancelled += 1
            heap = self._heap
            if self._cancelled > self._COMPACT_MIN and self._cancelled * 2 > len(heap):
                heap[:] = [item for item in heap if not item[2].cancelled]
                heapq.heapify(heap)
                self._cancelled = 0

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._run, name="yoton-timers", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        cond = self._cond
        heap = self._heap
        while True:
            due: list[_Entry] = []
            with cond:
                while not due:
                    if not heap:
                        cond.wait()
                        continue
                    if heap[0][2].cancelled:
                        heapq.heappop(heap)
                        self._cancelled -= 1
                        continue
                    now = _monotonic()
                    wait = heap[0][0] - now
                    if wait > 0:
                        cond.wait(wait)
                        continue
                    while heap and heap[0][0] <= now:
                        entry = heapq.heappop(heap)[2]
                        if entry.cancelled:
                            self._cancelled -= 1
                        else:
                            # Mark as used up so a late cancel() is a no-op.
                            entry.cancelled = True
                            due.append(entry)
            for entry in due:
                try:
                    entry.func(*entry.args)
                except Exception:
                    log.exception("Exception in yoton timer thread calling %s", _describe(entry.func))

    def _after_fork_in_child(self) -> None:
        self._reset()
        if self._heap:
            self._start_thread()


_scheduler = _Scheduler()


def _after_fork_in_child() -> None:
    # Locks may have been held by threads that do not exist in the child,
    # and the timer thread itself is gone.
    _events._init_sync()
    _scheduler._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def call_later(func: Callable[..., object], timeout: float = 0.0, *args: Any, **kwargs: Any) -> None:
    """Call ``func(*args, **kwargs)`` through the event queue.

    ``timeout`` 0 queues the call behind what is already queued; a negative
    timeout puts it in front of everything queued; a positive one queues it
    after that many seconds. The call runs in the thread processing events.
    Raises ValueError if *func* is not callable.
    """
    if not callable(func):
        raise ValueError("call_later() needs a callable.")
    timeout = float(timeout)
    if timeout > 0:
        _scheduler.schedule(_monotonic() + timeout, _events.post, func, args, kwargs)
    else:
        _events.post(func, args, kwargs, timeout < 0)


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------

_bind_lock = threading.Lock()


class _WeakMethodHandler:
    """A bound method held without keeping its object alive."""

    __slots__ = ("_self_ref", "_func")

    def __init__(self, method: Any, self_ref: weakref.ref[Any]) -> None:
        self._self_ref = self_ref
        self._func = method.__func__

    @property
    def alive(self) -> bool:
        return self._self_ref() is not None

    def matches(self, func: object) -> bool:
        obj = self._self_ref()
        return (
            obj is not None and getattr(func, "__self__", None) is obj and getattr(func, "__func__", None) is self._func
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._self_ref()
        if obj is None:
            return None  # the object is gone: drop silently
        return self._func(obj, *args, **kwargs)

    def __repr__(self) -> str:
        obj = self._self_ref()
        name = getattr(self._func, "__qualname__", _describe(self._func))
        if obj is None:
            return f"<dead method {name}>"
        return f"<method {name} of {object.__repr__(obj)}>"


def _make_handler(func: Callable[..., object]) -> Callable[..., object]:
    """Return what a signal stores for *func*: a weak wrapper or *func* itself."""
    obj = getattr(func, "__self__", None)
    if obj is not None and hasattr(func, "__func__"):
        try:
            self_ref = weakref.ref(obj)
        except TypeError:
            return func  # object does not support weak references
        return _WeakMethodHandler(func, self_ref)
    return func


def _handler_matches(handler: Callable[..., object], func: object) -> bool:
    if isinstance(handler, _WeakMethodHandler):
        return handler.matches(func)
    if handler is func:
        return True
    try:
        return bool(handler == func)
    except Exception:
        return False


def _handler_alive(handler: Callable[..., object]) -> bool:
    return not isinstance(handler, _WeakMethodHandler) or handler.alive


class Signal:
    """A set of handlers that are called when the signal is emitted.

    Bind callables with :meth:`bind`. :meth:`emit` is thread-safe and queues
    one event per handler on the yoton event queue, so the handlers run in
    the thread that processes events; :meth:`emit_now` calls them directly.
    Bound methods are referenced weakly (binding one does not keep its
    object alive, and it is dropped once the object is gone); other
    callables are referenced normally.
    """

    def __init__(self) -> None:
        # A tuple, replaced (never mutated) on change, so emitting threads
        # can read it without locking.
        self._handlers: tuple = ()

    @property
    def type(self) -> type[Signal]:
        """The class of this signal (e.g. ``Signal`` or ``Timer``)."""
        return self.__class__

    def bind(self, func: Callable[..., object]) -> None:
        """Add *func* as a handler; binding an already bound handler does nothing.

        Raises ValueError if *func* is not callable.
        """
        if not callable(func):
            raise ValueError("Signal.bind() needs a callable.")
        with _bind_lock:
            handlers = tuple(h for h in self._handlers if _handler_alive(h))
            if any(_handler_matches(h, func) for h in handlers):
                log.debug("Handler %s is already bound to %s", _describe(func), _describe(self))
                self._handlers = handlers
                return
            self._handlers = handlers + (_make_handler(func),)

    def unbind(self, func: Callable[..., object] | None = None) -> None:
        """Remove the handler *func*, or all handlers if *func* is None.

        Removing a handler that is not bound is harmless.
        """
        with _bind_lock:
            if func is None:
                self._handlers = ()
            else:
                self._handlers = tuple(h for h in self._handlers if _handler_alive(h) and not _handler_matches(h, func))

    def _live_handlers(self) -> tuple:
        handlers = self._handlers
        for handler in handlers:
            if not _handler_alive(handler):
                break
        else:
            return handlers
        with _bind_lock:
            self._handlers = tuple(h for h in self._handlers if _handler_alive(h))
            return self._handlers

    def emit(self, *args: Any, **kwargs: Any) -> None:
        """Queue a call ``handler(*args, **kwargs)`` for every bound handler.

        Thread-safe; the handlers run when events are processed.
        """
        handlers = self._live_handlers()
        if handlers:
            _events.post_many([(handler, args, kwargs) for handler in handlers])

    def emit_now(self, *args: Any, **kwargs: Any) -> None:
        """Call every bound handler with the given arguments right away.

        Runs in the calling thread; a handler's exception is logged and the
        remaining handlers still run.
        """
        for handler in self._live_handlers():
            try:
                handler(*args, **kwargs)
            except Exception:
                log.exception("Exception in event handler %s", _describe(handler))


# ---------------------------------------------------------------------------
# Timers
# ---------------------------------------------------------------------------


def _check_interval(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError("Timer interval must be a number (seconds).")
    value = float(value)
    if not (0 <= value < math.inf):
        raise ValueError("Timer interval must be a finite number >= 0.")
    return value


class Timer(Signal):
    """A signal that is emitted when a time interval has passed.

    ``Timer(interval=1.0, oneshot=True)``: after :meth:`start`, the timer
    emits (handlers get no arguments) once *interval* seconds have passed.
    A oneshot timer then stops; a repeating one starts its next interval.
    The expiry travels through the event queue, so handlers run in the
    thread that processes events. A running timer stays alive even if the
    application drops its last reference to it.
    """

    def __init__(self, interval: float = 1.0, oneshot: bool = True) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._interval = _check_interval(interval)
        self._oneshot = bool(oneshot)
        # While running: (token, scheduler entry). The token tells a current
        # expiry from one that was stopped or restarted meanwhile.
        self._armed: tuple[object, _Entry] | None = None

    @property
    def interval(self) -> float:
        """Seconds between start (or the previous expiry) and expiry.

        Must be a number >= 0 (else ValueError). A change applies from the
        next (re)start or repetition.
        """
        return self._interval

    @interval.setter
    def interval(self, value: float) -> None:
        self._interval = _check_interval(value)

    @property
    def oneshot(self) -> bool:
        """True if the timer stops after expiring once; False if it repeats."""
        return self._oneshot

    @oneshot.setter
    def oneshot(self, value: bool) -> None:
        self._oneshot = bool(value)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (or a oneshot expiry)."""
        return self._armed is not None

    def start(self, interval: float | None = None, oneshot: bool | None = None) -> None:
        """Start the timer, optionally setting *interval* and *oneshot* first.

        Starting a running timer restarts it: the next expiry is *interval*
        seconds from now.
        """
        if interval is not None:
            self.interval = interval
        if oneshot is not None:
            self.oneshot = oneshot
        with self._lock:
            self._disarm()
            self._arm(_monotonic() + self._interval)

    def stop(self) -> None:
        """Stop the timer; an expiry that is already queued is discarded."""
        with self._lock:
            self._disarm()

    def _arm(self, deadline: float) -> None:
        token = object()
        entry = _scheduler.schedule(deadline, _events.post, self._expired, (token, deadline))
        self._armed = (token, entry)

    def _disarm(self) -> None:
        armed = self._armed
        if armed is not None:
            self._armed = None
            _scheduler.cancel(armed[1])

    def _expired(self, token: object, deadline: float) -> None:
        """Run from the event queue when a deadline has passed."""
        with self._lock:
            armed = self._armed
            if armed is None or armed[0] is not token:
                return  # stopped or restarted since
            if self._oneshot:
                self._armed = None
            else:
                now = _monotonic()
                next_deadline = deadline + self._interval
                if next_deadline <= now:
                    next_deadline = now + self._interval  # fell behind: don't burst
                self._arm(next_deadline)
        self.emit_now()


# ---------------------------------------------------------------------------
# yoton 2.2's application object
# ---------------------------------------------------------------------------


class Event:
    """A call waiting to be made: ``Event(func, *args, **kwargs)``; :meth:`dispatch` makes it.

    What yoton 2.2's ``YotonApplication.post_event*`` methods take.
    """

    __slots__ = ("func", "args", "kwargs")

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(func):
            raise ValueError("Event needs a callable.")
        self.func, self.args, self.kwargs = func, args, kwargs

    def dispatch(self) -> Any:
        """Call the function with the stored arguments."""
        return self.func(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"<yoton.Event {_describe(self.func)}>"


def _as_call(event: object) -> Callable[[], object]:
    """The callable to queue for an event: its ``dispatch``, or the event itself if callable."""
    dispatch = getattr(event, "dispatch", None)
    if callable(dispatch):
        return dispatch
    if callable(event):
        return event
    raise ValueError(f"an event must have a dispatch() method or be callable, not {event!r}")


class YotonApplication:
    """The event system as one object, as yoton 2.2 offered it (see :data:`app`).

    Every instance works on the one process-wide event queue; the methods are
    the module-level functions of the same names, plus three to post events
    (objects with a ``dispatch()`` method, such as :class:`Event`, or plain
    callables).
    """

    def call_later(self, func: Callable[..., object], timeout: float = 0.0, *args: Any, **kwargs: Any) -> None:
        """Same as :func:`yoton.call_later`."""
        call_later(func, timeout, *args, **kwargs)

    def post_event(self, event: object) -> None:
        """Queue ``event`` (dispatched by the thread processing events)."""
        _events.post(_as_call(event))

    def post_event_asap(self, event: object) -> None:
        """Queue ``event`` in front of everything already queued."""
        _events.post(_as_call(event), front=True)

    def post_event_later(self, event: object, delay: float) -> None:
        """Queue ``event`` after ``delay`` seconds."""
        _scheduler.schedule(_monotonic() + float(delay), _events.post, _as_call(event))

    def process_events(self, block: bool | float = False) -> None:
        """Same as :func:`yoton.process_events`."""
        _events.process_events(block)

    def start_event_loop(self) -> None:
        """Same as :func:`yoton.start_event_loop`."""
        _events.run()

    def stop_event_loop(self) -> None:
        """Same as :func:`yoton.stop_event_loop`."""
        _events.stop()

    def embed_event_loop(self, callback: Callable[[], object] | None) -> None:
        """Same as :func:`yoton.embed_event_loop`."""
        _events.embed(callback)

    def __repr__(self) -> str:
        return f"<yoton.YotonApplication, {_events.pending()} event(s) queued>"


app = YotonApplication()
"""The event system as an object (yoton 2.2's ``yoton.app``), e.g.
``yoton.app.embed_event_loop(callback)``."""
