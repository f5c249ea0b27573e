"""Request/reply: ReqChannel, RepChannel and Future (yoton 2.2's exchange, below).

The exchange for request number n (``REF = 2**63``)::

    requester                                   repliers
    'req?'  broadcast, dest_seq=REF+n   ---->   queue it
            (again every 0.5 s until acknowledged or auto-cancelled)
                                        <----   'req!' to requester, dest_seq=REF+n
                                                (a replier acknowledges one at a time,
                                                 only when it is free)
    request body to THAT replier, dest_seq=n ->
    'req-'  broadcast, dest_seq=REF+n   ---->   the others forget it
                                        <----   reply (OBJECT), dest_seq=n

So a request goes to the first replier that is free: load is balanced
without any coordinator.

Between our own peers (not in yoton 2.2) a request can take one round trip
instead of two. A replier that is on tells a requester it is directly
connected to, with ``'req+'`` (dest_seq=REF+n, just before its first
``'req!'`` to it), that it takes *direct requests*. After a reply from such a replier, the
requester's next request (within :data:`DIRECT_WINDOW` seconds, while the
replier is still a direct peer) goes straight to it::

    'req=' + request body, to that replier, dest_seq=REF+n  ---->
                                        <----   reply (OBJECT), dest_seq=n
                                        <----   or 'req~' (declined): the requester
                                                announces it with 'req?' as above

The replier serves a direct request at once only when it is on, free and
no other requester waits for it (so load balancing and the turns between
requesters stay as above); while it is busy with the same requester's
previous request it keeps one direct request to serve next; else (and
always for a requester it did not invite) it declines. A replier that is
off invites nobody; switched off or closed, it declines the direct request
it kept and tells each requester it invited, with ``'req_'``
(dest_seq=REF+k, k the request of that requester it serves, if any, else
0): the requester sends it no more (until invited again) and announces all
its other direct requests to it as usual (that replier will not take them). A direct request is RUNNING from the
start (it cannot be cancelled); if the replier's connection goes away
before it answers, the future fails with :class:`~yoton.errors.RemoteError`.
A yoton 2.2 replier never sends ``'req+'``, so a 2.2 peer only ever sees
the exchange above (a 2.2 requester takes the ``'req+'`` it gets for the
acknowledgement that follows it, which does no harm, and ignores
``'req_'``). A failed request is answered with the OBJECT tuple
``("yoton_ERROR_HANDLING_REQUEST", message)``; the requester's future then
raises :class:`~yoton.errors.RemoteError` with that message. The message is
yoton 2.2's (:func:`error_text`): the exception's text, a newline, and the
line that raised it; the replier also logs the error (a warning on the
``"yoton"`` logger, which Python prints on stderr when the application
configured no logging).

Futures are completed on the context's loop side; ``result()`` works from any
thread without the yoton event loop: it waits in the context's sockets itself
(through a :class:`~yoton.channels.base.Waiter`) or, when another thread does
already, on a condition.
Done callbacks run through the yoton event queue (like signals). A reply is
decoded in the thread that asks for it (``result()``, ``exception()``), never
on the loop side, where a large or hostile body would stall every link.

Against peers that do not follow the exchange:

* a requester takes a reply only from the replier that acknowledged the
  request, addressed to it, and an acknowledgement only when addressed to it;
* a replier keeps the announced requests per requester (at most
  :data:`MAX_OFFERS` each, from at most :data:`MAX_REQUESTERS` requesters)
  and acknowledges them in turn, requester by requester, so one requester
  cannot starve the others;
* an acknowledged request whose body does not come within
  :data:`ACK_TIMEOUT` seconds frees the replier (and that requester's other
  announcements are forgotten: a real requester announces again); a body
  that comes later is answered with an error, so its requester does not
  wait for ever;
* a replier serves only the request it acknowledged: request bodies it did
  not ask for are dropped and counted (``statistics()['refused']``), so its
  work queue (and the event queue, in 'event' mode) holds one request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

from ..errors import CancelledError, ChannelClosedError, RemoteError, TimeoutError
from ..events import post_event
from ..messages import OBJECT
from ..wire.codec import decode_object, encode_object
from ..wire.frames import Package
from .base import BaseChannel, Waiter

if TYPE_CHECKING:
    from ..context import Context
    from ..wire.frames import Body

log = logging.getLogger("yoton")

__all__ = ["ReqChannel", "RepChannel", "Future", "FutureState", "error_text"]

REF = 2**63
PRE_REQUEST = b"req?"
ACKNOWLEDGE = b"req!"
WITHDRAW = b"req-"
#: Direct requests between our own peers (see the module docstring).
CAN_DIRECT = b"req+"
DIRECT = b"req="
DECLINE = b"req~"
NO_DIRECT = b"req_"  # (the replier stops: dest_seq=REF+k, k the request it serves for that requester)
#: Seconds after a reply from a replier during which the next request goes
#: straight to it; repliers a requester remembers as taking direct requests.
DIRECT_WINDOW = 1.0
MAX_DIRECT = 256
_MAX_CACHED_NAMES = 256  # (instance attributes, request functions included, before requests stop being cached)
ERROR_TAG = "yoton_ERROR_HANDLING_REQUEST"
ANNOUNCE_INTERVAL = 0.5
#: Seconds a replier waits for the body of a request it acknowledged; a
#: large body on its way gets more time while at least ACK_PROGRESS bytes of
#: it arrive per ACK_TIMEOUT.
ACK_TIMEOUT = 1.0
ACK_PROGRESS = 4096
#: Announced requests a replier keeps per requester, and requesters it keeps.
MAX_OFFERS = 256
MAX_REQUESTERS = 1024


def _make_room(peers: dict, limit: int, router: Any) -> bool:
    """Whether ``peers`` (keyed by context id) has room for one more, after
    forgetting, if it is full, those that are no longer direct peers."""
    if len(peers) >= limit:
        for gone in [peer for peer in peers if not router.is_direct_peer(peer)]:
            del peers[gone]
    return len(peers) < limit


class FutureState(Enum):
    """Where a :class:`Future` is: PENDING until a replier takes the request,
    RUNNING while it serves it, then FINISHED -- or CANCELLED before it ran."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLED = "CANCELLED"
    FINISHED = "FINISHED"


