"""Cases: routing to units, recording submissions, replies and status.

Everything here works on metadata and object names; content is ciphertext the core cannot read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .errors import NotFound, SubmissionRejected
from .models import (
    Case,
    CaseStatus,
    DisclosureRequest,
    DisclosureStatus,
    Document,
    DocumentRole,
    Event,
    Officer,
    Reply,
    SealedIdentity,
    Submission,
    Unit,
    UnitKind,
    utcnow_minute,
)
from .store import PendingObject, Store


@dataclass(frozen=True)
class UnitView:
    id: int
    slug: str
    kind: UnitKind
    name_en: str
    name_hi: str
    officer_fingerprints: tuple[str, ...]

    def name(self, locale: str) -> str:
        return self.name_hi if locale == "hi" else self.name_en


@dataclass(frozen=True)
class EventView:
    id: int
    title_en: str
    title_hi: str
    place: str
    starts_on: dt.date
    ends_on: dt.date

    def title(self, locale: str) -> str:
        return self.title_hi if locale == "hi" else self.title_en


@dataclass(frozen=True)
class ReplyView:
    id: int
    sent_at: dt.datetime
    object_name: str


@dataclass(frozen=True)
class CaseView:
    id: int
    public_id: str
    unit: UnitView
    status: CaseStatus
    received_at: dt.datetime
    updated_at: dt.datetime
    submission_count: int
    replies: tuple[ReplyView, ...]
    # Contact details left with the tip are sealed; the day they were first disclosed to an
    # officer, if ever (the source is told, to the day: finer would help no one and say more).
    identity_sealed: bool = False
    identity_disclosed_on: dt.date | None = None


@dataclass(frozen=True)
class RecentActivity:
    """What a source sent in the last window: for the per-codename limits."""

    submissions: int
    files: int
    oldest: dt.datetime | None


def _unit_view(unit: Unit) -> UnitView:
    return UnitView(
        id=unit.id, slug=unit.slug, kind=unit.kind, name_en=unit.name_en, name_hi=unit.name_hi,
        officer_fingerprints=tuple(sorted(o.fingerprint for o in unit.officers if o.active)),
    )


class Cases:
    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], store: Store, oversight_fingerprint: str
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._oversight = oversight_fingerprint

    async def active_units(self) -> list[UnitView]:
        async with self._sessions() as db:
            units = (await db.scalars(select(Unit).where(Unit.active).order_by(Unit.id))).all()
            return [_unit_view(u) for u in units]

    async def open_events(self) -> list[EventView]:
        """Festivals, gatherings and processions the district asks feedback on."""
        async with self._sessions() as db:
            events = (await db.scalars(select(Event).where(Event.open).order_by(Event.starts_on))).all()
            return [EventView(id=e.id, title_en=e.title_en, title_hi=e.title_hi, place=e.place,
                              starts_on=e.starts_on, ends_on=e.ends_on) for e in events]

    async def unit_by_slug(self, slug: str) -> UnitView:
        async with self._sessions() as db:
            unit = await db.scalar(select(Unit).where(Unit.slug == slug, Unit.active))
            if unit is None:
                raise SubmissionRejected("unknown_unit")
            return _unit_view(unit)

    def recipients(self, unit: UnitView) -> list[str]:
        """A unit's designated officers and the district oversight key."""
        return sorted({*unit.officer_fingerprints, self._oversight})

    async def custodian_fingerprints(self) -> list[str]:
        """The keys contact details are sealed to: active custodians only, never the unit's
        and not the oversight key. Empty: the deployment offers no contact details."""
        async with self._sessions() as db:
            fprs = (await db.scalars(
                select(Officer.fingerprint).where(Officer.active, Officer.is_custodian)
            )).all()
        return sorted(fprs)

    async def recent_activity(self, source_id: int, *, since: dt.datetime) -> RecentActivity:
        """Submissions and files this source sent since ``since`` (received times are to the
        minute, so the window is too)."""
        async with self._sessions() as db:
            count, oldest = (await db.execute(
                select(func.count(Submission.id), func.min(Submission.received_at))
                .join(Case, Submission.case_id == Case.id)
                .where(Case.source_id == source_id, Submission.received_at >= since)
            )).one()
            files = await db.scalar(
                select(func.count(Document.id))
                .join(Submission, Document.submission_id == Submission.id)
                .join(Case, Submission.case_id == Case.id)
                .where(Case.source_id == source_id, Submission.received_at >= since,
                       Document.role == DocumentRole.FILE)
            )
        if isinstance(oldest, str):  # SQLite returns the aggregate of a typed column raw
            oldest = dt.datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        return RecentActivity(submissions=int(count or 0), files=int(files or 0), oldest=oldest)

    async def case_of_source(self, source_id: int) -> CaseView | None:
        async with self._sessions() as db:
            case = await db.scalar(select(Case).where(Case.source_id == source_id))
            if case is None:
                return None
            sealed = await db.scalar(select(SealedIdentity.id).where(SealedIdentity.case_id == case.id))
            disclosed = await db.scalar(
                select(func.min(DisclosureRequest.disclosed_at))
                .where(DisclosureRequest.case_id == case.id,
                       DisclosureRequest.status == DisclosureStatus.DISCLOSED)
            )
            if isinstance(disclosed, str):
                disclosed = dt.datetime.fromisoformat(disclosed)
            return CaseView(
                id=case.id, public_id=case.public_id, unit=_unit_view(case.unit),
                status=case.status, received_at=case.received_at, updated_at=case.updated_at,
                submission_count=len(case.submissions),
                replies=tuple(
                    ReplyView(id=r.id, sent_at=r.sent_at, object_name=r.object_name)
                    for r in case.replies
                    if not r.deleted_by_source and r.object_name
                ),
                identity_sealed=sealed is not None,
                identity_disclosed_on=disclosed.date() if disclosed is not None else None,
            )

    async def record_submission(
        self,
        *,
        source_id: int,
        unit: UnitView,
        objects: list[tuple[DocumentRole, PendingObject]],
        sealed: PendingObject | None = None,
        reply_target: dt.timedelta | None = None,
    ) -> int:
        """Move the finished ciphertexts into the store and record them in one transaction.
        ``sealed`` is the contact details' ciphertext (to the custodians), kept apart from the
        documents so no officer's sync can fetch it; a case keeps the first one it got.

        Objects are made durable before the commit; if the commit fails they are removed, so
        the tip is either wholly stored and acknowledged or not at all. ``reply_target``: how
        soon a new case's first reply is due (cpcp/targets.py); a follow-up keeps its case's.
        """
        committed: list[str] = []
        try:
            async with self._sessions.begin() as db:
                case = await db.scalar(select(Case).where(Case.source_id == source_id))
                if case is None:
                    now = utcnow_minute()
                    case = Case(source_id=source_id, unit_id=unit.id, received_at=now,
                                reply_due_at=now + reply_target if reply_target else None)
                    db.add(case)
                    await db.flush()
                else:
                    case.updated_at = utcnow_minute()
                # A spam case's further messages are kept but raise no alert.
                submission = Submission(case_id=case.id, raises_alert=not case.spam)
                db.add(submission)
                await db.flush()
                for role, pending in objects:
                    size = pending.size()
                    # fsync of a large file must not stall every other request on the loop.
                    name = await asyncio.to_thread(
                        self._store.commit, pending, case_public_id=case.public_id, role=role.value
                    )
                    committed.append(name)
                    db.add(Document(submission_id=submission.id, role=role, object_name=name, size=size))
                if sealed is not None:
                    had = await db.scalar(select(SealedIdentity.id).where(SealedIdentity.case_id == case.id))
                    if had is not None:
                        raise SubmissionRejected("contact_already")
                    size = sealed.size()
                    name = await asyncio.to_thread(
                        self._store.commit, sealed, case_public_id=case.public_id, role="sealed")
                    committed.append(name)
                    db.add(SealedIdentity(case_id=case.id, object_name=name, size=size))
                await db.flush()
                return submission.id
        except BaseException:
            for name in committed:
                self._store.delete(name)
            raise

    async def reply_ciphertext(self, source_id: int, reply_id: int) -> bytes:
        async with self._sessions() as db:
            reply = await self._own_reply(db, source_id, reply_id)
            assert reply.object_name is not None
            return self._store.read(reply.object_name)

    async def delete_reply(self, source_id: int, reply_id: int) -> None:
        """The source removes a reply: the ciphertext goes, a marker stays for the officers."""
        async with self._sessions.begin() as db:
            reply = await self._own_reply(db, source_id, reply_id)
            name = reply.object_name
            reply.deleted_by_source = True
            reply.object_name = None
        if name:
            self._store.delete(name)

    async def _own_reply(self, db: AsyncSession, source_id: int, reply_id: int) -> Reply:
        reply = await db.scalar(
            select(Reply)
            .join(Case, Reply.case_id == Case.id)
            .where(Reply.id == reply_id, Case.source_id == source_id, ~Reply.deleted_by_source)
        )
        if reply is None or reply.object_name is None:
            raise NotFound("no such reply")
        return reply

    async def referenced_objects(self) -> set[str]:
        async with self._sessions() as db:
            docs = (await db.scalars(select(Document.object_name))).all()
            replies = (await db.scalars(select(Reply.object_name).where(Reply.object_name.is_not(None)))).all()
            sealed = (await db.scalars(select(SealedIdentity.object_name))).all()
            disclosed = (await db.scalars(
                select(DisclosureRequest.object_name).where(DisclosureRequest.object_name.is_not(None))
            )).all()
        return {*docs, *(r for r in replies if r), *sealed, *(d for d in disclosed if d)}
