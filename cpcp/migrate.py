"""Alembic, driven from code: the admin command and the tests run the same migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from .errors import ConfigError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Blocking: runs its own event loop."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


async def require_current_schema(engine: AsyncEngine, database_url: str) -> None:
    """Refuse to serve on a database older (or newer) than this code's migrations."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    async with engine.connect() as conn:
        current = await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
    if current != head:
        raise ConfigError(
            f"database schema is at {current or 'nothing'}, this code needs {head}: "
            "run 'cpcp-admin init' (it applies the migrations)"
        )
