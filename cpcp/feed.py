"""The change feed desks follow: which cases of an officer's units got a new submission since
a cursor, as ids and counts only.

The cursor is the highest submission id the feed has seen. Tips are stored by the source
app, another process, so the feed learns of them from the database: one indexed query
(``max(submissions.id)``) per tick, shared by every waiting poll, and only while a poll waits.
A poll whose officer's units got something is answered with one scoped query.

Submission ids are handed out before commit, so one committed out of order can fall behind a
cursor: the desk's sync on news is a full incremental one, which picks up such a straggler at
the next news or its periodic sync (journalist_app/desk/follow.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .errors import CPCPError
from .models import Case, Submission, Unit

log = logging.getLogger(__name__)

#: At most this many case ids in one answer; the cursor then stops where the answer stops.
MAX_CASES = 500


class TooManyPolls(CPCPError):
    """The officer already has as many polls waiting as the feed allows."""


@dataclass(frozen=True)
class Changes:
    cursor: int
    #: Cases with a submission after the cursor, ascending.
    cases: list[int] = field(default_factory=list)
    #: Per unit slug: how many of those cases got a submission that raises an alert (not spam).
    counts: dict[str, int] = field(default_factory=dict)
    #: The cursor asked for is ahead of the server (a restored database): sync everything.
    reset: bool = False


class ChangeFeed:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], tick: float = 1.0,
                 polls_per_officer: int = 4, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sessions = sessions
        self._tick = tick
        self._per_officer = polls_per_officer
        self._clock = clock
        self._sleep = sleep
        self._high = 0
        self._news = asyncio.Event()
        self._waiting: Counter[int] = Counter()
        self._ticker: asyncio.Task[None] | None = None
        self.ticks = 0  # database checks made by the ticker (tests read it)

    async def changes(self, officer_id: int, unit_ids: frozenset[int], since: int | None,
                      wait: float) -> Changes:
        """At once if the officer's units got anything after ``since``; else wait up to
        ``wait`` seconds for it. ``since`` None: just the current cursor."""
        if since is None:
            return Changes(cursor=await self._fetch_high())
        if self._waiting[officer_id] >= self._per_officer:
            raise TooManyPolls(f"at most {self._per_officer} polls at a time per officer")
        self._waiting[officer_id] += 1
        try:
            return await self._wait(unit_ids, since, wait)
        finally:
            self._waiting[officer_id] -= 1
            if self._waiting[officer_id] <= 0:
                del self._waiting[officer_id]

    async def _wait(self, unit_ids: frozenset[int], since: int, wait: float) -> Changes:
        deadline = self._clock() + wait
        while True:
            # The generation is taken before the query: news committed while it runs wakes us.
            news = self._news
            found = await self._scoped(unit_ids, since)
            if found.cases or found.reset:
                return found
            if news.is_set() and self._high <= found.cursor:
                news = self._news  # the rise was this query's own finding: nothing newer
            left = deadline - self._clock()
            if left <= 0:
                # Nothing for this officer up to what was looked at: the next poll starts there.
                return found
            self._start_ticker()
            try:
                await asyncio.wait_for(news.wait(), timeout=left)
            except TimeoutError:
                return found
            # Something, somewhere: the query above tells whether it is this officer's.

    async def _fetch_high(self) -> int:
        async with self._sessions() as db:
            high = int(await db.scalar(select(func.coalesce(func.max(Submission.id), 0))) or 0)
        self._raise_high(high)
        return high

    def _raise_high(self, high: int) -> None:
        if high > self._high:
            self._high = high
            news, self._news = self._news, asyncio.Event()
            news.set()  # wakes every poll waiting on this generation

    async def _scoped(self, unit_ids: frozenset[int], since: int) -> Changes:
        """The officer's cases with a submission after ``since``, and the new cursor."""
        async with self._sessions() as db:
            high = int(await db.scalar(select(func.coalesce(func.max(Submission.id), 0))) or 0)
            rows = (await db.execute(
                select(Submission.id, Submission.case_id, Submission.raises_alert, Unit.slug)
                .join(Case, Case.id == Submission.case_id).join(Unit, Unit.id == Case.unit_id)
                .where(Submission.id > since, Submission.id <= high, Case.unit_id.in_(unit_ids))
                .order_by(Submission.id)
            )).all() if unit_ids and since < high else []
        self._raise_high(high)
        if since > high:
            return Changes(cursor=high, reset=True)
        cases: list[int] = []
        alerting: dict[str, set[int]] = defaultdict(set)
        cursor = high
        for sub_id, case_id, raises_alert, slug in rows:
            if case_id not in cases:
                if len(cases) == MAX_CASES:
                    cursor = sub_id - 1  # the rest in the next answer
                    break
                cases.append(case_id)
            if raises_alert:
                alerting[slug].add(case_id)
        return Changes(cursor=cursor, cases=sorted(cases),
                       counts={slug: len(ids) for slug, ids in sorted(alerting.items())})

    # -- the shared ticker ---------------------------------------------------------------------

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._run_ticker(), name="cpcp-feed-ticker")

    async def _run_ticker(self) -> None:
        # One database check per tick for all waiting polls; ends when nobody waits.
        while self._waiting:
            await self._sleep(self._tick)
            if not self._waiting:
                break
            try:
                await self._fetch_high()
            except (SQLAlchemyError, OSError) as exc:  # the polls time out empty; the next tick retries
                log.warning("change feed: database check failed (%s)", type(exc).__name__)
            self.ticks += 1

    async def close(self) -> None:
        if self._ticker is not None and not self._ticker.done():
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        self._ticker = None
