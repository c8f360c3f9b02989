"""A bare schema on the test database (SQLite or PostgreSQL), for core tests that need tables
but not a whole deployment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cpcp.db import make_engine, make_sessionmaker
from cpcp.models import Base, Officer


@pytest.fixture(name="sessions")
async def sessions_fixture(database_url: str, tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The schema, with officer 7 for audit entries that name an officer."""
    (tmp_path / "data").mkdir(exist_ok=True)
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    maker = make_sessionmaker(engine)
    async with maker.begin() as db:
        db.add(Officer(id=7, handle="officer-7", display_name="Officer 7", fingerprint="F" * 40))
    yield maker
    await engine.dispose()
