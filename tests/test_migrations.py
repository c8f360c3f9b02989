"""Migrations are reviewed code: they must match the models and run both ways."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from cpcp.db import make_engine
from cpcp.migrate import downgrade, upgrade
from cpcp.models import Base


def _diff(database_url: str) -> list[object]:
    async def go() -> list[object]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            def compare(sync: Connection) -> list[object]:
                ctx = MigrationContext.configure(sync, opts={"compare_type": True})
                return list(compare_metadata(ctx, Base.metadata))
            result = await conn.run_sync(compare)
        await engine.dispose()
        return result
    return asyncio.run(go())


def _tables(database_url: str) -> set[str]:
    async def go() -> set[str]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        await engine.dispose()
        return names
    return asyncio.run(go())


def test_models_and_migrations_agree_and_round_trip(database_url: str, tmp_path: object) -> None:
    if database_url.startswith("sqlite"):
        (tmp_path / "data").mkdir()  # type: ignore[operator]
    upgrade(database_url)
    assert _diff(database_url) == []
    downgrade(database_url, "base")
    assert _tables(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert {"sources", "cases", "submissions", "documents", "replies", "units"} <= _tables(database_url)
