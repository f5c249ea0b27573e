"""yoton for asyncio: the same classes and method names; what can wait is a coroutine.

::

    import yoton.asyncio as ya

    async def main():
        async with ya.Context() as ctx:
            await ctx.connect("localhost:7000", timeout=2.0)
            sub = ya.SubChannel(ctx, "news")
            async for message in sub:              # or: await sub.recv(timeout=2.5)
                print(message)

What waits is a coroutine: :meth:`Context.connect`, :meth:`~Context.flush` and
:meth:`~Context.close`; :meth:`SubChannel.recv` (and ``async for``);
:meth:`PubChannel.send` and :meth:`StateChannel.send`, which wait for room
under backpressure (the README's "Flow control"); and a request's
:class:`Future` (``await req.add(20, 22)``). Everything else is the blocking
API unchanged and returns at once (``bind``, ``recv_all``, ``set_sync_mode``,
``statistics``, closing a channel, ...). These classes subclass the blocking
ones, so a context can be used from threads and from asyncio at the same
time: a blocking ``yoton.SubChannel`` and a ``ya.PubChannel`` may share a
``ya.Context`` (or a plain ``yoton.Context``).

How it works: this is an adapter over the blocking objects, not a second
stack. The context's own I/O thread keeps reading and writing its sockets; a
coroutine first makes the non-blocking call, and when that would have to
wait it parks an asyncio future that the I/O side resolves with
``loop.call_soon_threadsafe``. Nothing is registered with the asyncio loop's
selector (no ``add_reader``), so it works on every event loop: the default
ones, Windows' Proactor loop, uvloop.

Before it parks, a coroutine serves its context's sockets itself for up to
the context's ``spin`` (as a blocking ``recv`` does): an answer that comes
within that time costs no thread hand-off. That blocks the loop meanwhile,
so the time it spends in vain is capped (:data:`SPIN_BUDGET`); a coroutine
that waits this way yields to the loop at least every millisecond
(:data:`YIELD_EVERY`), before it takes what came. In
the main thread under ``asyncio.run``'s SIGINT handler, yoton's handler
stands in for that moment (a Ctrl-C must not cut an I/O pass in half) and
hands a held-back Ctrl-C on to asyncio's. ``Context(spin=0)`` turns it off.

Cancellation (``task.cancel()``, ``asyncio.timeout()``, ``wait_for``) leaves
nothing half done: a cancelled ``recv`` has taken no message, a cancelled
``send`` has sent nothing, a cancelled ``await future`` cancels the request
(:meth:`yoton.Future.cancel`: withdrawn, unless a replier has it already).
A cancelled ``connect`` closes the connection if it was made after all.

Events: yoton's event queue (signals such as ``conn.closed``,
``conn.timedout`` and ``channel.received``, timers, ``call_later``, done
callbacks) is processed on the asyncio loop a :class:`Context` is used in
(the loop it was made in, or else the first it awaits something in), through
:func:`yoton.embed_event_loop` -- unless another loop (a GUI's) processes it
already, which then keeps doing so. Handlers are plain callables; they may
start tasks. A :class:`RepChannel` in ``'event'`` mode serves on the asyncio
loop, and its methods may be ``async def``.
"""

# This module is yoton.asyncio: inside the package, "asyncio" would be this
# module for an implicit relative import. Imports here are absolute.
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import signal
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generator

from yoton import events as _events
from yoton.channels import pubsub as _pubsub
from yoton.channels import reqrep as _reqrep
from yoton.channels import state as _state
from yoton.channels.pubsub import select_sub_channel
from yoton.context import Context as _Context
from yoton.errors import ChannelClosedError, TimeoutError, WouldBlock
from yoton.events import embed_event_loop, process_events
from yoton.transport.ioloop import LINGER
from yoton.transport.sigint import sigint_handler

if TYPE_CHECKING:
    import ssl

    from yoton.context import Router
    from yoton.messages import MessageType
    from yoton.transport.connection import Connection
    from yoton.transport.reconnect import ReconnectPolicy
    from yoton.wire.frames import Package

try:  # (signal's own functions wrap handlers in an enum first: several microseconds a call)
    from _signal import getsignal as _getsignal
    from _signal import signal as _setsignal
except ImportError:  # pragma: no cover (not CPython)
    _getsignal, _setsignal = signal.getsignal, signal.signal

log = logging.getLogger("yoton")