PENDING, RUNNING, CANCELLED, FINISHED = (
    FutureState.PENDING,
    FutureState.RUNNING,
    FutureState.CANCELLED,
    FutureState.FINISHED,
)
# (RUNNING -> PENDING only for a direct request its replier declined)
_FUTURE_MOVES = {PENDING: (RUNNING, CANCELLED, FINISHED), RUNNING: (FINISHED, PENDING), CANCELLED: (), FINISHED: ()}

# No "line N of FILE." for these (yoton 2.2's rule: the text says it all).
_NO_LOCATION = (OverflowError, SyntaxError, ValueError)


def error_text(exc: BaseException) -> str:
    """The text yoton 2.2 sends (and a requester shows) for a request that raised ``exc``.

    ``str(exc)``, a newline, then where it was raised, ``'line N of FILE.'``
    (the innermost frame of its traceback); nothing after the newline for an
    OverflowError, SyntaxError or ValueError, or without a traceback.
    """
    where = ""
    if not isinstance(exc, _NO_LOCATION):
        tb = exc.__traceback__
        while tb is not None:
            where = f"line {tb.tb_lineno} of {tb.tb_frame.f_code.co_filename}."
            tb = tb.tb_next
    return f"{exc}\n{where}"


class Future:
    """The eventual result of a request (PEP 3148 style).

    PENDING until a replier takes the request, then RUNNING, then FINISHED
    (a result or an exception) — or CANCELLED, by :meth:`cancel` or when no
    replier took it within the auto-cancel timeout.
    """

    _direct = False  # (sent straight to a replier, see the module docstring)

    def __init__(
        self, req_channel: ReqChannel | None, req: bytes, request_id: int, timeout: float | None = 10.0
    ) -> None:
        self._channel = req_channel
        self._request = req  # encoded request body
        self._request_id = request_id
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._raw: Body | None = None  # the reply body, until result()/exception() decodes it
        self._replier = 0  # id of the replier that acknowledged the request
        self._callbacks: list = []
        self._lock = threading.Lock()  # guards the state and the result
        self._waiter = Waiter(req_channel._router if req_channel is not None else None)
        self._announced = 0.0
        self._set_cancel_at(timeout)

    def __repr__(self) -> str:
        return f"<yoton.Future #{self._request_id} {self._state.value}>"

    def _move(self, new: FutureState) -> bool:
        """(with _lock) The only place the state changes; False if ``new`` is
        not a move the rules allow from here (the future stays as it is)."""
        if new not in _FUTURE_MOVES[self._state]:
            return False
        self._state = new
        return True

    def set_auto_cancel_timeout(self, timeout: float | None) -> None:
        """Cancel the request if no replier has taken it ``timeout`` seconds from now.

        None means wait for a replier for ever; a timeout of 0 or less raises
        ValueError (as in yoton 2.2).
        """
        if timeout is not None and not float(timeout) > 0:
            raise ValueError(f"the auto-cancel timeout must be positive (or None), not {timeout!r}")
        self._set_cancel_at(timeout)

    def _set_cancel_at(self, timeout: float | None) -> None:
        self._cancel_at = None if timeout is None else time.monotonic() + float(timeout)

    def cancel(self) -> bool:
        """Cancel a request that no replier has taken yet; return whether it is cancelled."""
        with self._lock:
            if self._state is CANCELLED:
                return True
            if not self._move(CANCELLED):
                return False
        self._notify()
        if self._channel is not None:
            self._channel._forget(self, withdraw=True)
        self._schedule_callbacks()
        return True

    def cancelled(self) -> bool:
        """Whether the future was cancelled."""
        return self._state is CANCELLED

    def running(self) -> bool:
        """Whether a replier is working on the request."""
        return self._state is RUNNING

    def done(self) -> bool:
        """Whether the future has a result or exception, or was cancelled."""
        return self._state in (CANCELLED, FINISHED)

    def _notify(self) -> None:
        """The future is done: wake the threads waiting for it."""
        self._waiter.notify(everyone=True)

    def _wait(self, timeout: float | None) -> None:
        if not self.done():
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._waiter.wait(self.done, deadline):
                raise TimeoutError(f"no reply to request #{self._request_id} within {timeout:g} s")
        if self._state is CANCELLED:
            raise CancelledError(f"request #{self._request_id} was cancelled")

    def result(self, timeout: float | None = None) -> Any:
        """Wait (at most ``timeout`` s; None: no limit) and return the reply.

        Raises the request's exception (:class:`~yoton.errors.RemoteError` for
        a remote failure or a reply that does not decode),
        :class:`~yoton.errors.CancelledError` or :class:`~yoton.errors.TimeoutError`.
        """
        self._wait(timeout)
        self._decode()
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result`; return the exception of the request, or None."""
        self._wait(timeout)
        self._decode()
        return self._exception

    def _decode(self) -> None:
        """Decode the reply body, once, in the calling thread."""
        if self._raw is None:
            return
        with self._lock:
            raw, self._raw = self._raw, None
            if raw is None:
                return
            try:
                value = decode_object(raw)
            except ValueError as exc:
                self._exception = RemoteError(f"the reply could not be decoded: {exc}")
                return
            if isinstance(value, tuple) and len(value) == 2 and value[0] == ERROR_TAG:
                self._exception = RemoteError(str(value[1]))
            else:
                self._result = value

    def _set_reply(self, body: Body) -> None:
        """Complete the future with a reply body, decoded later (loop side)."""
        self._finish(None, None, body)

    def result_or_cancel(self, timeout: float | None = 1.0) -> Any:
        """Return the result if it comes within ``timeout`` s; else cancel and return None."""
        try:
            return self.result(timeout)
        except TimeoutError:
            self.cancel()
            return None

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """Call ``fn(future)`` once the future is done (through the yoton event queue).

        Added to a future that is already done, it is scheduled at once.
        Exceptions raised by ``fn`` are logged. ValueError if ``fn`` is not callable.
        """
        if not callable(fn):
            raise ValueError(f"add_done_callback() needs a callable, not {fn!r}")
        with self._lock:
            if not self.done():
                self._callbacks.append(fn)
                return
        post_event(fn, self)

    def set_running_or_notify_cancel(self) -> bool:
        """Mark the future running; return False if it was cancelled instead."""
        with self._lock:
            if self._state is CANCELLED:
                return False
            if not self._move(RUNNING):
                raise RuntimeError(f"future is {self._state.value}, not PENDING")
            return True

    def set_result(self, result: Any) -> None:
        """Complete the future with ``result``."""
        self._finish(result, None)

    def set_exception(self, exception: BaseException | str) -> None:
        """Complete the future with ``exception`` (a str becomes ``Exception(text)``, as in
        yoton 2.2; anything else that is not an exception raises ValueError)."""
        if isinstance(exception, str):
            exception = Exception(exception)
        elif not isinstance(exception, BaseException):
            raise ValueError(f"set_exception() needs an exception, not {exception!r}")
        self._finish(None, exception)

    def _finish(self, result: Any, exception: BaseException | None, raw: Body | None = None) -> None:
        with self._lock:
            if not self._move(FINISHED):
                return  # (done already)
            self._result, self._exception, self._raw = result, exception, raw
        self._notify()
        if self._channel is not None:
            self._channel._forget(self, withdraw=False)
        self._schedule_callbacks()

    def _schedule_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            post_event(fn, self)


class ReqChannel(BaseChannel):
    """The requesting end: ``req.method(*args, **kwargs)`` returns a :class:`Future`.

    Arguments and results must be OBJECT-encodable (None, bool, int, float,
    str, list, tuple, dict). ``default_future_timeout`` is the auto-cancel
    timeout of new futures: how long to wait for a replier to take a request.
    A request larger than the context's ``max_package_size`` raises
    ``ValueError`` when posted; a reply too large is answered as an error
    (the future raises :class:`~yoton.errors.RemoteError`). A request on a
    closed channel returns a future that is cancelled already (as in yoton 2.2).
    """

    _pattern_out = "req-rep"
    _pattern_in = "rep-req"
    _run_mode = 1  # yoton 2.2: a requester is always "event-driven" (here: served by the loop side)
    _future_class = Future  # (what requests return; yoton.asyncio's is awaitable)

    def __init__(self, context: Context, slot_base: str, default_future_timeout: float | None = 10.0) -> None:
        # (state first: packages may arrive on the loop side as soon as the base class registers us)
        self._default_timeout = default_future_timeout
        self._futures: dict = {}  # request number -> Future not yet done
        self._counter = 0
        self._req_lock = threading.Lock()
        self._ticking = False
        self._capable: dict = {}  # repliers that take direct requests (an ordered set)
        self._free: tuple[int, float] | None = None  # (replier, time) of the last reply from one of them
        self._direct_sent = 0
        self._declined = 0
        super().__init__(context, slot_base, OBJECT)

    def __getattr__(self, name: str) -> Callable[..., Future]:
        if name.startswith("_"):
            raise AttributeError(name)

        def request(*args: Any, **kwargs: Any) -> Future:
            return self._post(name, args, kwargs)

        request.__name__ = name
        request.__doc__ = f"Post request {name!r} and return a Future."
        if len(self.__dict__) < _MAX_CACHED_NAMES:
            self.__dict__[name] = request  # (found there next time, without this call)
        return request

    def statistics(self) -> dict:
        """Counters: requests still waiting for a reply (``pending_requests``), requests
        sent straight to a replier (``direct``) and how many of those it ``declined``, and more."""
        stats = super().statistics()
        stats.update(pending_requests=len(self._futures), direct=self._direct_sent, declined=self._declined)
        return stats

    def _process_events_local(self, dummy: object = None) -> None:
        """Nothing to do (yoton 2.2 name): requests and replies are handled on the loop side."""

    def _post(self, name: str, args: tuple, kwargs: dict) -> Future:
        body = encode_object((name, args, kwargs))
        if self._closed:  # as in yoton 2.2: a future that is cancelled already
            with self._req_lock:
                self._counter += 1
                future = self._future_class(None, body, self._counter, None)
            future._move(CANCELLED)
            return future
        limit = self._router.max_package_size
        if len(body) > limit:  # refused here: the I/O thread sends the body later
            raise ValueError(f"request too large to send: {len(body)} bytes encoded, but max_package_size is {limit}")
        direct_to = 0
        with self._req_lock:
            self._counter += 1
            future = self._future_class(self, body, self._counter, self._default_timeout)
            free, self._free = self._free, None
            if (
                free is not None
                and time.monotonic() - free[1] < DIRECT_WINDOW
                and len(body) + len(DIRECT) <= limit
                and self._router.is_direct_peer(free[0])
            ):
                direct_to = future._replier = free[0]
                future._direct = True
                future._move(RUNNING)  # (before _tick may see it: it would announce it if PENDING)
            self._futures[future._request_id] = future
            start_ticking = not self._ticking
            self._ticking = True
        self._count_out += 1
        if direct_to:
            self._direct_sent += 1
            self._router.send(self._slot_out, DIRECT + body, direct_to, REF + future._request_id, force=True)
        else:
            self._announce_request(future)
        if start_ticking:
            self._router.call_later(self._tick, ANNOUNCE_INTERVAL)
        return future

    def _announce_request(self, future: Future) -> None:
        future._announced = time.monotonic()
        self._router.send(self._slot_out, PRE_REQUEST, 0, REF + future._request_id, force=True)

    def _forget(self, future: Future, withdraw: bool) -> None:
        self._futures.pop(future._request_id, None)
        if withdraw and not self._closed:
            self._router.send(self._slot_out, WITHDRAW, 0, REF + future._request_id, force=True)

    def _tick(self) -> None:
        """Re-announce waiting requests, auto-cancel stale ones (I/O thread)."""
        now = time.monotonic()
        for future in list(self._futures.values()):
            if future._state is not PENDING:
                if future._direct and future._state is RUNNING and not self._router.peer_reachable(future._replier):
                    future.set_exception(RemoteError("the replier's connection closed before it answered"))
                continue
            if future._cancel_at is not None and now >= future._cancel_at:
                future.cancel()
            elif now - future._announced >= ANNOUNCE_INTERVAL and not self._closed:
                self._announce_request(future)
        with self._req_lock:
            self._ticking = bool(self._futures) and not self._closed
        if self._ticking:
            self._router.call_later(self._tick, ANNOUNCE_INTERVAL / 2)

    def _receive(self, pkg: Package) -> None:
        if pkg.dest_id != self._router.id:
            return  # (acknowledgements and replies are addressed to the requester)
        seq = pkg.dest_seq
        if seq >= REF:
            signal = bytes(pkg.data)
            if signal != ACKNOWLEDGE:
                self._direct_signal(pkg.source_id, seq - REF, signal)
                return
            future = self._futures.get(seq - REF)
            if future is None or future._state is not PENDING or not future.set_running_or_notify_cancel():
                return  # unknown, cancelled, or already taken by another replier
            future._replier = pkg.source_id
            n = future._request_id
            self._router.send(self._slot_out, future._request, pkg.source_id, n, force=True)
            self._router.send(self._slot_out, WITHDRAW, 0, REF + n, force=True)
            return
        future = self._futures.get(seq)
        if future is not None and pkg.source_id == future._replier:  # (only the replier that took it)
            if pkg.source_id in self._capable:  # (it is free now: the next request can go straight to it)
                self._free = (pkg.source_id, time.monotonic())
            future._set_reply(pkg.data)

    def _direct_signal(self, replier: int, n: int, signal: bytes) -> None:
        """``'req+'``: ``replier`` takes direct requests; ``'req~'``: it declined
        direct request ``n``, which is announced as usual; ``'req_'``: it stops
        taking direct requests: all ours to it but ``n`` (which it serves) go the
        usual way too (I/O thread)."""
        if signal == CAN_DIRECT:
            # (a replier invites only its direct peers: from anyone else it is made up)
            if self._router.is_direct_peer(replier) and _make_room(self._capable, MAX_DIRECT, self._router):
                self._capable[replier] = None
        elif not self._router.is_direct_peer(replier):
            return  # (its id is anyone's when it is no direct peer: only its own link speaks for it)
        elif signal == DECLINE:
            future = self._futures.get(n)
            if future is not None and future._direct and future._replier == replier:
                self._put_back(future)
        elif signal == NO_DIRECT:
            with self._req_lock:  # (_post decides on a direct request under it)
                self._capable.pop(replier, None)
                if self._free is not None and self._free[0] == replier:
                    self._free = None
                futures = list(self._futures.values())
            # (those it never took: in flight, or sent before we heard this, in any order)
            gone = [f for f in futures if f._direct and f._replier == replier and f._request_id != n]
            for future in gone:
                self._put_back(future)

    def _put_back(self, future: Future) -> None:
        """A direct request its replier did not take: announce it as usual (I/O thread)."""
        with future._lock:
            if not future._direct or not future._move(PENDING):
                return
            future._direct, future._replier = False, 0
        self._declined += 1
        if not self._closed:
            self._announce_request(future)

    def close(self) -> None:
        """Close the channel; requests not yet answered are cancelled (repliers
        are told, so none acknowledges them any more)."""
        for future in list(self._futures.values()):
            future.cancel()  # (before closing: the withdrawal still goes out)
        super().close()
        for future in list(self._futures.values()):
            if not future.cancel():
                future.set_exception(ChannelClosedError("the ReqChannel was closed before the reply came"))


_MODE_NAMES = {"off": 0, "event": 1, "thread": 2, "event-driven": 1, "thread-driven": 2}


def _mode_number(mode: object) -> int | None:
    """0, 1 or 2 for a mode yoton 2.2 accepts (names in any case, or values equal to 0, 1, 2); else None."""
    if isinstance(mode, str):
        return _MODE_NAMES.get(mode.lower())
    try:
        return (0, 1, 2).index(mode)  # (== as in 2.2: True is 1, 2.0 is 2)
    except Exception:
        return None


class _Rep(Enum):
    """What a replier is doing (see RepChannel._set_state)."""

    IDLE = "idle"  #: free to acknowledge the next announced request
    ACKNOWLEDGED = "acknowledged"  #: waiting for the body of the request it acknowledged
    SERVING = "serving"  #: has the body; serving it


class RepChannel(BaseChannel):
    """The replying end: subclass it and add methods; requesters call them by name.

    Start serving with :meth:`set_mode` (``'event'``: requests are handled by
    the yoton event loop; ``'thread'``: by a thread of this channel). Names
    starting with an underscore and the channel's own API (except
    :meth:`echo`) cannot be called remotely.

    A replier left off (mode 0) can also be served by the application itself,
    as pyzo's kernel does: call :meth:`_process_events_local` now and then
    (yoton 2.2's name; ``_run_mode`` tells the mode). A request that raises
    is answered with its :func:`error_text` and logged as a warning.
    """

    _pattern_out = "rep-req"
    _pattern_in = "req-rep"

    # IDLE --ack--> ACKNOWLEDGED --body--> SERVING --reply--> IDLE;
    # ACKNOWLEDGED --withdrawn, or no body within ACK_TIMEOUT--> IDLE;
    # IDLE --a direct request (ours only)--> SERVING.
    _TRANSITIONS = {
        _Rep.IDLE: (_Rep.ACKNOWLEDGED, _Rep.SERVING),
        _Rep.ACKNOWLEDGED: (_Rep.SERVING, _Rep.IDLE),
        _Rep.SERVING: (_Rep.IDLE,),
    }

    def __init__(self, context: Context, slot_base: str) -> None:
        # (state first: packages may arrive on the loop side as soon as the base class registers us)
        self._mode = 0
        self._lock = threading.Lock()
        # Announced, not yet acknowledged: requester id -> {request number: None}
        # (an ordered set), and the requesters in the order they get their turn.
        self._offers: dict = {}
        self._turns: deque = deque()
        self._state = _Rep.IDLE
        self._current: tuple[int, int] | None = None  # (requester id, n) acknowledged or being served
        self._acked_at = 0.0
        self._ack_progress = 0  # bytes of the acknowledged request's body seen on its way
        self._expired: deque = deque(maxlen=64)  # acknowledged, body never came in time
        self._work: deque = deque()
        self._work_waiter = Waiter(getattr(context, "router", None))  # the worker thread waits here for work
        self._worker: threading.Thread | None = None
        self._served = 0
        self._refused = 0
        self._told: dict = {}  # requesters told that we take direct requests (an ordered set)
        self._parked: Package | None = None  # a direct request to serve next (see _direct_request)
        self._direct_served = 0
        self._declined = 0
        self._ticking = False  # one _tick chain at most, however often set_mode is called
        super().__init__(context, slot_base, OBJECT)

    def _set_state(self, new: _Rep, current: tuple[int, int] | None = None) -> None:
        """Move to ``new`` (under _lock); the only place the state changes."""
        if new not in self._TRANSITIONS[self._state]:
            raise RuntimeError(f"RepChannel cannot go from {self._state.value} to {new.value}")
        self._state = new
        self._current = current if new is not _Rep.IDLE else None

    @property
    def _run_mode(self) -> int:
        """The mode (yoton 2.2's name): 0 off, 1 event, 2 thread."""
        return self._mode

    def set_mode(self, mode: str | int) -> None:
        """Serve requests: ``'off'`` (0), ``'event'`` (1) or ``'thread'`` (2).

        yoton 2.2's spellings work too: ``'event-driven'``, ``'thread-driven'``,
        any case, and values equal to 0, 1 or 2 (``True`` is 1).
        """
        number = _mode_number(mode)
        if number is None:
            raise ValueError(f"mode must be 'off', 'event' or 'thread' (or 0, 1, 2), not {mode!r}")
        self._mode = number
        if number == 1:
            self._post_local_work()
        if self._mode == 2 and self._worker is None:
            self._worker = threading.Thread(target=self._work_loop, daemon=True, name=f"yoton-rep-{self._slot_in_name}")
            self._worker.start()
        elif self._mode != 2 and self._worker is not None:
            self._stop_worker()
        with self._lock:
            off = self._mode == 0
            if off:
                self._offers.clear()
                self._turns.clear()
            elif self._ticking:
                return
            else:
                self._ticking = True
        if off:  # (nobody may serve direct requests now: the requesters announce them)
            self._withdraw_invitations()
            return
        self._router.call_later(self._tick, ACK_TIMEOUT / 2)

    def statistics(self) -> dict:
        """Counters: ``served`` requests, ``offers`` waiting for acknowledgement,
        request bodies ``refused`` because this replier had not acknowledged them,
        and direct requests taken (``direct``) and ``declined`` because it was busy."""
        stats = super().statistics()
        stats.update(
            served=self._served,
            offers=sum(map(len, list(self._offers.values()))),
            refused=self._refused,
            direct=self._direct_served,
            declined=self._declined,
        )
        return stats

    def echo(self, arg1: Any, sleep: float = 0.0) -> tuple[Any, str]:
        """Return ``(arg1, hex(context id))`` after sleeping ``sleep`` seconds."""
        if sleep:
            time.sleep(sleep)
        return (arg1, hex(self._router.id))

    # -- I/O thread -------------------------------------------------------------

    def _receive(self, pkg: Package) -> None:
        # Also when off: a replier served by _process_events_local needs the offers.
        seq = pkg.dest_seq
        if seq >= REF:
            requester, n = pkg.source_id, seq - REF
            if pkg.data[:4] == DIRECT:
                if pkg.dest_id == self._router.id:
                    self._direct_request(Package(pkg.data[4:], pkg.slot, requester, pkg.source_seq, pkg.dest_id, n))
                return
            signal = bytes(pkg.data)
            with self._lock:
                if signal == PRE_REQUEST:
                    self._add_offer(requester, n)
                elif signal == WITHDRAW:
                    offers = self._offers.get(requester)
                    if offers is not None:
                        offers.pop(n, None)
                    if self._state is _Rep.ACKNOWLEDGED and self._current == (requester, n):
                        self._set_state(_Rep.IDLE)
            self._offer_next()
        elif pkg.dest_id == self._router.id:
            key = (pkg.source_id, seq)
            with self._lock:
                taken = self._state is _Rep.ACKNOWLEDGED and self._current == key
                if taken:
                    self._set_state(_Rep.SERVING, key)
            if not taken:
                self._refuse_body(pkg, key)
                return
            self._dispatch(pkg)

    def _dispatch(self, pkg: Package) -> None:
        """Have a request this replier took served, as its mode says."""
        mode = self._mode
        if mode == 1:
            self._post_serve(pkg)
        else:  # the worker thread's, or (off) _process_events_local's
            self._work.append(pkg)
            if mode:
                self._work_waiter.notify()

    def _direct_request(self, pkg: Package) -> None:
        """A direct request (its body and dest_seq unwrapped): serve it now if we
        are free and nobody else waits; keep it for next if we serve its
        requester already; else (or if we never invited its requester) decline
        (I/O thread)."""
        requester, n = pkg.source_id, pkg.dest_seq
        verdict: bytes | None = DECLINE  # (None: kept for next)
        with self._lock:
            if requester not in self._told:
                pass  # (we did not invite it: e.g. it was meant for a replier closed before us on our slot)
            elif self._mode and self._state is _Rep.IDLE and self._fair_for(requester):
                self._set_state(_Rep.SERVING, (requester, n))
                verdict = DIRECT
            elif self._mode and self._parked is None and self._current is not None and self._current[0] == requester:
                self._parked, verdict = pkg, None
        if verdict is DIRECT:
            self._direct_served += 1
            self._dispatch(pkg)
        elif verdict is DECLINE:
            self._decline(requester, n)

    def _fair_for(self, requester: int) -> bool:
        """(with _lock) Whether no other requester waits for us."""
        offers = self._offers
        return not offers or all(not pending for other, pending in offers.items() if other != requester)

    def _decline(self, requester: int, n: int) -> None:
        self._declined += 1
        if not self._closed:
            self._router.send(self._slot_out, DECLINE, requester, REF + n, force=True)

    def _add_offer(self, requester: int, n: int) -> None:
        """(with _lock) Keep an announced request, within the bounds."""
        if self._current == (requester, n):
            return
        offers = self._offers.get(requester)
        if offers is None:
            if len(self._offers) >= MAX_REQUESTERS:
                return
            offers = self._offers[requester] = {}
            self._turns.append(requester)
        if len(offers) < MAX_OFFERS:
            offers[n] = None

    def _refuse_body(self, pkg: Package, key: tuple[int, int]) -> None:
        """A request body this replier did not acknowledge (or no longer waits for)."""
        self._refused += 1
        if key in self._expired:  # (it came too late: tell its requester, who waits)
            text = (
                f"the replier stopped waiting for this request: it came more than "
                f"{ACK_TIMEOUT:g} s after the acknowledgement\n"
            )
            if not self._closed:
                self._router.send(
                    self._slot_out, encode_object((ERROR_TAG, text)), pkg.source_id, pkg.dest_seq, force=True
                )

    def _offer_next(self, local: bool = False) -> None:
        """Acknowledge the next announced request if we are free (and on, or
        ``local``); requesters take turns. A direct request kept for next goes
        first, unless another requester waits (then it is declined)."""
        with self._lock:
            if self._state is not _Rep.IDLE or not (self._mode or local):
                return
            parked, self._parked = self._parked, None
            serve = False
            if parked is not None and self._fair_for(parked.source_id):
                self._set_state(_Rep.SERVING, (parked.source_id, parked.dest_seq))
                serve = True
        if parked is not None:
            if serve:
                self._direct_served += 1
                self._dispatch(parked)
                return
            self._decline(parked.source_id, parked.dest_seq)
        with self._lock:
            if self._state is not _Rep.IDLE or not (self._mode or local):
                return
            turns, offers = self._turns, self._offers
            while turns:
                requester = turns.popleft()
                pending = offers.get(requester)
                if not pending:
                    offers.pop(requester, None)
                    continue
                n = next(iter(pending))
                del pending[n]
                if pending:
                    turns.append(requester)  # (its next one after everyone else's)
                else:
                    del offers[requester]
                break
            else:
                return
            self._set_state(_Rep.ACKNOWLEDGED, (requester, n))
            self._acked_at = time.monotonic()
            self._ack_progress = 0
            told = self._told
            invite = (
                self._mode  # (off, it declines direct requests: no invitation)
                and requester not in told
                and self._router.is_direct_peer(requester)
                and _make_room(told, MAX_REQUESTERS, self._router)
            )
            if invite:
                told[requester] = None
        if invite:  # (before the first acknowledgement: the requester knows it by the reply)
            self._router.send(self._slot_out, CAN_DIRECT, requester, REF + n, force=True)
        self._router.send(self._slot_out, ACKNOWLEDGE, requester, REF + n, force=True)

    def _tick(self) -> None:
        with self._lock:
            if not self._mode or self._closed:
                self._ticking = False
                return
            self._forget_stale_ack()
        self._offer_next()
        self._router.call_later(self._tick, ACK_TIMEOUT / 2)

    def _forget_stale_ack(self) -> None:
        """(with _lock) Free us if the requester did not send the request we
        acknowledged in time; forget its other announcements too (a real
        requester announces again)."""
        now = time.monotonic()
        if self._state is _Rep.ACKNOWLEDGED and now - self._acked_at > ACK_TIMEOUT:
            key = self._current
            assert key is not None  # (ACKNOWLEDGED: set with it)
            requester, n = key
            got = self._router.receiving(requester, n)
            if got is not None and got >= self._ack_progress + ACK_PROGRESS:
                self._ack_progress, self._acked_at = got, now  # (its body is coming: wait on)
                return
            self._expired.append(key)
            self._offers.pop(requester, None)
            self._set_state(_Rep.IDLE)

    # -- serving in the application's thread (yoton 2.2's mode-0 interface) -------

    def _process_events_local(self, dummy: object = None) -> None:
        """Serve, in the calling thread, the requests this replier has taken; then take the next.

        yoton 2.2's way to run a replier that is off (mode 0) from the
        application's own loop, as pyzo's kernel does when
        ``PYZO_INTROSPECT_IN_MAIN_THREAD=1``: each call answers what arrived
        and acknowledges one waiting request, whose body arrives for the next
        call. In the other modes it does the same alongside them.
        """
        if self._closed:
            return
        with self._lock:
            self._forget_stale_ack()
        while True:
            try:
                pkg = self._work.popleft()
            except IndexError:
                break
            self._serve(pkg)
        self._offer_next(local=True)

    def _post_local_work(self) -> None:
        """Requests taken while off go to the event loop when the mode becomes 1."""
        while True:
            try:
                pkg = self._work.popleft()  # (one by one: a worker thread may take some too)
            except IndexError:
                return
            self._post_serve(pkg)

    def _post_serve(self, pkg: Package) -> None:
        """Have the event loop serve ``pkg`` ('event' mode; yoton.asyncio's uses its asyncio loop)."""
        post_event(self._serve, pkg)

    # -- serving (event loop or worker thread) ------------------------------------

    def _serve(self, pkg: Package) -> None:
        self._send_reply(pkg, self._call(pkg.data))

    def _send_reply(self, pkg: Package, body: bytes, block: bool | float = True) -> None:
        """Answer the request ``pkg`` with ``body`` and become free for the next.

        ``block`` as for sending (the reply waits for room in the send
        queues); :class:`~yoton.errors.WouldBlock` leaves everything as it was.
        """
        if not self._closed:
            self._router.send(self._slot_out, body, pkg.source_id, pkg.dest_seq, block)
            self._count_out += 1
        self._served += 1
        with self._lock:
            if self._state is _Rep.SERVING and self._current == (pkg.source_id, pkg.dest_seq):
                self._set_state(_Rep.IDLE)
        self._offer_next()

    def _call(self, data: Body) -> bytes:
        """Serve a request body: the reply body (an error reply if it failed)."""
        name = "?"
        try:
            name, args, kwargs = self._parse_request(data)
            method = self._method_for(name)
        except Exception as exc:
            return self._error_reply(name, exc, False)
        try:
            result = method(*args, **kwargs)
        except Exception as exc:
            return self._error_reply(name, exc, True)
        return self._reply_body(name, result)

    @staticmethod
    def _parse_request(data: Body) -> tuple:
        """``(name, args, kwargs)`` of a request body; ValueError if malformed."""
        request = decode_object(data)
        if not (isinstance(request, tuple) and len(request) == 3):
            raise ValueError("malformed request")
        name, args, kwargs = request
        if not isinstance(name, str) or not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
            raise ValueError("malformed request")
        return name, args, kwargs

    def _method_for(self, name: str) -> Callable[..., Any]:
        """The method a request may call by ``name``; AttributeError if none."""
        if name.startswith("_") or (name != "echo" and hasattr(RepChannel, name)):
            raise AttributeError(f"Method {name!r} cannot be called remotely.")
        method = getattr(self, name, None)
        if not callable(method):
            raise AttributeError(f"Method {name!r} not implemented.")
        return method

    def _reply_body(self, name: str, result: Any) -> bytes:
        """The reply body for a method's ``result`` (an error reply if it cannot be sent)."""
        try:
            reply = encode_object(result)
            limit = self._router.max_package_size
            if len(reply) > limit:
                raise ValueError(
                    f"reply too large to send: {len(reply)} bytes encoded, but max_package_size is {limit}"
                )
            return reply
        except Exception as exc:
            return self._error_reply(name, exc, False)

    def _error_reply(self, name: str, exc: Exception, called: bool) -> bytes:
        """Log a failed request and return its error reply (2.2's tuple)."""
        text = error_text(exc)
        # (the traceback when the method itself raised; our own refusals need none)
        log.warning(
            "yoton.RepChannel %r: error handling request %r:\n%s",
            self._slot_in_name,
            name,
            text.rstrip("\n"),
            exc_info=called,
        )
        return encode_object((ERROR_TAG, text))

    def _work_loop(self) -> None:
        me = threading.current_thread()
        work = self._work
        while True:
            # Idle: the Waiter lets us wait for requests in the sockets
            # ourselves, so one is served without a thread switch.
            self._work_waiter.wait(lambda: work or self._worker is not me, None)
            if self._worker is not me:
                return
            try:
                pkg = work.popleft()
            except IndexError:
                continue
            try:
                self._serve(pkg)
            except Exception:
                log.exception("yoton: RepChannel worker failed")

    def _stop_worker(self) -> None:
        self._worker = None
        self._work_waiter.notify(everyone=True)  # (the worker checks _worker when woken)

    def close(self) -> None:
        """Stop serving and detach from the context (a direct request kept for
        next is declined first, so its requester announces it to the others)."""
        self._mode = 0
        self._withdraw_invitations()
        self._stop_worker()
        super().close()

    def _withdraw_invitations(self) -> None:
        """Off or closing: decline the direct request kept for next, and tell
        each requester we invited (``'req_'``) to send us no more and to
        announce all its others, as they come, but the one we serve for it."""
        with self._lock:
            parked, self._parked = self._parked, None
            told, self._told = self._told, {}
            current = self._current if self._state is _Rep.SERVING else None
        if parked is not None:
            self._decline(parked.source_id, parked.dest_seq)
        if not self._closed:
            for requester in told:
                if self._router.is_direct_peer(requester):
                    k = current[1] if current is not None and current[0] == requester else 0
                    self._router.send(self._slot_out, NO_DIRECT, requester, REF + k, force=True)
