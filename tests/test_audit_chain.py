"""What ``cpcp-admin audit-verify`` reports for each way an audit log can be tampered with.

An admin acts on the report: which entry is the first bad one, how many were read, the head
to record. Each case checks the whole report, so a wrong count, head or entry id fails here.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cpcp.audit import GENESIS, AuditCheck, AuditLog
from cpcp.models import AuditEntry

from .schema import sessions_fixture  # noqa: F401 (the "sessions" fixture)

REMOVED = "an entry before this one was removed or altered"
ALTERED = "this entry was altered"


async def _three(audit: AuditLog) -> list[str]:
    await audit.append(officer_id=7, action="case.view", case="a")
    await audit.append(officer_id=None, action="officer.login_failed", handle="x")
    await audit.append(officer_id=7, action="case.status", case="a", status="closed")
    async with audit._sessions() as db:
        return list((await db.scalars(select(AuditEntry.entry_hash).order_by(AuditEntry.id))).all())


async def test_an_empty_log_verifies_with_the_genesis_head(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert await AuditLog(sessions=sessions).verify() == AuditCheck(True, 0, GENESIS)


async def test_an_intact_log_verifies_and_reports_its_head(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions=sessions)
    hashes = await _three(audit)
    assert len(set(hashes)) == 3
    assert await audit.verify() == AuditCheck(True, 3, hashes[2])


@pytest.mark.parametrize(
    "change",
    [
        {"details": '{"case":"b"}'},
        {"action": "case.export"},
        {"officer_id": None},
        {"at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
    ],
    ids=["details", "action", "officer", "time"],
)
async def test_an_altered_entry_is_named(
    sessions: async_sessionmaker[AsyncSession], change: dict[str, object]
) -> None:
    audit = AuditLog(sessions=sessions)
    await _three(audit)
    async with sessions.begin() as db:
        await db.execute(update(AuditEntry).where(AuditEntry.id == 1).values(**change))
    assert await audit.verify() == AuditCheck(False, 1, GENESIS, 1, ALTERED)


async def test_a_removed_entry_is_found_at_its_successor(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions=sessions)
    hashes = await _three(audit)
    async with sessions.begin() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id == 2))
    assert await audit.verify() == AuditCheck(False, 2, hashes[0], 3, REMOVED)


async def test_removing_the_first_entry_is_found(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions=sessions)
    await _three(audit)
    async with sessions.begin() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id == 1))
    assert await audit.verify() == AuditCheck(False, 1, GENESIS, 2, REMOVED)


async def test_a_changed_link_is_found(sessions: async_sessionmaker[AsyncSession]) -> None:
    audit = AuditLog(sessions=sessions)
    hashes = await _three(audit)
    async with sessions.begin() as db:
        await db.execute(update(AuditEntry).where(AuditEntry.id == 2).values(prev_hash="f" * 64))
    assert await audit.verify() == AuditCheck(False, 2, hashes[0], 2, REMOVED)


async def test_rows_stored_out_of_id_order_are_read_in_id_order(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A restored backup may store rows in any physical order; the chain is the id order.
    audit = AuditLog(sessions=sessions)
    hashes = await _three(audit)
    async with sessions.begin() as db:
        rows = (await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
        copies = [(r.id, r.at, r.officer_id, r.action, r.details, r.prev_hash, r.entry_hash) for r in rows]
        await db.execute(delete(AuditEntry))
    async with sessions.begin() as db:
        for values in reversed(copies):
            db.add(AuditEntry(id=values[0], at=values[1], officer_id=values[2], action=values[3],
                              details=values[4], prev_hash=values[5], entry_hash=values[6]))
            await db.flush()
    assert await audit.verify() == AuditCheck(True, 3, hashes[2])


async def test_entries_are_recorded_only_inside_a_transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    audit = AuditLog(sessions=sessions)
    async with sessions.begin() as db:
        with pytest.raises(RuntimeError, match=r"^audit entries are recorded inside AuditLog\.transaction\(\)$"):
            await audit.record(db, officer_id=None, action="x")
    async with audit.transaction() as db:
        await audit.record(db, officer_id=7, action="case.view", case="a")
        await audit.record(db, officer_id=7, action="case.view", case="b")
    async with sessions() as db:
        entries = (await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
    assert [e.prev_hash for e in entries] == [GENESIS, entries[0].entry_hash]
    assert [e.details for e in entries] == ['{"case":"a"}', '{"case":"b"}']
