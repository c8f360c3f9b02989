"""The response targets in the database: written by ``cpcp-admin deploy`` from the deployment
file's ``[targets]`` (audited when they change), read by the source app at intake and by the
alerter. Neither then needs the deployment file, which also holds alert URLs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit import AuditLog
from .models import ResponseTarget
from .targets import ResponseTargets

ESCALATE = "escalate_after"
DEFAULT = "default"


def _rows(targets: ResponseTargets) -> dict[str, int]:
    rows = {rule: int(span.total_seconds() // 60) for rule, span in targets.rules.items()}
    if targets.default is not None:
        rows[DEFAULT] = int(targets.default.total_seconds() // 60)
    if targets.escalate_after is not None:
        rows[ESCALATE] = int(targets.escalate_after.total_seconds() // 60)
    return rows


async def save_targets(audit: AuditLog, targets: ResponseTargets) -> bool:
    """Replace the stored targets with ``targets``; True (and one audit entry) if they changed."""
    wanted = _rows(targets)
    async with audit.transaction() as db:
        have = {r.rule: r.minutes for r in (await db.scalars(select(ResponseTarget))).all()}
        if have == wanted:
            return False
        await db.execute(delete(ResponseTarget))
        db.add_all(ResponseTarget(rule=rule, minutes=minutes) for rule, minutes in wanted.items())
        await audit.record(db, officer_id=None, action="targets_set", minutes=wanted, before=have)
    return True


async def read_targets(sessions: async_sessionmaker[AsyncSession]) -> ResponseTargets:
    async with sessions() as db:
        rows = {r.rule: dt.timedelta(minutes=r.minutes)
                for r in (await db.scalars(select(ResponseTarget))).all()}
    return ResponseTargets(default=rows.pop(DEFAULT, None), escalate_after=rows.pop(ESCALATE, None),
                           rules=rows)
