"""Content-free alerts and overdue reminders (``cpcp-alerts``; cpcp/alertconfig.py says who).

An alert says only "N new tips for <unit>" (and the same in Hindi): no content, kind, place,
case id or link. The new tips of a unit are gathered into one batch sent after a random
delay (uniform in [min_delay, max_delay], from the system's CSPRNG), so when an alert arrives
says little about when any one tip came in.

Each submission counted in a delivered alert is marked ``alerted`` in the same transaction that
audits the alert: a restart neither repeats nor loses one (a crash between delivery and that
commit repeats it once). A unit's floor (``alert_cursors``), set when the alerter first sees
it, keeps older submissions out.

A case with no officer reply by its ``reply_due_at`` is overdue: "N cases overdue for
<unit>" goes to the unit's head (else the unit's own alert URLs); still unanswered after
the escalation delay (the case's target, or ``[targets] escalate_after``), it goes to the
oversight. Each case passes each stage once (``reminded_at``, ``escalated_at``), and each
stage is an audit entry naming the cases and the rule; the text never names a case.

A failed delivery is retried with doubling back-off; units are sent to concurrently, so one
unit's dead mail server does not hold back another's alerts. Clock, sleep and randomness are
injected for the tests. This module reads the database and sends; it knows no request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import apprise
from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .alertconfig import AlertConfig
from .audit import AuditLog
from .models import AlertCursor, Case, CaseStatus, Reply, Submission, Unit
from .targets import describe
from .targetstore import read_targets

log = logging.getLogger("cpcp.alerts")

TITLE = "CPCP"


def new_tips_text(n: int, name_en: str, name_hi: str) -> str:
    en = f"{n} new tip for {name_en}" if n == 1 else f"{n} new tips for {name_en}"
    hi = f"{name_hi} के लिए {n} नई सूचना" if n == 1 else f"{name_hi} के लिए {n} नई सूचनाएँ"
    return f"{en}\n{hi}"


def overdue_text(n: int, name_en: str, name_hi: str) -> str:
    en = f"{n} case overdue for {name_en}" if n == 1 else f"{n} cases overdue for {name_en}"
    hi = f"{name_hi} का {n} मामला अतिदेय" if n == 1 else f"{name_hi} के {n} मामले अतिदेय"
    return f"{en}\n{hi}"


class Notifier(Protocol):
    async def send(self, urls: Sequence[str], title: str, body: str) -> bool: ...


class AppriseNotifier:
    """Apprise, one object per send: nothing of a URL outlives it."""

    async def send(self, urls: Sequence[str], title: str, body: str) -> bool:
        sender = apprise.Apprise()
        for url in urls:
            sender.add(url)
        return bool(await sender.async_notify(body=body, title=title))


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class _Pending:
    """A unit's batch (or a stage's retry): when it is next tried, and how often it failed."""

    at: dt.datetime
    failures: int = 0


@dataclass(frozen=True)
class _UnitRow:
    id: int
    slug: str
    name_en: str
    name_hi: str


class Alerter:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        audit: AuditLog,
        config: AlertConfig,
        notifier: Notifier | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        poll_seconds: float = 5.0,
        retry_seconds: float = 30.0,
        retry_max_seconds: float = 900.0,
    ) -> None:
        self._sessions, self._audit, self._config = sessions, audit, config
        self._notifier = notifier or AppriseNotifier()
        self._clock, self._sleep = clock, sleep
        self._rng = rng or secrets.SystemRandom()
        self._poll, self._retry, self._retry_max = poll_seconds, retry_seconds, retry_max_seconds
        self._batches: dict[int, _Pending] = {}  # unit id -> its next new-tips alert
        self._stages: dict[tuple[int, str], _Pending] = {}  # (unit id, stage) -> retry

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll until ``stop`` is set; a failing poll (database away) is logged and retried."""
        while stop is None or not stop.is_set():
            try:
                await self.run_once()
            except (OperationalError, OSError) as exc:
                log.warning("alerts: poll failed (%s); trying again", type(exc).__name__)
            await self._sleep(self._poll)

    async def run_once(self) -> None:
        now = self._clock()
        units = await self._units()
        await asyncio.gather(*(self._new_tips(unit, now) for unit in units
                               if self._config.for_unit(unit.slug).urls))
        await self._overdue(units, now)

    async def _units(self) -> list[_UnitRow]:
        async with self._sessions() as db:
            rows = (await db.scalars(select(Unit).where(Unit.active.is_(True)).order_by(Unit.id))).all()
            return [_UnitRow(u.id, u.slug, u.name_en, u.name_hi) for u in rows]

    # -- new tips -------------------------------------------------------------------------

    async def _new_tips(self, unit: _UnitRow, now: dt.datetime) -> None:
        ids = await self._pending_tips(unit)
        if not ids:
            return
        batch = self._batches.get(unit.id)
        if batch is None:
            cfg = self._config
            delay = self._rng.uniform(cfg.min_delay, cfg.max_delay)
            self._batches[unit.id] = batch = _Pending(now + dt.timedelta(seconds=delay))
        if now < batch.at:
            return
        body = new_tips_text(len(ids), unit.name_en, unit.name_hi)
        if not await self._deliver(self._config.for_unit(unit.slug).urls, body, unit, "new tips"):
            self._back_off(batch, now)
            return
        await self._audited(lambda db: self._mark_alerted(db, unit, ids))
        del self._batches[unit.id]

    async def _pending_tips(self, unit: _UnitRow) -> list[int]:
        """The unit's submissions that raise an alert and are not alerted for yet, above its
        floor. A unit seen for the first time gets its newest submission as the floor."""
        async with self._sessions.begin() as db:
            row = await db.get(AlertCursor, unit.id)
            if row is None:
                start = await db.scalar(select(func.max(Submission.id)).join(Case)
                                        .where(Case.unit_id == unit.id)) or 0
                db.add(AlertCursor(unit_id=unit.id, last_submission_id=start))
                return []
            return list((await db.scalars(
                select(Submission.id).join(Case)
                .where(Case.unit_id == unit.id, Submission.id > row.last_submission_id,
                       Submission.raises_alert.is_(True), Submission.alerted.is_(False))
                .order_by(Submission.id))).all())

    async def _mark_alerted(self, db: AsyncSession, unit: _UnitRow, ids: list[int]) -> None:
        await db.execute(update(Submission).where(Submission.id.in_(ids)).values(alerted=True))
        await self._audit.record(db, officer_id=None, action="alert_new_tips", unit=unit.slug,
                                 tips=len(ids), submissions=ids)

    # -- overdue ----------------------------------------------------------------------------

    @staticmethod
    def _unanswered(*columns: Any) -> Any:
        """Cases owing a first reply: due set, no reply at all, not closed, not spam."""
        return (select(*columns)
                .where(Case.reply_due_at.is_not(None), Case.spam.is_(False),
                       Case.status != CaseStatus.CLOSED,
                       ~exists().where(Reply.case_id == Case.id))
                .order_by(Case.id))

    async def _overdue(self, units: list[_UnitRow], now: dt.datetime) -> None:
        # Columns, not Case objects: this runs at every poll, and a Case loads its submissions.
        async with self._sessions() as db:
            due = (await db.execute(self._unanswered(
                Case.id, Case.unit_id, Case.received_at, Case.reply_due_at, Case.reminded_at)
                .where(Case.reply_due_at <= now, Case.escalated_at.is_(None)))).all()
        targets = await read_targets(self._sessions)  # as the last deploy left them
        by_unit = {u.id: u for u in units}
        remind: dict[int, list[tuple[int, str]]] = {}
        escalate: dict[int, list[tuple[int, str]]] = {}
        for case_id, unit_id, received, reply_due, reminded in due:
            assert reply_due is not None
            target = reply_due - received
            rule = f"first reply within {describe(target)}"
            if reminded is None:
                remind.setdefault(unit_id, []).append((case_id, rule))
                continue
            after = targets.escalation_delay(target)
            if now >= reply_due + after:
                escalate.setdefault(unit_id, []).append(
                    (case_id, f"{rule}, escalated {describe(after)} after"))
        jobs = [self._stage(by_unit[u], "reminder", found, now) for u, found in remind.items()
                if u in by_unit]
        jobs += [self._stage(by_unit[u], "escalation", found, now) for u, found in escalate.items()
                 if u in by_unit]
        await asyncio.gather(*jobs)

    async def _stage(self, unit: _UnitRow, stage: str, found: list[tuple[int, str]],
                     now: dt.datetime) -> None:
        retry = self._stages.get((unit.id, stage))
        if retry is not None and now < retry.at:
            return
        if stage == "reminder":
            recipient, urls = self._config.head_urls(unit.slug)
        else:
            recipient, urls = "oversight", self._config.oversight
        body = overdue_text(len(found), unit.name_en, unit.name_hi)
        # No one to tell is recorded too: the stage is passed, and the audit says so.
        if urls and not await self._deliver(urls, body, unit, stage):
            self._back_off(self._stages.setdefault((unit.id, stage), _Pending(now)), now)
            return
        self._stages.pop((unit.id, stage), None)
        ids = [case_id for case_id, _ in found]

        async def mark(db: AsyncSession) -> None:
            column = Case.reminded_at if stage == "reminder" else Case.escalated_at
            still = set((await db.scalars(
                self._unanswered(Case).where(Case.id.in_(ids), column.is_(None)))).all())
            for case in still:
                if stage == "reminder":
                    case.reminded_at = now
                else:
                    case.escalated_at = now
            kept = {c.id for c in still}
            await self._audit.record(
                db, officer_id=None, action=f"overdue_{stage}", unit=unit.slug,
                recipient=recipient, delivered=bool(urls),
                cases=[{"id": i, "rule": rule} for i, rule in found if i in kept])

        await self._audited(mark)

    # -- delivery ---------------------------------------------------------------------------

    async def _deliver(self, urls: Sequence[str], body: str, unit: _UnitRow, what: str) -> bool:
        try:
            ok = await self._notifier.send(urls, TITLE, body)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not stop the alerter
            log.warning("alerts: %s for %s raised %s", what, unit.slug, type(exc).__name__)
            return False
        if not ok:
            # Never the URL: it may hold a password.
            log.warning("alerts: %s for %s not delivered; will retry", what, unit.slug)
        return ok

    def _back_off(self, pending: _Pending, now: dt.datetime) -> None:
        pending.failures += 1
        wait = min(self._retry_max, self._retry * 2 ** (pending.failures - 1))
        pending.at = now + dt.timedelta(seconds=wait)

    async def _audited(self, work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """An audited write; another process appending at the same moment makes ours fail on
        the chain's unique ``prev_hash`` (or SQLite's lock), so it is tried again."""
        for attempt in range(5):
            try:
                async with self._audit.transaction() as db:
                    await work(db)
                return
            except (IntegrityError, OperationalError):
                if attempt == 4:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