__all__ = [
    "Context",
    "PubChannel",
    "SubChannel",
    "StateChannel",
    "ReqChannel",
    "RepChannel",
    "Future",
    "select_sub_channel",
]

#: While a sync-mode subscriber holds a publisher, how often a waiting send
#: looks again (a subscriber's 'full' also ends by expiring, which nothing signals).
BLOCKER_POLL = 0.1

_NOTHING = object()  # "not yet" (None and friends can be real values)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _check_timeout(timeout: object) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return float(timeout)


def _resolve(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- parking: coroutines waiting for what the yoton side signals ---------------------------


class _Parking:
    """Coroutines waiting for something the yoton side signals by :meth:`notify`.

    A coroutine parks an asyncio future, looks again at what it waits for,
    and only then awaits the future (so a notify between the look and the
    await is not lost). :meth:`notify` may be called from any thread, often
    yoton's I/O side: it schedules one wake-up per loop with parked futures
    (a wake-up already on its way is not repeated), and costs a truth test
    when nothing is parked. Park and unpark happen in the loop's own thread.
    """

    __slots__ = ("_futures", "_scheduled")

    def __init__(self) -> None:
        self._futures: dict = {}  # loop -> its parked futures
        self._scheduled: set = set()  # loops with a wake-up on its way

    def park(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        fut = loop.create_future()
        futures = self._futures.get(loop)
        if futures is None:
            self._futures[loop] = [fut]
        else:
            futures.append(fut)
        return fut

    def unpark(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any]) -> None:
        futures = self._futures.get(loop)
        if futures is not None:
            try:
                futures.remove(fut)
            except ValueError:
                pass
            if not futures:
                del self._futures[loop]

    def notify(self) -> None:
        """Wake every parked coroutine (any thread; never waits)."""
        if not self._futures:
            return
        scheduled = self._scheduled
        for loop in list(self._futures):
            if loop not in scheduled:
                scheduled.add(loop)
                try:
                    loop.call_soon_threadsafe(self._wake, loop)
                except RuntimeError:  # that loop is closed: its futures are gone with it
                    scheduled.discard(loop)

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled.discard(loop)  # (first: a notify from now on schedules again)
        for fut in self._futures.get(loop, ()):
            if not fut.done():
                fut.set_result(None)


async def _until(
    parking: _Parking,
    attempt: Callable[[], Any],
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
    poll: Callable[[], float | None] | None = None,
) -> Any:
    """Call ``attempt()`` until it returns something else than ``_NOTHING``
    (returned), each time the parking is notified; ``_NOTHING`` at the
    ``deadline`` (``loop.time()``; None: none). ``poll()`` (optional): at most
    how long to wait before trying again without a notify (None: no limit).

    ``attempt`` runs only between awaits, in the loop's thread: a
    cancellation never interrupts it, so it never lands after something was
    taken or sent.
    """
    while True:
        fut = parking.park(loop)
        try:
            result = attempt()
            if result is not _NOTHING:
                return result
            wait = None
            if deadline is not None:
                wait = deadline - loop.time()
                if wait <= 0:
                    return _NOTHING
            if poll is not None:
                every = poll()
                if every is not None:
                    wait = every if wait is None else min(wait, every)
            if wait is None:
                await fut
            else:
                timer = loop.call_later(wait, _resolve, fut)
                try:
                    await fut
                finally:
                    timer.cancel()
        finally:
            parking.unpark(loop, fut)


# -- serving the sockets for a moment before parking ----------------------------------------

#: Seconds per second of wall time that coroutines of one context may spend
#: serving its sockets in vain (nothing came) before they park; see _serve_briefly.
SPIN_BUDGET = 0.05
_SPIN_BURST = 0.01  # (at most this much unused budget is saved up)


class _SpinBudget:
    """How much time in vain :func:`_serve_briefly` may still spend (per
    context), and when a coroutine last served its sockets."""

    __slots__ = ("left", "stamp", "served_at")

    def __init__(self) -> None:
        self.left = _SPIN_BURST
        self.stamp = time.monotonic()
        self.served_at = 0.0

    def allowance(self, spin: float) -> float:
        now = time.monotonic()
        self.left = min(_SPIN_BURST, self.left + (now - self.stamp) * SPIN_BUDGET)
        self.stamp = now
        return min(spin, self.left)


_budgets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _serve_briefly(router: Router, ready: Callable[[], object]) -> bool:
    """Before a coroutine parks: serve the context's sockets in this thread
    until ``ready()``, for at most the context's ``spin`` seconds.

    What the blocking API does in a waiting thread (see ``Context(spin=...)``):
    an answer that comes within that time is taken here, without waking the
    I/O thread and then this loop's thread, which on a loopback costs more
    than the answer itself. It blocks the loop meanwhile, so time spent in
    vain (nothing came) is budgeted: at most :data:`SPIN_BUDGET` of the wall
    time per context. Where this thread may not serve the sockets (another
    thread does; the portable poller; a main thread whose SIGINT handler is
    neither callable nor Python's or yoton's) it returns at once. Returns
    whether ``ready()`` came true while it served.
    """
    spin = router.spin
    if not spin:
        return False
    budget = _budgets.get(router)
    if budget is None:
        budget = _budgets[router] = _SpinBudget()
    allowed = budget.allowance(spin)
    if allowed <= 0:
        return False
    started = time.monotonic()
    if not _wait_in_sockets(router, ready, started + allowed):
        return False
    budget.served_at = time.monotonic()
    if ready():
        return True
    budget.left -= time.monotonic() - started
    router.wake()  # (the I/O thread goes back to the sockets now, not after its linger)
    return False


#: A coroutine whose waits end while it serves the sockets does not suspend:
#: at least this often (seconds) it yields to the loop all the same, so other
#: tasks run and a cancellation reaches it.
YIELD_EVERY = 0.001


class _Yielded(threading.local):
    at = 0.0  # (monotonic) when a wait of this thread's loop last yielded


_yielded = _Yielded()


def _due_to_yield() -> bool:
    now = time.monotonic()
    if now - _yielded.at < YIELD_EVERY:
        return False
    _yielded.at = now
    return True


def _parking(router: Router) -> None:
    """A coroutine parks: if one of this loop served the sockets a moment ago,
    the I/O thread may still be staying out of them (it lingers, expecting the
    reader back): call it back now, or an arrival could wait for its linger."""
    budget = _budgets.get(router)
    if budget is not None and time.monotonic() - budget.served_at < 2 * LINGER:
        router.wake()


_MAIN = threading.main_thread()


def _wait_in_sockets(router: Router, ready: Callable[[], object], deadline: float | None) -> bool:
    """``router.wait_until``; in the main thread under a SIGINT handler of the
    application's (``asyncio.run``'s), that handler is set aside meanwhile.

    yoton serves its sockets in the main thread only while Ctrl-C cannot
    land in the middle of a pass: under yoton's SIGINT handler, which holds a
    Ctrl-C back until the pass ends. So for this short wait its handler
    stands in, and a Ctrl-C it held back goes to the application's handler
    once that is back: ``asyncio.run`` then cancels its main task as usual.
    """
    if threading.current_thread() is not _MAIN:
        return router.wait_until(ready, deadline)
    handler = _getsignal(signal.SIGINT)
    if handler is signal.default_int_handler or handler is sigint_handler or not callable(handler):
        return router.wait_until(ready, deadline)  # (yoton's own rule decides: see yoton.transport.sigint)
    interrupted = False
    served = True
    try:
        try:
            _setsignal(signal.SIGINT, sigint_handler)
        except (ValueError, OSError):  # (not the main interpreter: yoton does not serve here)
            return False
        served = router.wait_until(ready, deadline)
    except KeyboardInterrupt:
        if _getsignal(signal.SIGINT) is not sigint_handler:
            raise  # (the application's handler raised it, before ours stood in: not ours to hold)
        interrupted = True
    finally:
        # Put the application's handler back -- whichever line a Ctrl-C cut
        # short, and even if one lands while doing so (it is then held too).
        while _getsignal(signal.SIGINT) is sigint_handler:
            try:
                _setsignal(signal.SIGINT, handler)
            except KeyboardInterrupt:
                interrupted = True
    if interrupted:
        handler(signal.SIGINT, None)
    return served


#: One parking per router for senders waiting for room in its send queues.
_rooms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_rooms_lock = threading.Lock()


def _room_parking(router: Router) -> _Parking:
    with _rooms_lock:
        parking = _rooms.get(router)
        if parking is None:
            parking = _rooms[router] = _Parking()
            router.add_room_callback(parking.notify)
        return parking


async def _send_when_room(
    parking: _Parking,
    attempt: Callable[[], Any],
    timeout: float | None,
    what: str,
    poll: Callable[[], float | None] | None = None,
) -> None:
    """Retry the non-blocking ``attempt()`` (True when sent, ``_NOTHING`` on
    WouldBlock) whenever there may be room; WouldBlock after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    if await _until(parking, attempt, loop, deadline, poll) is _NOTHING:
        raise WouldBlock(f"{what}: no room within {timeout:g} s (the peer is slower than the sender)")


#: How often a worker thread waiting for an async method on the serving loop checks that the
#: loop still runs (a stopped loop would never finish it).
_AWAIT_CHECK = 0.25


# -- yoton's event queue on an asyncio loop -------------------------------------------------


class _EventsOnLoop:
    """The embedding callback that has yoton's events processed on one asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0  # contexts attached to it

    def __call__(self) -> None:  # (any thread: an event arrived in an empty queue)
        try:
            self.loop.call_soon_threadsafe(process_events)
        except RuntimeError:  # the loop is closed: stop sending the events there
            _drop_events(self)

    def __repr__(self) -> str:
        return f"<yoton.asyncio events on {self.loop!r}>"


_events_lock = threading.Lock()
_events_on: _EventsOnLoop | None = None


def _use_events(loop: asyncio.AbstractEventLoop) -> _EventsOnLoop | None:
    """Have yoton's events processed on ``loop`` (counted per context); None if
    another loop processes them (a GUI's, or another asyncio loop still open)."""
    global _events_on
    with _events_lock:
        current = _events_on
        if current is not None and current.loop is loop:
            current.users += 1
            return current
        if current is None and _events.embedding:
            return None  # (not ours: a GUI's loop runs them)
        if current is not None and not current.loop.is_closed():
            return None  # (another asyncio loop of this process has them)
        _events_on = handle = _EventsOnLoop(loop)
        handle.users = 1
    embed_event_loop(handle)
    return handle


def _release_events(handle: _EventsOnLoop) -> None:
    """A context no longer uses ``handle``: the last one hands the events back."""
    with _events_lock:
        handle.users -= 1
        if handle.users > 0:
            return
    _drop_events(handle)


def _drop_events(handle: _EventsOnLoop) -> None:
    global _events_on
    with _events_lock:
        if _events_on is not handle:
            return
        _events_on = None
    _events.release_event_loop(handle)  # (not a callback someone set after ours)


# -- the context -------------------------------------------------------------------------------


class Context(_Context):
    """A :class:`yoton.Context` whose waiting methods are coroutines.

    It takes the arguments of :class:`yoton.Context`.
    ``bind`` returns at once, as in the blocking API; :meth:`connect`,
    :meth:`flush` and :meth:`close` are awaited; ``async with`` closes it.
    The blocking :class:`yoton.Context` methods stay reachable for threads
    (``yoton.Context.connect(ctx, ...)``). yoton's events are processed on
    the asyncio loop this context is used in (see the module docstring).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: _EventsOnLoop | None = None
        loop = _running_loop()
        if loop is not None:
            self._attach(loop)

    @property
    def asyncio_loop(self) -> asyncio.AbstractEventLoop | None:
        """The asyncio loop this context is used in (None before it is used in one)."""
        return self._loop

    def _attach(self, loop: asyncio.AbstractEventLoop | None = None) -> asyncio.AbstractEventLoop:
        """Use ``loop`` (default: the running one) from now on; return it."""
        loop = loop or asyncio.get_running_loop()
        if self._loop is not loop:
            self._detach()
            self._loop = loop
            self._events = _use_events(loop)
        return loop

    def _detach(self) -> None:
        events, self._events = self._events, None
        if events is not None:
            _release_events(events)

    async def connect(  # type: ignore[override]  # (a coroutine where the blocking class waits)
        self,
        address: str,
        timeout: float = 1.0,
        name: str = "",
        *,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: bool | ReconnectPolicy | None = False,
        **options: Any,
    ) -> Connection:
        """Connect to a context bound at ``address``; return the connection.

        As :meth:`yoton.Context.connect` (the same errors), awaited: the
        handshake runs in an executor thread. If the await is cancelled and
        the connection is made after all, it is closed.
        """
        loop = self._attach()
        call = functools.partial(
            _Context.connect, self, address, timeout, name, ssl_context=ssl_context, reconnect=reconnect, **options
        )
        job = loop.run_in_executor(None, call)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_close_unwanted)
            raise

    async def flush(self, timeout: float = 5.0) -> None:  # type: ignore[override]  # (a coroutine where the blocking class waits)
        """Wait until every queued package has been written to the network;
        :class:`~yoton.errors.FlushTimeout` after ``timeout`` seconds."""
        loop = self._attach()
        await loop.run_in_executor(None, functools.partial(_Context.flush, self, timeout))

    async def close(self) -> None:  # type: ignore[override]  # (a coroutine where the blocking class waits)
        """Close all connections (telling the peers) and all channels, as
        :meth:`yoton.Context.close` does; waiting senders and receivers get
        :class:`~yoton.errors.ChannelClosedError`."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, functools.partial(_Context.close, self))
        finally:
            self._detach()
            self._loop = None

    async def __aenter__(self) -> Context:
        self._attach()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# (help() and inspect show yoton.Context's parameters, not *args, **kwargs)
Context.__signature__ = inspect.signature(_Context).replace(return_annotation=inspect.Signature.empty)  # type: ignore[attr-defined]


def _close_unwanted(job: asyncio.Future[Connection]) -> None:
    # A connect whose await was cancelled: close what it made after all.
    if job.cancelled() or job.exception() is not None:
        return
    conn = job.result()
    asyncio.get_running_loop().run_in_executor(None, conn.close)


def _attach_context(context: _Context) -> None:
    """A channel made in a running loop on a yoton.asyncio context: the context uses that loop."""
    if isinstance(context, Context) and context.asyncio_loop is None:
        loop = _running_loop()
        if loop is not None:
            context._attach(loop)


# -- publish/subscribe ------------------------------------------------------------------------


class SubChannel(_pubsub.SubChannel):
    """A :class:`yoton.SubChannel` whose :meth:`recv` is a coroutine; ``async for`` reads it.

    ``recv_all``, ``recv_selected``, ``set_sync_mode`` and plain iteration
    (the pending messages) are the blocking channel's and never wait.
    """

    def __init__(
        self, context: _Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        super().__init__(context, slot_base, message_type)
        self._parking = _Parking()
        self._waiter.add_callback(self._parking.notify)  # (every arrival, and close)
        _attach_context(context)

    async def recv(self, timeout: float | None = None) -> Any:
        """Wait for the next message and return it.

        ``timeout`` None waits for ever; a number of seconds raises
        :class:`yoton.TimeoutError` (also the builtin ``TimeoutError``, which
        is ``asyncio.TimeoutError`` from Python 3.11 on; before, that is a
        class of its own) when nothing came in that time (0: only what is
        pending). A channel that
        is closed and has nothing pending raises
        :class:`~yoton.errors.ChannelClosedError`. Cancelled, it has taken
        no message.
        """
        pkg = self._take()
        if pkg is _NOTHING and timeout != 0:
            items = self._queue.items
            if _serve_briefly(self._router, lambda: items or self._closed) and _due_to_yield():
                await asyncio.sleep(0)  # (before taking: a cancellation here has taken nothing)
            pkg = self._take()
        if pkg is _NOTHING:
            timeout = _check_timeout(timeout)
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            _parking(self._router)
            pkg = await _until(self._parking, self._take, loop, deadline)
            if pkg is _NOTHING:
                raise TimeoutError(f"no message on {self.slot_incoming!r} within {timeout:g} s")
        return self._decode(pkg)

    def _pop(self) -> Package | None:
        """The oldest pending package, or None (never waits)."""
        pkg = self._wait_package(False)
        if self._said_full:
            self._check_ok()
        return pkg

    def _take(self) -> Any:
        pkg = self._pop()
        if pkg is None:
            if self.closed:
                raise ChannelClosedError(f"{type(self).__name__} {self.slot_incoming!r} is closed")
            return _NOTHING
        return pkg

    def __aiter__(self) -> SubChannel:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.recv()
        except ChannelClosedError:
            raise StopAsyncIteration from None

    def __next__(self) -> Any:
        pkg = self._pop()
        if pkg is None:
            raise StopIteration
        return self._decode(pkg)


class PubChannel(_pubsub.PubChannel):
    """A :class:`yoton.PubChannel` whose :meth:`send` is a coroutine (it waits for room)."""

    def __init__(
        self, context: _Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        super().__init__(context, slot_base, message_type)
        self._room = _room_parking(self._router)
        _attach_context(context)

    async def send(self, message: Any, timeout: float | None = None) -> None:  # type: ignore[override]  # (a coroutine where the blocking class waits)
        """Publish ``message`` to all subscribers.

        Returns once it is queued for every connection. While the way is not
        free (a send queue is full, or a subscriber in sync mode says it is
        full) it waits without blocking the loop; ``timeout`` (seconds;
        None: no limit) raises :class:`~yoton.errors.WouldBlock` when it
        runs out. Nothing is sent when it raises or is cancelled. The other
        errors are those of :meth:`yoton.PubChannel.send`.
        """
        try:
            _pubsub.PubChannel.send(self, message, False)
            return
        except WouldBlock:
            pass
        timeout = _check_timeout(timeout)

        def attempt() -> Any:
            try:
                _pubsub.PubChannel.send(self, message, False)
                return True
            except WouldBlock:
                return _NOTHING

        await _send_when_room(self._room, attempt, timeout, f"send on {self.slot_outgoing!r}", self._blocker_poll)

    def _blocker_poll(self) -> float | None:
        return BLOCKER_POLL if self._blockers else None

    def _receive(self, pkg: Package) -> None:
        super()._receive(pkg)  # (a sync-mode subscriber's 'full' or 'ok')
        self._room.notify()


class StateChannel(_state.StateChannel):
    """A :class:`yoton.StateChannel` whose :meth:`send` is a coroutine (it waits for room);
    ``recv`` never waits and stays a plain call."""

    def __init__(
        self, context: _Context, slot_base: str, message_type: MessageType | type[MessageType] | None = None
    ) -> None:
        super().__init__(context, slot_base, message_type)
        self._room = _room_parking(self._router)
        _attach_context(context)

    async def send(self, message: Any, timeout: float | None = None) -> None:  # type: ignore[override]  # (a coroutine where the blocking class waits)
        """Set the state and broadcast it (unless it equals the current one);
        waits for room as :meth:`PubChannel.send` does."""

        def attempt() -> Any:
            try:
                _state.StateChannel.send(self, message, False)
                return True
            except WouldBlock:
                return _NOTHING

        if attempt() is _NOTHING:
            timeout = _check_timeout(timeout)
            await _send_when_room(self._room, attempt, timeout, f"state {self.slot_outgoing!r}")


# -- request/reply ------------------------------------------------------------------------------


class Future(_reqrep.Future):
    """A :class:`yoton.Future` that can be awaited: ``result = await req.add(20, 22)``.

    Awaiting it returns the result or raises as :meth:`result` does
    (:class:`~yoton.errors.RemoteError`, :class:`yoton.CancelledError`).
    A cancelled await cancels the request (:meth:`cancel`: withdrawn from
    the repliers, unless one has it already).
    """

    def __await__(self) -> Generator[Any, None, Any]:
        return self._until_done().__await__()

    async def _until_done(self) -> Any:
        if not self.done() and self._channel is not None:
            if _serve_briefly(self._channel.context.router, self.done) and _due_to_yield():
                await asyncio.sleep(0)
        if not self.done():
            if self._channel is not None:
                _parking(self._channel.context.router)
            loop = asyncio.get_running_loop()
            fut = loop.create_future()

            def done_soon() -> None:  # (any thread: the reply came, or the request was cancelled)
                try:
                    loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # (the loop closed meanwhile)
                    pass

            self._waiter.add_callback(done_soon)
            try:
                if not self.done():
                    await fut
            except asyncio.CancelledError:
                self.cancel()
                raise
            finally:
                self._waiter.remove_callback(done_soon)
        return self.result(0)


class ReqChannel(_reqrep.ReqChannel):
    """A :class:`yoton.ReqChannel` whose requests return an awaitable :class:`Future`."""

    _future_class = Future

    def __init__(self, context: _Context, slot_base: str, default_future_timeout: float | None = 10.0) -> None:
        super().__init__(context, slot_base, default_future_timeout)
        _attach_context(context)


class RepChannel(_reqrep.RepChannel):
    """A :class:`yoton.RepChannel` served on an asyncio loop; its methods may be ``async def``.

    ``set_mode('event')`` serves on the asyncio loop it is called in (or, if
    called outside one, the loop of the context, see :class:`Context`): each
    request is called there, and one that returns an awaitable is awaited
    in a task. The replier takes the next request once the reply is sent.
    In ``'thread'`` mode methods run in the channel's worker thread as in
    the blocking API; an awaitable result is awaited on that same asyncio
    loop while the worker waits.
    """

    def __init__(self, context: _Context, slot_base: str) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set = set()
        super().__init__(context, slot_base)
        _attach_context(context)

    def set_mode(self, mode: str | int) -> None:
        """Serve requests: ``'off'``, ``'event'`` (on the asyncio loop) or ``'thread'``;
        see :meth:`yoton.RepChannel.set_mode`."""
        loop = _running_loop()
        if loop is not None:
            self._loop = loop
        super().set_mode(mode)

    def _serving_loop(self) -> asyncio.AbstractEventLoop | None:
        for loop in (self._loop, getattr(self._context, "asyncio_loop", None)):
            if loop is not None and not loop.is_closed():
                return loop
        return None

    def _post_serve(self, pkg: Package) -> None:
        loop = self._serving_loop()
        if loop is None:
            super()._post_serve(pkg)  # (no loop known yet: whoever processes yoton's events)
            return
        try:
            loop.call_soon_threadsafe(self._serve, pkg)
        except RuntimeError:  # (closed meanwhile)
            super()._post_serve(pkg)

    def _serve(self, pkg: Package) -> None:
        name = "?"
        try:
            name, args, kwargs = self._parse_request(pkg.data)
            method = self._method_for(name)
        except Exception as exc:
            self._reply(pkg, self._error_reply(name, exc, False))
            return
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            self._reply(pkg, self._error_reply(name, exc, True))
            return
        if inspect.isawaitable(result):
            here = _running_loop()
            if here is not None:
                task = here.create_task(self._serve_later(pkg, name, result))
                self._tasks.add(task)  # (a task nobody holds may be collected mid-way)
                task.add_done_callback(self._tasks.discard)
                return
            body = self._await_elsewhere(name, result)
        else:
            body = self._reply_body(name, result)
        self._reply(pkg, body)

    def _await_elsewhere(self, name: str, awaitable: Awaitable[Any]) -> bytes:
        """Run ``awaitable`` on the serving loop from a thread that has none (the worker)."""
        loop = self._serving_loop()
        if loop is None:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            exc = RuntimeError(f"method {name!r} is async, but no asyncio loop runs for this replier")
            return self._error_reply(name, exc, False)

        async def run() -> Any:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(run(), loop)
        while True:
            try:
                result = future.result(_AWAIT_CHECK)
            except concurrent.futures.TimeoutError:
                # (a loop that stopped or closed will never run it: do not wait for ever)
                if loop.is_closed() or not loop.is_running() or self._closed:
                    future.cancel()
                    why = "the channel closed" if self._closed else "its asyncio loop stopped"
                    exc = RuntimeError(f"method {name!r} was not served: {why}")
                    return self._error_reply(name, exc, False)
                continue
            except concurrent.futures.CancelledError:
                exc = RuntimeError(f"request {name!r} was cancelled on the replier's side")
                return self._error_reply(name, exc, False)
            except Exception as exc:
                return self._error_reply(name, exc, True)
            return self._reply_body(name, result)

    async def _serve_later(self, pkg: Package, name: str, awaitable: Awaitable[Any]) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            exc = RuntimeError(f"request {name!r} was cancelled on the replier's side")
            self._reply(pkg, self._error_reply(name, exc, False))
            raise
        except Exception as exc:
            body = self._error_reply(name, exc, True)
        else:
            body = self._reply_body(name, result)
        try:
            self._send_reply(pkg, body, False)
        except WouldBlock:
            await self._reply_when_room(pkg, body)
        except ChannelClosedError:
            pass  # (the context is closing: no one waits for the reply any more)

    def _reply(self, pkg: Package, body: bytes) -> None:
        """Send a reply: a thread may wait for room; an asyncio loop never does."""
        try:
            if _running_loop() is None:
                self._send_reply(pkg, body)
                return
            try:
                self._send_reply(pkg, body, False)
            except WouldBlock:
                task = asyncio.get_running_loop().create_task(self._reply_when_room(pkg, body))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ChannelClosedError:
            pass  # (the context is closing)

    async def _reply_when_room(self, pkg: Package, body: bytes) -> None:
        def attempt() -> Any:
            try:
                self._send_reply(pkg, body, False)
                return True
            except WouldBlock:
                return _NOTHING

        try:
            await _send_when_room(_room_parking(self._router), attempt, None, f"reply on {self.slot_outgoing!r}")
        except ChannelClosedError:
            pass
