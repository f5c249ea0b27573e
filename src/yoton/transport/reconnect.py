"""Reconnecting: when a connection re-dials, how often, and when it gives up.

``Context.connect(address, reconnect=True)`` (or ``reconnect=ReconnectPolicy(...)``)
makes a connection that survives losing its peer. The rules:

* **What counts as lost**: the stream ended without the close signal (the
  peer process died, its machine rebooted), or broke (reset, broken pipe, a
  TLS error), or -- only with ``dead_after`` -- nothing arrived for that many
  seconds (a network cut, which TCP alone notices after many minutes). Not
  lost: an orderly close by the peer ("Closed from other end."), a
  ``CLOSE_CONNECTION`` request, a protocol error (a peer that breaks the
  protocol would break it again), and of course ``close()`` here.
* **Meanwhile** the connection is RECONNECTING (``is_reconnecting``; not
  ``is_connected``, still ``is_alive``): sends keep queueing on it, within
  its send queue's bound. A full queue holds senders back for the
  connection's ``timeout`` at most; then the connection is *stalled* and its
  queue discards by the discard mode (counted in
  ``statistics()['discarded_outgoing']``, logged once), as for any peer that
  takes nothing. What the broken stream had already taken for writing (the
  kernel's socket buffer, the package being written) is gone with it: TCP
  gives no receipt.
* **Re-dialling**: the address is dialled again (a host name is looked up
  again first, in a thread of its own, so a host that moved is found; if
  the lookup fails or takes longer than ``attempt_timeout``, the address
  found last) after ``initial_delay`` s, then after delays growing by ``factor``
  up to ``max_delay``, each shortened by a random part of up to ``jitter``
  (so many clients of one restarted server do not dial in lockstep). Each
  attempt (TCP connect, TLS, yoton handshake, auth_key proofs) may take
  ``attempt_timeout`` s. A connection that is lost again within ``max_delay``
  s of a re-dial keeps backing off; one that stayed up longer starts again
  at ``initial_delay``.
* **Giving up**: after ``give_up_after`` s of failed attempts (None, the
  default: never), or at once when an attempt fails the auth_key check or
  TLS verification, or reaches this very context. The connection then
  closes with a reason saying why (``closed`` fires once, then).
* **After a re-dial** the queued packages go first, in order; then the
  context announces itself as a newly connected one does (the
  ``NEW_CONNECTION`` context message, after re-sending the states its own
  StateChannels set), so every StateChannel of the network re-sends its
  state; and ``conn.reconnected`` is emitted with the connection.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ReconnectPolicy", "Backoff"]


def _seconds(name: str, value: Any, allow_none: bool = False, allow_zero: bool = True) -> None:
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        kind = "a positive" if not allow_zero else "a non-negative"
        raise ValueError(f"{name} must be {kind} number of seconds{' or None' if allow_none else ''}, not {value!r}")


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a connection re-dials a lost peer (see :mod:`yoton.transport.reconnect`).

    ``initial_delay`` (s, default 0.1): before the first attempt.
    ``max_delay`` (s, default 2.0): the longest delay between attempts.
    ``factor`` (default 2): each delay is the previous one times this.
    ``jitter`` (0-1, default 0.5): each delay is shortened by a random
    fraction of up to this much of it.
    ``attempt_timeout`` (s, default 3.0): how long one attempt may take.
    ``give_up_after`` (s, default None: never): close the connection after
    trying this long without success.
    ``dead_after`` (s, default None: off): count a connected peer silent for
    this long as lost (yoton peers send a heartbeat every 0.25 s; choose more
    than the longest pause of the peer's process, e.g. a long computation that
    holds the GIL).
    """

    initial_delay: float = 0.1
    max_delay: float = 2.0
    factor: float = 2.0
    jitter: float = 0.5
    attempt_timeout: float = 3.0
    give_up_after: float | None = None
    dead_after: float | None = None

    def __post_init__(self) -> None:
        _seconds("initial_delay", self.initial_delay)
        _seconds("max_delay", self.max_delay)
        _seconds("attempt_timeout", self.attempt_timeout, allow_zero=False)
        _seconds("give_up_after", self.give_up_after, allow_none=True)
        _seconds("dead_after", self.dead_after, allow_none=True, allow_zero=False)
        if self.max_delay < self.initial_delay:
            raise ValueError(f"max_delay ({self.max_delay}) must not be below initial_delay ({self.initial_delay})")
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 1 <= factor < math.inf:
            raise ValueError(f"factor must be a number of at least 1, not {factor!r}")
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be a number from 0 to 1, not {jitter!r}")

    @classmethod
    def from_option(cls, value: object) -> ReconnectPolicy | None:
        """The policy for ``connect(reconnect=value)``: False/None (off), True (the defaults) or a policy."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise ValueError(f"reconnect must be True, False or a yoton.ReconnectPolicy, not {value!r}")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The delay before attempt number ``attempt`` (0 for the first one)."""
        base = min(self.max_delay, self.initial_delay * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rand())


class Backoff:
    """Where one connection is in its policy's sequence of attempts."""

    def __init__(self, policy: ReconnectPolicy):
        self.policy = policy
        self.attempt = 0  # attempts since the streak of failures began
        self.lost_at = 0.0  # (monotonic) when the current outage began
        self.up_since: float | None = None  # (monotonic) when the last re-dial succeeded

    def lost(self, now: float) -> float:
        """The link was lost at ``now``: the delay before the first attempt."""
        self.lost_at = now
        if self.up_since is None or now - self.up_since > self.policy.max_delay:
            self.attempt = 0  # (it stayed up a while: start afresh)
        return self.next_delay()

    def next_delay(self) -> float:
        """The delay before the next attempt (and count it)."""
        delay = self.policy.delay(self.attempt)
        self.attempt += 1
        return delay

    def give_up(self, now: float, delay: float) -> bool:
        """Whether an attempt ``delay`` s from ``now`` would start past ``give_up_after``."""
        limit = self.policy.give_up_after
        return limit is not None and now + delay - self.lost_at > limit

    def deadline(self) -> float:
        """When (monotonic) the current outage reaches ``give_up_after``."""
        return self.lost_at + (self.policy.give_up_after or 0.0)

    def succeeded(self, now: float) -> None:
        """A re-dial succeeded at ``now``."""
        self.up_since = now
