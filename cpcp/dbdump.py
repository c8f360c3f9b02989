"""The database as rows: one consistent snapshot out, the same rows back in, on either backend.

A backup holds the database as JSON lines, not as a SQLite file or a ``pg_dump``: one format
for both backends (a SQLite deployment's backup restores into PostgreSQL), no client binary
whose version must match the server, and every value goes through the model's own column type,
so an aware UTC time stays the same instant and the audit chain's hashes still verify.

A chunk of a table is one header line ``{"table": ..., "columns": [...]}`` and one JSON array
per row, in primary-key order. Values: None, booleans, integers and strings as themselves;
times as ISO 8601 in UTC (``2026-12-02T00:01:00+00:00``); dates as ``2026-12-02``; enums as
their stored value; JSON columns as their JSON. A column of any other type is refused, at
backup time and by a test, rather than written in a form nobody can read back.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Boolean, Date, Enum, Integer, String, Table, Text, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import TypeEngine

from .errors import CPCPError
from .models import Base, UTCDateTime

# A table's rows are cut into chunks of about this many bytes, so neither side holds a whole
# table (the audit log grows without bound) in memory.
CHUNK_BYTES = 4 * 1024 * 1024
# Bearer tokens are hashes of 8-hour credentials: a restored server makes officers log in again.
NOT_BACKED_UP = frozenset({"api_tokens"})


# The column types a backup can hold; a model column of another type fails a test.
SUPPORTED_TYPES = (UTCDateTime, Date, Enum, JSON, Boolean, Integer, String, Text)


class DumpError(CPCPError):
    """The database cannot be dumped or a dump cannot be loaded as it is."""


def tables() -> list[Table]:
    """Every table of the models, parents before children (the order rows are loaded in)."""
    return list(Base.metadata.sorted_tables)


def encode_value(kind: TypeEngine[Any], value: Any) -> Any:
    """A column value as JSON, by the column's type (see the module docstring)."""
    if value is None:
        return None
    if isinstance(kind, UTCDateTime):
        if not isinstance(value, dt.datetime) or value.tzinfo is None:
            raise DumpError(f"not an aware datetime: {value!r}")
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(kind, Date):
        return value.isoformat()
    if isinstance(kind, Enum):
        return str(getattr(value, "value", value))
    if isinstance(kind, JSON):
        return value
    if isinstance(kind, Boolean | Integer | String | Text):
        return value
    raise DumpError(f"no backup encoding for column type {kind!r}")


def decode_value(kind: TypeEngine[Any], value: Any) -> Any:
    """The inverse of ``encode_value``; a value of the wrong JSON type is refused."""
    try:
        return _decode(kind, value)
    except ValueError as exc:  # a malformed time or date, an unknown enum value
        raise DumpError(f"{value!r} cannot be a {kind!r}: {exc}") from exc


def _decode(kind: TypeEngine[Any], value: Any) -> Any:
    if value is None:
        return None
    expected: type | tuple[type, ...]
    if isinstance(kind, UTCDateTime):
        parsed = dt.datetime.fromisoformat(_str(value))
        if parsed.tzinfo is None:
            raise DumpError(f"time without a zone: {value!r}")
        return parsed.astimezone(dt.UTC)
    if isinstance(kind, Date):
        return dt.date.fromisoformat(_str(value))
    if isinstance(kind, Enum):
        enum_class = kind.enum_class
        return enum_class(_str(value)) if enum_class is not None else _str(value)
    if isinstance(kind, JSON):
        return value
    if isinstance(kind, Boolean):
        expected = bool
    elif isinstance(kind, Integer):
        if isinstance(value, bool):
            raise DumpError(f"boolean where an integer belongs: {value!r}")
        expected = int
    elif isinstance(kind, String | Text):
        expected = str
    else:
        raise DumpError(f"no backup encoding for column type {kind!r}")
    if not isinstance(value, expected):
        raise DumpError(f"{value!r} is not a {expected}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise DumpError(f"{value!r} is not a string")
    return value


@dataclass
class Chunk:
    """Some rows of one table, encoded: what one archive member holds."""

    table: str
    body: bytes
    rows: int


@dataclass
class DumpResult:
    """What a snapshot held, filled in while it is read."""

    rows: dict[str, int]
    object_names: set[str]  # store objects the rows refer to
    audit_entries: int = 0
    audit_head: str | None = None


def encode_row(table: Table, row: Sequence[Any]) -> bytes:
    """One row of ``table`` (values in column order) as its line of a chunk."""
    values = [encode_value(c.type, v) for c, v in zip(table.columns, row, strict=True)]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _header(table: Table) -> bytes:
    return json.dumps({"table": table.name, "columns": [c.name for c in table.columns]},
                      separators=(",", ":")).encode() + b"\n"


async def _begin_snapshot(conn: AsyncConnection) -> None:
    """Make every read on ``conn`` see one moment of the database."""
    if conn.dialect.name == "sqlite":
        # Python's sqlite3 starts no transaction for a SELECT: each would see a newer database.
        # An explicit BEGIN makes the first read fix the snapshot (WAL keeps it for us).
        await conn.exec_driver_sql("BEGIN")
    else:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))


