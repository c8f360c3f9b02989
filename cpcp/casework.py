"""What an officer may do with cases, through the gateway: always scoped to the officer's
units, always audited. Content stays ciphertext; the server only moves it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit import AuditLog
from .errors import CPCPError, NotFound, StoreError
from .models import (
    Case,
    CasePriority,
    CaseStatus,
    Document,
    Officer,
    Reply,
    Source,
    Submission,
    Unit,
    unit_officers,
    utcnow_minute,
)
from .officers import OfficerIdentity
from .pgp import Keyring
from .store import Store
from .targets import is_overdue

MAX_LABELS = 10
MAX_LABEL_CHARS = 40


class ReplyRejected(CPCPError):
    """The upload is not an OpenPGP message to the source's key and a unit key."""


class BatchTooLarge(CPCPError):
    """A batch asks for a document, or for more bytes in all, than a batch may carry."""


class DocumentsMissing(NotFound):
    """Documents of a batch the officer cannot have: another unit's, unknown or gone."""

    def __init__(self, missing: list[int]) -> None:
        super().__init__(f"no such document: {', '.join(map(str, missing[:10]))}")
        self.missing = missing


@dataclass(frozen=True)
class CaseChanges:
    status: CaseStatus | None = None
    priority: CasePriority | None = None
    labels: list[str] | None = None
    assignee_id: int | None = None
    unassign: bool = False
    spam: bool | None = None


def case_summary(case: Case, now: dt.datetime | None = None) -> dict[str, Any]:
    """Metadata only: what docs/architecture.md lets the server know in clear. ``now``
    decides ``overdue`` (default: the clock)."""
    when = now or dt.datetime.now(dt.UTC)
    return {
        "id": case.id,
        "public_id": case.public_id,
        "unit": case.unit.slug,
        "status": case.status.value,
        "priority": case.priority.value,
        "labels": list(case.labels or []),
        "assignee": case.assignee_id,
        "spam": case.spam,
        "identity_sealed": case.sealed_identity is not None,
        "received_at": case.received_at.isoformat(),
        "updated_at": case.updated_at.isoformat(),
        "reply_due_at": case.reply_due_at.isoformat() if case.reply_due_at else None,
        "overdue": is_overdue(reply_due_at=case.reply_due_at, replied=bool(case.replies),
                              closed=case.status == CaseStatus.CLOSED, spam=case.spam, now=when),
        "submissions": [
            {
                "id": s.id,
                "received_at": s.received_at.isoformat(),
                "raises_alert": s.raises_alert,
                "documents": [{"id": d.id, "role": d.role.value, "size": d.size} for d in s.documents],
            }
            for s in case.submissions
        ],
        "replies": [
            {"id": r.id, "sent_at": r.sent_at.isoformat(), "size": r.size,
             "deleted_by_source": r.deleted_by_source}
            for r in case.replies
        ],
    }


