"""Following the gateway's change feed while an officer is logged in: new ciphertext comes
into the cache in the background, is decrypted into memory for the inbox, and a desktop
notification names the unit and the count.

One task per desk, started at login and stopped at logout and shutdown. A dropped circuit or a
restarted gateway is ridden out with exponential backoff and jitter (1 s doubling to 60 s,
reset by the next answer); an ended login stops the task. ``last_heard`` is when the gateway
last answered, so the inbox can say how fresh it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable

from .cache import Cache
from .casebook import Casebook
from .client import GatewayClient
from .errors import DeskError, GatewayError, NotFound, Unauthorized
from .notify import Notifier

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
#: A full (incremental) sync this often as well: it picks up what the feed cannot tell
#: (cases removed on the server, a submission committed behind the cursor, colleagues' changes).
RESYNC_EVERY = 300.0


def backoff(failures: int, jitter: float) -> float:
    """Seconds to wait after ``failures`` failures in a row; ``jitter`` in [0, 1) spreads desks
    that lost the gateway together over the second half of the interval."""
    delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** max(0, failures - 1))
    return delay * (0.5 + jitter / 2)


class Follower:
    def __init__(self, *, cache: Cache, casebook: Casebook, notifier: Notifier, wait: int = 25,
                 locale: str = "en",
                 resync_every: float = RESYNC_EVERY,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 jitter: Callable[[], float] = random.random) -> None:
        self._cache = cache
        self._casebook = casebook
        self._notifier = notifier
        self._hindi = locale == "hi"  # the notification names the unit in the desk's language
        self._wait = wait
        self._resync_every = resync_every
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._jitter = jitter
        self._task: asyncio.Task[None] | None = None
        #: Cases the follower brought in that the officer has not opened yet (the page title).
        self.unseen: set[int] = set()
        self.last_heard: dt.datetime | None = None
        self.state = "off"  # off, following, retrying, stopped (the login ended)
        self.problem: str | None = None
        self.failures = 0
        self.synced = asyncio.Event()  # set after each round that brought something in (tests wait on it)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self, client: GatewayClient) -> None:
        """Follow with this logged-in client (a new login replaces the old follow)."""
        if self._task is not None:
            self._task.cancel()
        self.state, self.problem, self.failures = "following", None, 0
        self._task = asyncio.get_running_loop().create_task(self._run(client), name="cpcp-desk-follow")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.unseen.clear()
        self.state = "off"

    def seen(self, case_id: int) -> None:
        self.unseen.discard(case_id)

    def heard_ago(self) -> float | None:
        if self.last_heard is None:
            return None
        return max(0.0, (self._clock() - self.last_heard).total_seconds())

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self, client: GatewayClient) -> None:
        cursor: int | None = None
        last_full = 0.0
        while True:
            try:
                if cursor is None:
                    # The position first, then everything: nothing arriving between is missed.
                    cursor = (await client.changes()).cursor
                    self._heard()
                    await self._full_sync(client)
                    last_full = self._monotonic()
                answer = await client.changes(cursor, wait=self._wait)
                self._heard()
                if answer.reset:  # the server's database was restored: start over
                    cursor = None
                    continue
                if answer.cases:
                    await self._bring_in(client, answer.cases, answer.counts)
                cursor = answer.cursor
                if self._monotonic() - last_full >= self._resync_every:
                    await self._full_sync(client)
                    last_full = self._monotonic()
            except Unauthorized:
                self.state, self.problem = "stopped", "the login ended; log in again to follow"
                return
            except (GatewayError, DeskError, OSError) as exc:
                self.failures += 1
                delay = backoff(self.failures, self._jitter())
                self.state, self.problem = "retrying", f"{exc} (trying again in {delay:.0f} s)"
                log.info("follow: %s; again in %.1f s", type(exc).__name__, delay)
                await self._sleep(delay)

    def _heard(self) -> None:
        self.last_heard = self._clock()
        self.state, self.problem, self.failures = "following", None, 0

    async def _full_sync(self, client: GatewayClient) -> None:
        known = {c.id for c in self._cache.cases()}
        try:
            await self._cache.sync(client)
        finally:
            self._casebook.drop_uncached()
        if known:  # at login everything is "new": only what arrives later is counted
            self.unseen |= {c.id for c in self._cache.cases() if c.id not in known and not c.spam}
        await self._decrypt([c.id for c in self._cache.cases() if c.id not in known])
        self.synced.set()

    async def _bring_in(self, client: GatewayClient, case_ids: list[int], counts: dict[str, int]) -> None:
        for case_id in case_ids:
            new = self._cache.case(case_id) is None
            try:
                case = await self._cache.refresh_case(client, case_id)
            except NotFound:
                continue  # gone since (deleted, moved to another unit)
            if new and not case.spam:
                self.unseen.add(case_id)
        await self._decrypt(case_ids)
        for slug, count in counts.items():
            unit = self._cache.unit(slug)
            if count > 0:
                name = (unit.name_hi if self._hindi else unit.name_en) if unit else slug
                await self._notifier.notify(name, count)
        self.synced.set()

    async def _decrypt(self, case_ids: list[int]) -> None:
        """Decrypt the new messages now, so the inbox shows them as soon as it is loaded
        (into this process's memory only, as the inbox itself would)."""
        for case_id in case_ids:
            case = self._cache.case(case_id)
            if case is not None:
                await self._casebook.summary(case)