async def dump(engine: AsyncEngine, result: DumpResult) -> AsyncGenerator[Chunk, None]:
    """Every table's rows from one snapshot, chunk by chunk; fills ``result`` as it goes.

    Every column named ``object_name`` names a store object (cpcp/models.py): those names are
    collected, so the backup copies exactly the objects this snapshot refers to.
    """
    async with engine.connect() as conn:
        await _begin_snapshot(conn)
        for table in tables():
            if table.name in NOT_BACKED_UP:
                continue
            names = [c.name for c in table.columns]
            where_object = names.index("object_name") if "object_name" in names else None
            order = list(table.primary_key.columns)
            body = bytearray(_header(table))
            count = 0
            result.rows[table.name] = 0
            rows = await conn.stream(select(table).order_by(*order))
            async for row in rows:
                if where_object is not None and row[where_object] is not None:
                    result.object_names.add(row[where_object])
                if table.name == "audit_log":
                    result.audit_entries += 1
                    result.audit_head = row[names.index("entry_hash")]
                body += encode_row(table, row)
                count += 1
                if len(body) >= CHUNK_BYTES:
                    yield Chunk(table.name, bytes(body), count)
                    result.rows[table.name] += count
                    body, count = bytearray(_header(table)), 0
            if count or result.rows[table.name] == 0:
                yield Chunk(table.name, bytes(body), count)
                result.rows[table.name] += count
        await conn.rollback()


def parse_chunk(lines: Iterable[bytes]) -> tuple[Table, list[dict[str, Any]]]:
    """A chunk's table and its rows, decoded and checked against the models' columns."""
    it = iter(lines)
    try:
        header = json.loads(next(it))
    except (StopIteration, ValueError) as exc:
        raise DumpError("a database chunk has no header line") from exc
    by_name = {t.name: t for t in tables()}
    table = by_name.get(str(header.get("table"))) if isinstance(header, dict) else None
    if table is None:
        raise DumpError(f"unknown table in the backup: {header!r}")
    columns = [c.name for c in table.columns]
    if header.get("columns") != columns:
        raise DumpError(f"table {table.name}: the backup's columns {header.get('columns')} are not "
                        f"this release's {columns}")
    types = [c.type for c in table.columns]
    rows = []
    for line in it:
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except ValueError as exc:
            raise DumpError(f"table {table.name}: a row is not JSON") from exc
        if not isinstance(values, list) or len(values) != len(columns):
            raise DumpError(f"table {table.name}: a row does not have {len(columns)} values")
        rows.append({n: decode_value(k, v) for n, k, v in zip(columns, types, values, strict=True)})
    return table, rows


async def count_rows(conn: AsyncConnection, table_names: Sequence[str]) -> dict[str, int]:
    by_name = {t.name: t for t in tables()}
    return {name: int(await conn.scalar(select(func.count()).select_from(by_name[name])) or 0)
            for name in table_names}


async def clear(conn: AsyncConnection) -> None:
    """Delete every row of every table, children first (inside the caller's transaction)."""
    for table in reversed(tables()):
        await conn.execute(table.delete())


async def insert(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(table.insert(), rows)


async def reset_sequences(conn: AsyncConnection) -> None:
    """PostgreSQL hands out ids from sequences: move each past the ids just loaded."""
    if conn.dialect.name != "postgresql":
        return  # SQLite's integer primary keys continue after the largest id by themselves
    for table in tables():
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, Integer):
            continue
        seq = await conn.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                {"t": table.name, "c": pk[0].name})
        if seq is None:
            continue
        await conn.execute(
            text(f'SELECT setval(:seq, COALESCE((SELECT MAX("{pk[0].name}") FROM "{table.name}"), 0) + 1, false)'),
            {"seq": seq},
        )