class Casework:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        store: Store,
        source_keys: Keyring,
        officer_keys: Keyring,
        audit: AuditLog,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._source_keys = source_keys
        self._officer_keys = officer_keys
        self._audit = audit
        # What "overdue" is measured against; tests set another clock.
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    async def _case(self, db: AsyncSession, officer: OfficerIdentity, case_id: int) -> Case:
        case = await db.get(Case, case_id)
        # Another unit's case is reported exactly like a missing one.
        if case is None or case.unit_id not in officer.unit_ids:
            raise NotFound("no such case")
        return case

    async def units(self, officer: OfficerIdentity) -> list[dict[str, Any]]:
        async with self._sessions() as db:
            units = (await db.scalars(select(Unit).where(Unit.id.in_(officer.unit_ids)).order_by(Unit.id))).all()
            return [
                {"slug": u.slug, "kind": u.kind.value, "name_en": u.name_en, "name_hi": u.name_hi,
                 "officers": [{"id": o.id, "handle": o.handle, "name": o.display_name,
                               "fingerprint": o.fingerprint} for o in u.officers if o.active]}
                for u in units
            ]

    async def officer_public_key(self, officer: OfficerIdentity, fingerprint: str) -> str:
        """A key of an officer of one of your units; a custodian may have any officer's key
        (to re-encrypt a disclosure to its requester), and everyone the custodians' keys."""
        async with self._sessions() as db:
            query = select(Officer.id).where(Officer.fingerprint == fingerprint, Officer.active)
            if not officer.is_custodian:
                in_units = select(unit_officers.c.officer_id).where(
                    unit_officers.c.unit_id.in_(officer.unit_ids))
                query = query.where(Officer.is_custodian | Officer.id.in_(in_units))
            known = await db.scalar(query)
        if known is None:
            raise NotFound("no such officer key")
        return await asyncio.to_thread(self._officer_keys.export_public_key, fingerprint)

    async def list_cases(self, officer: OfficerIdentity, *, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        return (await self.cases_page(officer, after_id=after_id, limit=limit))[0]

    async def cases_page(self, officer: OfficerIdentity, *, after_id: int = 0,
                         limit: int = 500) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` cases after ``after_id``, and whether more follow: one row more is
        read to know, so a last page that is exactly full offers no empty page after it."""
        async with self._sessions() as db:
            cases = (await db.scalars(
                select(Case).where(Case.unit_id.in_(officer.unit_ids), Case.id > after_id)
                .order_by(Case.id).limit(limit + 1)
            )).all()
            return [case_summary(c, self.clock()) for c in cases[:limit]], len(cases) > limit

    async def get_case(self, officer: OfficerIdentity, case_id: int) -> dict[str, Any]:
        async with self._sessions() as db:
            return case_summary(await self._case(db, officer, case_id), self.clock())

    async def document_path(self, officer: OfficerIdentity, document_id: int) -> Path:
        # One scoped query, not whole cases: a desk's first sync asks this thousands of times.
        async with self._audit.transaction() as db:
            row = (await db.execute(
                select(Document.object_name, Case.id)
                .join(Submission, Document.submission_id == Submission.id)
                .join(Case, Submission.case_id == Case.id)
                .where(Document.id == document_id, Case.unit_id.in_(officer.unit_ids))
            )).one_or_none()
            if row is None:
                raise NotFound("no such document")
            object_name, case_id = row
            await self._audit.record(db, officer_id=officer.id, action="download_document",
                                     case=case_id, document=document_id)
            return self._store.path(object_name)

    async def document_paths(self, officer: OfficerIdentity, document_ids: list[int], *,
                             max_size: int, max_total: int) -> dict[int, Path]:
        """Several documents at once, with one audit entry naming them all: a desk's first
        sync after a busy festival asks for thousands of small messages, and one audited
        commit per message bound it to ~120 a second (bench/desk_sync.py).

        All or nothing, and nothing recorded otherwise: ids that are not the officer's to see
        or whose object is gone raise :class:`DocumentsMissing` naming them (each would be a
        404 alone too); one larger than ``max_size``, or more than ``max_total`` bytes in all,
        :class:`BatchTooLarge`."""
        ids = sorted(set(document_ids))
        async with self._sessions() as db:  # a read: the audit lock is taken only to record
            rows = (await db.execute(
                select(Document.id, Document.object_name, Document.size, Case.id)
                .join(Submission, Document.submission_id == Submission.id)
                .join(Case, Submission.case_id == Case.id)
                .where(Document.id.in_(ids), Case.unit_id.in_(officer.unit_ids))
            )).all()
        found = {doc_id: (object_name, size, case_id) for doc_id, object_name, size, case_id in rows}
        too_large = [i for i in ids if i in found and found[i][1] > max_size]
        if too_large:
            raise BatchTooLarge(f"larger than {max_size} bytes, download alone: "
                                f"{', '.join(map(str, too_large[:10]))}")
        if sum(size for _, size, _ in found.values()) > max_total:
            raise BatchTooLarge(f"more than {max_total} bytes in one batch")
        paths: dict[int, Path] = {}
        for doc_id, (object_name, _, _) in found.items():
            try:
                paths[doc_id] = self._store.path(object_name)
            except StoreError:
                continue  # a damaged name: missing, as its single download would be
        present = await asyncio.to_thread(lambda: {i for i, path in paths.items() if path.exists()})
        missing = [i for i in ids if i not in present]
        if missing:
            raise DocumentsMissing(missing)
        async with self._audit.transaction() as db:
            await self._audit.record(db, officer_id=officer.id, action="download_documents",
                                     cases=sorted({case_id for _, _, case_id in found.values()}),
                                     documents=ids)
        return paths

    async def reply_path(self, officer: OfficerIdentity, reply_id: int) -> Path:
        async with self._sessions() as db:
            reply = await db.get(Reply, reply_id)
            if reply is None or reply.object_name is None:
                raise NotFound("no such reply")
            await self._case(db, officer, reply.case_id)
            return self._store.path(reply.object_name)

    async def source_key(self, officer: OfficerIdentity, case_id: int) -> tuple[str, str]:
        """The source's public reply key (fingerprint, armored)."""
        async with self._sessions() as db:
            case = await self._case(db, officer, case_id)
            source = await db.get(Source, case.source_id)
            assert source is not None
        return source.reply_key_fingerprint, await self._reply_public_key(source)

    async def _reply_public_key(self, source: Source) -> str:
        """From the database, where the source app puts it; the gateway has no access to the
        source app's keyring. The keyring only for a source the source app has not published
        yet (made before the database held them, until the source app's next start)."""
        if source.reply_public_key is not None:
            return source.reply_public_key
        return await asyncio.to_thread(self._source_keys.export_public_key, source.reply_key_fingerprint)

    async def _reply_key_ids(self, source: Source) -> set[str]:
        """The key ids a reply to this source names; the public key is imported into this
        program's source keyring (public keys only, for the gateway) the first time."""
        fpr = source.reply_key_fingerprint
        ids = await asyncio.to_thread(self._source_keys.encryption_key_ids, fpr)
        if not ids and source.reply_public_key is not None:
            await asyncio.to_thread(self._source_keys.import_public_keys, source.reply_public_key)
            ids = await asyncio.to_thread(self._source_keys.encryption_key_ids, fpr)
        return ids

    async def add_reply(self, officer: OfficerIdentity, case_id: int, ciphertext: bytes) -> int:
        """Store a reply already encrypted at the desk. It must be an OpenPGP message to the
        source's key (or the source could not read it) and to a unit officer's key."""
        async with self._sessions() as db:
            case = await self._case(db, officer, case_id)
            source = await db.get(Source, case.source_id)
            assert source is not None
            unit_fprs = [o.fingerprint for o in case.unit.officers if o.active]
        recipients = await asyncio.to_thread(self._source_keys.message_recipients, ciphertext)
        if not recipients:
            raise ReplyRejected("not an encrypted OpenPGP message")
        source_ids = await self._reply_key_ids(source)
        if not recipients & source_ids:
            raise ReplyRejected("not encrypted to the source's reply key")
        unit_ids: set[str] = set()
        for fpr in unit_fprs:
            unit_ids |= await asyncio.to_thread(self._officer_keys.encryption_key_ids, fpr)
        if not recipients & unit_ids:
            raise ReplyRejected("not encrypted to any of the unit's officers")
        async with self._audit.transaction() as db:
            case = await self._case(db, officer, case_id)
            name = self._store.write_bytes(ciphertext, case_public_id=case.public_id, role="reply")
            try:
                reply = Reply(case_id=case.id, object_name=name, size=len(ciphertext))
                db.add(reply)
                case.updated_at = utcnow_minute()
                await db.flush()
                await self._audit.record(db, officer_id=officer.id, action="reply", case=case.id, reply=reply.id)
                return reply.id
            except BaseException:
                self._store.delete(name)
                raise

    async def update_case(self, officer: OfficerIdentity, case_id: int, changes: CaseChanges) -> dict[str, Any]:
        async with self._audit.transaction() as db:
            case = await self._case(db, officer, case_id)
            done: dict[str, Any] = {}
            if changes.status is not None and changes.status != case.status:
                case.status = changes.status
                done["status"] = changes.status.value
            if changes.priority is not None and changes.priority != case.priority:
                case.priority = changes.priority
                done["priority"] = changes.priority.value
            if changes.labels is not None:
                labels = sorted({lbl.strip() for lbl in changes.labels if lbl.strip()})
                if len(labels) > MAX_LABELS or any(len(lbl) > MAX_LABEL_CHARS for lbl in labels):
                    raise CPCPError(f"at most {MAX_LABELS} labels of {MAX_LABEL_CHARS} characters")
                if labels != list(case.labels or []):
                    case.labels = labels
                    done["labels"] = labels
            if changes.spam is not None and changes.spam != case.spam:
                # Reversible and audited; later messages of a spam case raise no alert.
                case.spam = changes.spam
                done["spam"] = changes.spam
            if changes.unassign:
                if case.assignee_id is not None:
                    case.assignee_id = None
                    done["assignee"] = None
            elif changes.assignee_id is not None and changes.assignee_id != case.assignee_id:
                member = await db.scalar(
                    select(Officer.id)
                    .join(unit_officers, unit_officers.c.officer_id == Officer.id)
                    .where(Officer.id == changes.assignee_id, Officer.active,
                           unit_officers.c.unit_id == case.unit_id)
                )
                if member is None:
                    raise NotFound("no such officer in this unit")
                case.assignee_id = member
                done["assignee"] = member
            if done:
                case.updated_at = utcnow_minute()
                await self._audit.record(db, officer_id=officer.id, action="update_case", case=case.id, **done)
            await db.flush()
            return case_summary(case, self.clock())

    async def record(self, officer: OfficerIdentity, case_id: int, action: str, **details: Any) -> None:
        """A desk-side action the server could not see (e.g. an export), for the audit log."""
        async with self._audit.transaction() as db:
            case = await self._case(db, officer, case_id)
            await self._audit.record(db, officer_id=officer.id, action=action, case=case.id, **details)
