"""Deleting the cases a retention policy says are due (``cpcp-admin retention``).

A case goes whole: its submissions and documents, replies, sealed identity, disclosure
requests (with any re-encrypted details), labels and other metadata, and its source: the
lookup id and the reply key pair. A source has one case, so the codename then opens nothing;
a returning source is told what any unknown codename is told. That is what a SecureDrop admin
expects of a deleted source, and the only honest choice: a "this case was removed" page would
need the codename's lookup id kept, a record that this codename once sent something.

Order, for a crash at any point: the rows and the one audit entry commit together in one
transaction (the case is re-read and re-checked there, and locked before anything is read of
it: a message or a change arriving meanwhile keeps it); then the files and the reply key go.
A crash after the commit leaves ciphertext no row refers to, and a reply key no source has:
``Store.sweep`` (at every start of the apps and at the end of every run here) and
``sweep_reply_keys`` remove those. Files first would instead leave rows pointing at nothing,
shown to officers as broken.

The audit entries of officers' earlier actions on the case stay: they hold ids, never content,
and removing them would break the chain.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit import AuditLog
from .cases import Cases
from .models import (
    Case,
    CaseStatus,
    DisclosureRequest,
    Document,
    DocumentRole,
    Reply,
    SealedIdentity,
    Source,
    Submission,
    Unit,
)
from .pgp import Keyring
from .retention import RetentionPolicy, due_rule
from .store import Store

AUDIT_ACTION = "retention_delete"
# A reply key is made a moment before its source's row commits: only older ones are orphans.
KEY_GRACE_SECONDS = 3600.0


@dataclass(frozen=True)
class Due:
    case_id: int
    unit: str
    rule: str


@dataclass(frozen=True)
class Removed:
    """What went with one case: counts only, never content."""

    case_id: int
    unit: str
    rule: str
    submissions: int
    messages: int
    files: int
    replies: int
    sealed_identity: int
    disclosure_requests: int
    objects: int
    bytes: int


@dataclass(frozen=True)
class PurgeReport:
    removed: tuple[Removed, ...]
    kept_after_recheck: int
    swept_objects: int
    swept_keys: int
    failed: tuple[int, ...] = ()


_CANDIDATE = (select(Case.id, Unit.slug, Case.status, Case.spam, Case.updated_at)
              .join(Unit, Case.unit_id == Unit.id))


async def due_cases(sessions: async_sessionmaker[AsyncSession], policy: RetentionPolicy,
                    now: dt.datetime) -> list[Due]:
    """The cases due at ``now``, oldest id first. Reads only."""
    if policy.keeps_forever:
        return []
    async with sessions() as db:
        rows = (await db.execute(_CANDIDATE.where(Case.spam | (Case.status == CaseStatus.CLOSED)).order_by(Case.id))).all()
    due = []
    for case_id, slug, status, spam, updated_at in rows:
        rule = due_rule(policy.rules_for(slug), status=status, spam=spam, updated_at=updated_at, now=now)
        if rule is not None:
            due.append(Due(case_id=case_id, unit=slug, rule=rule))
    return due


class Purger:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession], audit: AuditLog, store: Store,
                 source_keys: Keyring, cases: Cases) -> None:
        self._sessions = sessions
        self._cases = cases
        self._audit = audit
        self._store = store
        self._source_keys = source_keys

    async def purge(self, policy: RetentionPolicy, now: dt.datetime) -> PurgeReport:
        removed: list[Removed] = []
        kept = 0
        failed: list[int] = []
        for due in await due_cases(self._sessions, policy, now):
            try:
                done = await self.purge_case(due.case_id, policy, now)
            except DBAPIError:
                # Rolled back whole (e.g. another process's audit entry took the same place in
                # the chain, or SQLite stayed locked): the next run tries again.
                failed.append(due.case_id)
                continue
            if done is None:
                kept += 1
            else:
                removed.append(done)
        swept = await self.sweep_objects()
        keys = await self.sweep_reply_keys()
        return PurgeReport(tuple(removed), kept, swept, keys, tuple(failed))

    async def purge_case(self, case_id: int, policy: RetentionPolicy, now: dt.datetime) -> Removed | None:
        """Delete one case if it is (still) due; None if it is not or is gone already."""
        async with self._audit.transaction() as db:
            row = (await db.execute(
                _CANDIDATE.add_columns(Case.public_id, Case.source_id)
                .where(Case.id == case_id).with_for_update(of=Case)
            )).one_or_none()
            if row is None:
                return None
            _, slug, status, spam, updated_at, public_id, source_id = row
            rule = due_rule(policy.rules_for(slug), status=status, spam=spam, updated_at=updated_at, now=now)
            if rule is None:
                return None
            # The first write: on SQLite it takes the database's write lock (the read above
            # ran outside any transaction), on PostgreSQL the row is locked already. Changed
            # in between (a message, an officer reopening it): not this run's to delete.
            guard = await db.execute(
                update(Case).where(Case.id == case_id, Case.updated_at == updated_at,
                                   Case.status == status, Case.spam == spam)
                .values(updated_at=Case.updated_at))
            if getattr(guard, "rowcount", 0) != 1:
                return None
            fingerprint = await db.scalar(
                select(Source.reply_key_fingerprint).where(Source.id == source_id))
            objects, counts = await self._delete_rows(db, case_id)
            # One case per source (cases.source_id is unique): the source goes with it.
            await db.execute(delete(Source).where(
                Source.id == source_id, ~select(Case.id).where(Case.source_id == source_id).exists()))
            done = Removed(case_id=case_id, unit=slug, rule=rule, objects=len(objects), **counts)
            await self._audit.record(db, officer_id=None, action=AUDIT_ACTION, case=case_id, unit=slug,
                                     rule=rule, objects=len(objects), **counts)
        # Committed: from here on a crash leaves only what the sweeps remove.
        await asyncio.to_thread(self._remove_files, objects, public_id)
        if fingerprint is not None:
            await asyncio.to_thread(self._source_keys.forget_key, fingerprint)
        return done

    async def _delete_rows(self, db: AsyncSession, case_id: int) -> tuple[list[str], dict[str, int]]:
        docs = (await db.execute(
            select(Document.object_name, Document.size, Document.role)
            .join(Submission, Document.submission_id == Submission.id)
            .where(Submission.case_id == case_id)
        )).all()
        replies = (await db.execute(
            select(Reply.object_name, Reply.size).where(Reply.case_id == case_id))).all()
        sealed = (await db.execute(
            select(SealedIdentity.object_name, SealedIdentity.size)
            .where(SealedIdentity.case_id == case_id))).all()
        disclosures = (await db.execute(
            select(DisclosureRequest.object_name, DisclosureRequest.size)
            .where(DisclosureRequest.case_id == case_id))).all()
        submissions = await db.scalar(select(func.count(Submission.id)).where(Submission.case_id == case_id))
        pairs: list[tuple[str | None, int | None]] = [
            *((d.object_name, d.size) for d in docs), *((r.object_name, r.size) for r in replies),
            *((r.object_name, r.size) for r in sealed), *((r.object_name, r.size) for r in disclosures)]
        objects = [(name, size or 0) for name, size in pairs if name]
        counts = {
            "submissions": int(submissions or 0),
            "messages": sum(1 for d in docs if d.role == DocumentRole.MESSAGE),
            "files": sum(1 for d in docs if d.role == DocumentRole.FILE),
            "replies": len(replies),
            "sealed_identity": len(sealed),
            "disclosure_requests": len(disclosures),
            "bytes": sum(size for _, size in objects),
        }
        in_case = select(Submission.id).where(Submission.case_id == case_id)
        await db.execute(delete(Document).where(Document.submission_id.in_(in_case)))
        for table in (Submission, Reply, SealedIdentity, DisclosureRequest):
            await db.execute(delete(table).where(table.case_id == case_id))
        await db.execute(delete(Case).where(Case.id == case_id))
        return [name for name, _ in objects], counts

    def _remove_files(self, names: list[str], public_id: str) -> None:
        for name in names:
            self._store.delete(name)
        self._store.remove_empty_case_folder(public_id)

    async def sweep_objects(self) -> int:
        """Objects no row refers to (past the store's grace period) and dead uploads' temp files."""
        referenced = await self._cases.referenced_objects()
        return await asyncio.to_thread(self._store.sweep, referenced)

    async def sweep_reply_keys(self, *, now: float | None = None) -> int:
        """Delete reply keys no source has: a run killed between its commit and the key's
        deletion, or a new source whose row never committed. The sources are read first, so
        a key made after that read is young and left alone."""
        async with self._sessions() as db:
            wanted = set((await db.scalars(select(Source.reply_key_fingerprint))).all())
        cutoff = (time.time() if now is None else now) - KEY_GRACE_SECONDS

        def sweep() -> int:
            created = self._source_keys.key_creation_times()
            orphans = [fpr for fpr, when in created.items() if fpr not in wanted and when < cutoff]
            for fpr in orphans:
                self._source_keys.forget_key(fpr)
            return len(orphans)

        return await asyncio.to_thread(sweep)
