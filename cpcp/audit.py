"""The hash-chained audit log of officer actions.

Each entry stores the hash of the one before it and its own hash over (previous hash, time,
officer, action, details). Altering or deleting an entry breaks every hash after it; ``verify``
finds the first broken entry. ``prev_hash`` is unique, so the chain cannot fork. Deleting the
newest entries is only visible against a head hash kept elsewhere: ``verify`` returns the head
so an admin can record it (``cpcp-admin audit-verify --expect-head``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .models import AuditEntry

GENESIS = "0" * 64


def _entry_hash(prev_hash: str, at: dt.datetime, officer_id: int | None, action: str, details: str) -> str:
    material = json.dumps(
        [prev_hash, at.astimezone(dt.UTC).isoformat(timespec="seconds"), officer_id, action, details],
        separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditCheck:
    ok: bool
    entries: int
    head: str
    first_bad_id: int | None = None
    problem: str | None = None


class AuditLog:
    def __init__(self, *, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # Audited transactions are serialised in this process (see transaction()); the unique
        # prev_hash makes a concurrent writer in another process fail instead of forking.
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A write transaction that may record audit entries. Held under this process's lock
        until it commits, so the next one reads this one's entry as its predecessor."""
        async with self._lock, self._sessions.begin() as db:
            yield db

    async def record(self, db: AsyncSession, *, officer_id: int | None, action: str, **details: Any) -> None:
        """Append an entry inside a ``transaction()`` (the action and its record commit
        together or not at all). Details must never hold tip or reply content."""
        if not self._lock.locked():
            raise RuntimeError("audit entries are recorded inside AuditLog.transaction()")
        last = await db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
        prev = last.entry_hash if last is not None else GENESIS
        at = dt.datetime.now(dt.UTC).replace(microsecond=0)
        body = json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        db.add(AuditEntry(at=at, officer_id=officer_id, action=action, details=body, prev_hash=prev,
                          entry_hash=_entry_hash(prev, at, officer_id, action, body)))
        await db.flush()

    async def append(self, *, officer_id: int | None, action: str, **details: Any) -> None:
        async with self.transaction() as db:
            await self.record(db, officer_id=officer_id, action=action, **details)

    async def verify(self) -> AuditCheck:
        prev = GENESIS
        count = 0
        async with self._sessions() as db:
            for entry in (await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all():
                count += 1
                if entry.prev_hash != prev:
                    return AuditCheck(False, count, prev, entry.id, "an entry before this one was removed or altered")
                expected = _entry_hash(entry.prev_hash, entry.at, entry.officer_id, entry.action, entry.details)
                if entry.entry_hash != expected:
                    return AuditCheck(False, count, prev, entry.id, "this entry was altered")
                prev = entry.entry_hash
        return AuditCheck(True, count, prev)
