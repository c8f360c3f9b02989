"""The database rows of a backup (cpcp/dbdump.py): known answers for the persisted format,
and every value type read back as it was written."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cpcp.dbdump import SUPPORTED_TYPES, DumpError, decode_value, encode_row, parse_chunk, tables
from cpcp.models import CasePriority, CaseStatus

BY_NAME = {t.name: t for t in tables()}
AT = dt.datetime(2026, 12, 2, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))  # IST


def header(name: str) -> bytes:
    return json.dumps({"table": name, "columns": [c.name for c in BY_NAME[name].columns]},
                      separators=(",", ":")).encode() + b"\n"


def test_every_model_column_has_a_backup_encoding() -> None:
    """A new column of a type the backup cannot hold fails here, not in a 3 a.m. backup."""
    odd = [f"{t.name}.{c.name}: {c.type!r}" for t in tables() for c in t.columns
           if not isinstance(c.type, SUPPORTED_TYPES)]
    assert odd == []


def test_a_case_row_is_written_as_its_known_line_and_read_back() -> None:
    cases = BY_NAME["cases"]
    assert [c.name for c in cases.columns] == [
        "id", "public_id", "source_id", "unit_id", "status", "received_at", "updated_at",
        "assignee_id", "priority", "labels", "spam", "reply_due_at", "reminded_at", "escalated_at"]
    row = [7, "0b0e7c1e-3f5a-4c2e-9d61-6a1f0f2b9c10", 3, 2, CaseStatus.UNDER_REVIEW, AT, AT, None,
           CasePriority.HIGH, ["मेला", "traffic"], False, AT, None, None]
    line = encode_row(cases, row)
    assert line == (
        '[7,"0b0e7c1e-3f5a-4c2e-9d61-6a1f0f2b9c10",3,2,"under_review","2026-12-02T00:00:00+00:00",'
        '"2026-12-02T00:00:00+00:00",null,"high",["मेला","traffic"],false,'
        '"2026-12-02T00:00:00+00:00",null,null]\n').encode()
    table, rows = parse_chunk([header("cases"), line])
    assert table is cases
    assert rows == [dict(zip([c.name for c in cases.columns], row, strict=True))]
    assert rows[0]["received_at"].tzinfo == dt.UTC and rows[0]["status"] is CaseStatus.UNDER_REVIEW


def test_an_audit_row_keeps_its_time_to_the_second() -> None:
    """The audit chain hashes the time: it must come back as the same instant."""
    audit = BY_NAME["audit_log"]
    row = [1, dt.datetime(2026, 12, 2, 0, 1, 2, tzinfo=dt.UTC), None, "event_added", '{"event":1}',
           "0" * 64, "a" * 64]
    line = encode_row(audit, row)
    assert line == ('[1,"2026-12-02T00:01:02+00:00",null,"event_added","{\\"event\\":1}",'
                    f'"{"0" * 64}","{"a" * 64}"]\n').encode()
    _, rows = parse_chunk([header("audit_log"), line])
    assert rows[0]["at"] == row[1] and rows[0]["details"] == '{"event":1}'


def test_an_event_row_keeps_its_dates() -> None:
    events = BY_NAME["events"]
    row = [1, "Dussehra procession", "दशहरा जुलूस", "Ramlila ground", dt.date(2026, 10, 20),
           dt.date(2026, 10, 21), True]
    line = encode_row(events, row)
    assert line == '[1,"Dussehra procession","दशहरा जुलूस","Ramlila ground","2026-10-20","2026-10-21",true]\n'.encode()
    _, rows = parse_chunk([header("events"), line])
    assert list(rows[0].values()) == row


@pytest.mark.parametrize(("table", "column", "value"), [
    ("cases", "received_at", "2026-12-02T00:00:00"),  # no zone: which instant?
    ("cases", "id", True),
    ("cases", "public_id", 5),
    ("cases", "spam", 0),
    ("cases", "status", "lost"),
    ("events", "starts_on", 20261020),
])
def test_a_value_of_the_wrong_kind_is_refused(table: str, column: str, value: object) -> None:
    kind = BY_NAME[table].columns[column].type
    with pytest.raises(DumpError):
        decode_value(kind, value)


def test_a_chunk_of_another_release_or_table_is_refused() -> None:
    with pytest.raises(DumpError, match="columns"):
        parse_chunk([b'{"table":"events","columns":["id","title_en"]}\n'])
    with pytest.raises(DumpError, match="unknown table"):
        parse_chunk([b'{"table":"officer_passwords","columns":[]}\n'])
    with pytest.raises(DumpError, match="no header"):
        parse_chunk([])
    with pytest.raises(DumpError, match="values"):
        parse_chunk([header("events"), b"[1,2]\n"])
    with pytest.raises(DumpError, match="not JSON"):
        parse_chunk([header("events"), b"[1,\n"])
