"""Throttling of codename logins per caller, so that nobody can jam the login of others.

The threat: a guesser trying codenames (each wrong one that is made of real words costs an
argon2 hash, memory-hard on purpose), and a jammer who only wants real sources locked out. A
single site-wide budget served the jammer: spending it refused everyone's correct codename.

So the budget is per **caller**, an opaque key the web layer derives from the connection (on
the source onion, tor's circuit id; see source_app/circuits.py). Each caller has a token
bucket of wrong tries (``caller_burst``, refilled at ``caller_per_hour``); a try *reserves* a
token before anything is checked, in one step with no await in between, so parallel tries
cannot overspend it, and a correct codename gets its token back. Garbage that is not a codename
spends the caller's token only. Buckets are forgotten once full and idle (``caller_idle``), and
at most ``max_callers`` are kept: memory stays bounded under a flood of circuits.

Hashing runs in at most ``concurrency`` slots, handed out round-robin between callers, with at
most ``queue_per_caller`` tries of one caller queued or hashing: one caller with many tries in
flight waits its turn like everyone else. A caller that has never given a wrong codename goes
before callers that have, and needs nothing more. The others are also held to a site-wide
ceiling (``site_per_minute`` wrong codenames, a token bucket): when it is spent their tries wait
for it to refill, they are slowed but never refused, and a fresh circuit with the right codename
is not held up by them at all. Wrong codenames hashed over T seconds are therefore at most
``site_per_minute * (1 + T / 60)`` plus ``queue_per_caller`` for each caller that had not
failed before (a new circuit costs the attacker a rendezvous), and each caller's own bucket
bounds its share.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from .errors import Throttled

MINUTE = 60.0
HOUR = 3600.0


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second since the last refill."""

    def __init__(self, *, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = capacity
        self._stamp = now

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True

    def give_back(self, now: float) -> None:
        self.refill(now)
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def seconds_to_one(self, now: float) -> float:
        self.refill(now)
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.capacity


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    paced: bool
    site_token: bool = False


@dataclass(eq=False)
class _Caller:
    bucket: TokenBucket
    last_used: float
    failed: bool = False  # a wrong codename or garbage seen: held to the site ceiling
    in_flight: int = 0
    waiting: deque[_Waiter] = field(default_factory=deque)
    turn: int = -1  # when it was last given a slot (-1: never)


def _last_turn(caller: _Caller) -> int:
    return caller.turn


class LoginAttempt:
    """One reserved try; the caller reports :meth:`right` or :meth:`wrong`."""

    def __init__(self, throttle: LoginThrottle, caller: _Caller) -> None:
        self._throttle = throttle
        self._caller = caller
        self._site_token = False
        self._hashed = False
        self.outcome: bool | None = None

    @asynccontextmanager
    async def hashing(self) -> AsyncIterator[None]:
        """A hashing slot, in the caller's turn."""
        self._site_token = await self._throttle._acquire(self._caller, paced=self._caller.failed)
        self._hashed = True
        try:
            yield
        finally:
            self._throttle._release()

    def right(self) -> None:
        """The codename was right: its tokens come back."""
        self.outcome = True
        now = self._throttle._clock()
        self._caller.bucket.give_back(now)
        if self._site_token:
            self._throttle._site.give_back(now)

    async def wrong(self) -> None:
        """Wrong codename or garbage; the caller (only) waits the failure delay."""
        self._settle_wrong()
        await self._throttle._sleep(self._throttle._delay)

    def _settle_wrong(self) -> None:
        if self.outcome is not None:
            return
        self.outcome = False
        self._caller.failed = True
        if self._hashed and not self._site_token:
            # A first wrong hash from a fresh caller still counts against the site ceiling.
            self._throttle._site.take(self._throttle._clock())


class LoginThrottle:
    def __init__(
        self,
        *,
        caller_burst: int,
        caller_per_hour: float,
        site_per_minute: int,
        concurrency: int,
        queue_per_caller: int,
        max_callers: int,
        caller_idle: float,
        failure_delay: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._burst = float(caller_burst)
        self._caller_rate = caller_per_hour / HOUR
        self._queue_per_caller = queue_per_caller
        self._max_callers = max_callers
        self._idle = caller_idle
        self._delay = failure_delay
        self._clock = clock
        self._sleep = sleep
        self._site = TokenBucket(capacity=float(site_per_minute), rate=site_per_minute / MINUTE,
                                 now=clock())
        self._free = concurrency
        self._callers: OrderedDict[str, _Caller] = OrderedDict()  # least recently used first
        self._ring: dict[int, _Caller] = {}  # callers with waiters
        self._turns = itertools.count()
        self._timer: asyncio.Task[None] | None = None

    # -- budget -----------------------------------------------------------------------------

    def _caller_for(self, key: str, now: float) -> _Caller:
        caller = self._callers.get(key)
        if caller is not None:
            self._callers.move_to_end(key)
            caller.last_used = now
            return caller
        self._forget_idle(now)
        caller = _Caller(TokenBucket(capacity=self._burst, rate=self._caller_rate, now=now), now)
        self._callers[key] = caller
        return caller

    def _forget_idle(self, now: float) -> None:
        """Drop full, idle buckets (oldest first); past ``max_callers``, the oldest idle one."""
        while self._callers:
            key, oldest = next(iter(self._callers.items()))
            idle = oldest.in_flight == 0 and now - oldest.last_used >= self._idle
            if not (idle and oldest.bucket.full(now)):
                break
            del self._callers[key]
        if len(self._callers) >= self._max_callers:
            for key, caller in self._callers.items():
                if caller.in_flight == 0:
                    del self._callers[key]
                    break

    def callers_tracked(self) -> int:
        return len(self._callers)

    @asynccontextmanager
    async def attempt(self, key: str) -> AsyncIterator[LoginAttempt]:
        """Reserve one of ``key``'s tokens, or raise Throttled. Leaving without ``right()``
        counts as a wrong try (a dropped connection does not get its hash for free)."""
        now = self._clock()
        caller = self._caller_for(key, now)
        if caller.in_flight >= self._queue_per_caller:
            raise Throttled(retry_after=1)
        if not caller.bucket.take(now):
            raise Throttled(retry_after=max(1, math.ceil(caller.bucket.seconds_to_one(now))))
        caller.in_flight += 1
        attempt = LoginAttempt(self, caller)
        try:
            yield attempt
        finally:
            caller.in_flight -= 1
            caller.last_used = self._clock()
            attempt._settle_wrong()

    # -- fair hashing slots -----------------------------------------------------------------

    @asynccontextmanager
    async def hashing(self, key: str) -> AsyncIterator[None]:
        """A hashing slot in ``key``'s turn, for a hash that is not a login try (a new
        codename): no token, no site ceiling."""
        caller = self._caller_for(key, self._clock())
        caller.in_flight += 1
        try:
            await self._acquire(caller, paced=False)
            try:
                yield
            finally:
                self._release()
        finally:
            caller.in_flight -= 1
            caller.last_used = self._clock()

    async def _acquire(self, caller: _Caller, *, paced: bool) -> bool:
        """Wait for a slot in ``caller``'s turn; True if a site token was taken for it."""
        waiter = _Waiter(asyncio.get_running_loop().create_future(), paced)
        caller.waiting.append(waiter)
        self._ring.setdefault(id(caller), caller)
        self._dispatch()
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release()  # the slot was ours already
            else:
                caller.waiting.remove(waiter)
                if not caller.waiting:
                    self._ring.pop(id(caller), None)
            raise
        return waiter.site_token

    def _release(self) -> None:
        self._free += 1
        self._dispatch()

    def _next_waiter(self, now: float) -> _Waiter | None:
        """Round-robin: of the callers waiting, the one served longest ago whose next try needs
        no site token; else, if a site token is there, the one served longest ago at all."""
        waiting = self._ring.values()
        chosen = min((c for c in waiting if not c.waiting[0].paced), key=_last_turn, default=None)
        if chosen is None and self._ring:
            if not self._site.take(now):
                return None
            chosen = min(waiting, key=_last_turn)
            chosen.waiting[0].site_token = True
        if chosen is None:
            return None
        chosen.turn = next(self._turns)
        waiter = chosen.waiting.popleft()
        if not chosen.waiting:
            del self._ring[id(chosen)]
        return waiter

    def _dispatch(self) -> None:
        now = self._clock()
        while self._free > 0:
            waiter = self._next_waiter(now)
            if waiter is None:
                break
            self._free -= 1
            waiter.future.set_result(None)
        if self._free > 0 and self._ring and self._timer is None:
            # Only paced tries wait: come back when the site ceiling has a token again.
            self._timer = asyncio.get_running_loop().create_task(
                self._wake_after(self._site.seconds_to_one(now)))

    async def _wake_after(self, delay: float) -> None:
        try:
            await self._sleep(delay)
        finally:
            self._timer = None
        self._dispatch()
