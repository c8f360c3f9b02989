"""Throttling of codename logins without the client's address.

All onion traffic reaches the app from 127.0.0.1, so there is no address to count by. Instead:
every wrong codename waits ``failure_delay`` before its answer (a guesser pays time, the real
source loses a second or two once), the whole site accepts at most ``failures_per_minute`` wrong
codenames (a token bucket; past it, every login is told to wait, so guessing cannot be sped up by
parallel requests), and at most ``concurrency`` codename hashes run at once (memory-hard hashing
must not become a denial of service).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from .errors import Throttled


class LoginThrottle:
    def __init__(
        self,
        *,
        failures_per_minute: int,
        failure_delay: float,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._capacity = float(failures_per_minute)
        self._rate = failures_per_minute / 60.0
        self._tokens = self._capacity
        self._stamp = clock()
        self._delay = failure_delay
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(concurrency)

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def check(self) -> None:
        """Raise Throttled when the site's budget of wrong codenames is spent."""
        self._refill()
        if self._tokens < 1.0:
            raise Throttled(retry_after=max(1, math.ceil((1.0 - self._tokens) / self._rate)))

    @asynccontextmanager
    async def hashing(self) -> AsyncIterator[None]:
        async with self._slots:
            yield

    async def record_failure(self) -> None:
        """Spend one token and make the caller wait before it answers."""
        self._refill()
        self._tokens = max(0.0, self._tokens - 1.0)
        await self._sleep(self._delay)
