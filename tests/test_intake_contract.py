"""Intake's promises at the edges: the size and file-count limits to the byte, and that a tip
is stored whole or leaves nothing (no temp file, no object, no row) whichever way it ends.

A limit off by one, or an aborted draft that keeps one temp file, passes the happy-path app
tests; here each edge is checked with real gpg, the real store and the database.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from cpcp.cases import UnitView
from cpcp.codenames import generate_codename
from cpcp.errors import EncryptionFailed, SubmissionRejected
from cpcp.intake import Draft, Intake
from cpcp.models import Document, Submission
from cpcp.services import CoreServices

from .conftest import FPR, gpg_decrypt


def _intake(core: CoreServices, *, max_bytes: int = 10_000, max_files: int = 2) -> Intake:
    return Intake(store=core.store, keyring=core.officer_keys, cases=core.cases,
                  max_bytes=max_bytes, max_files=max_files)


def _temp_files(core: CoreServices) -> list[Path]:
    return [p for p in core.store.tmp.rglob("*") if p.is_file()]


async def _rows(core: CoreServices) -> tuple[int, int]:
    async with core.sessions() as db:
        return (int(await db.scalar(select(func.count()).select_from(Submission)) or 0),
                int(await db.scalar(select(func.count()).select_from(Document)) or 0))


async def _unit(core: CoreServices) -> UnitView:
    return await core.cases.unit_by_slug("ps-sadar-bazar")


async def test_a_draft_encrypts_to_the_units_officers_and_oversight(core: CoreServices) -> None:
    unit = await _unit(core)
    draft = core.intake.draft(unit)
    assert set(draft.recipients) == {FPR["officer-a"], FPR["oversight"]}
    assert (draft.max_bytes, draft.max_files) == (2097152, 20)  # from the test deployment


async def test_the_byte_limit_holds_to_the_byte(core: CoreServices, officer_gnupg: Path) -> None:
    """The limit is on files, as the form says ("500 MB in total"): the tip's own text and the
    file list have their own limits and never push a file of exactly the limit over it."""
    unit = await _unit(core)
    login = await core.sources.create(generate_codename())
    async with _intake(core, max_bytes=6).draft(unit) as draft:
        await draft.open_file("a.bin", "application/octet-stream")
        await draft.write_file(b"abc")
        await draft.write_file(b"def")
        await draft.add_message({"text": "x" * 10_000})
        assert draft.received_bytes == 6
        await draft.commit(source_id=login.source_id, unit=unit)
    assert await _rows(core) == (1, 2)
    with pytest.raises(SubmissionRejected) as err:
        async with _intake(core, max_bytes=5).draft(unit) as draft:
            await draft.open_file("a.bin", "application/octet-stream")
            await draft.write_file(b"abcdef")
            await draft.add_message({})
    assert (err.value.reason, err.value.status) == ("too_large", 413)
    assert _temp_files(core) == [] and await _rows(core) == (1, 2)


async def test_a_file_chunk_over_the_limit_is_refused_at_once(core: CoreServices) -> None:
    unit = await _unit(core)
    with pytest.raises(SubmissionRejected) as err:
        async with _intake(core, max_bytes=5).draft(unit) as draft:
            await draft.open_file("a.bin", "application/octet-stream")
            await draft.write_file(b"12345")
            assert draft.received_bytes == 5
            await draft.write_file(b"6")
    assert (err.value.reason, err.value.status) == ("too_large", 413)
    assert _temp_files(core) == []


async def test_the_file_count_limit_holds_exactly(core: CoreServices) -> None:
    unit = await _unit(core)
    login = await core.sources.create(generate_codename())
    async with _intake(core, max_files=2).draft(unit) as draft:
        await draft.open_file("1.txt", "text/plain")
        await draft.open_file("2.txt", "text/plain")  # closes the first
        with pytest.raises(SubmissionRejected) as err:
            await draft.open_file("3.txt", "text/plain")
        assert (err.value.reason, err.value.status) == ("too_many_files", 413)
        assert [f.name for f in draft.files] == ["1.txt", "2.txt"]
        await draft.add_message({"text": "two files"})
        await draft.commit(source_id=login.source_id, unit=unit)
    assert await _rows(core) == (1, 3)
    assert _temp_files(core) == []


async def test_files_are_streamed_into_their_own_objects(core: CoreServices, officer_gnupg: Path) -> None:
    unit = await _unit(core)
    login = await core.sources.create(generate_codename())
    async with core.intake.draft(unit) as draft:
        await draft.open_file("a.txt", "text/plain")
        await draft.write_file(b"first ")
        await draft.write_file(b"file")
        await draft.open_file("b.txt", "text/plain")
        await draft.write_file(b"second")
        assert [f.size for f in draft.files] == [10, 6]
        await draft.close_file()
        await draft.close_file()  # nothing open: nothing to do
        await draft.add_message({"text": "t"})
        assert len(draft.objects) == 3
        submission_id = await draft.commit(source_id=login.source_id, unit=unit)
        assert draft.objects == []
    async with core.sessions() as db:
        docs = (await db.scalars(select(Document).where(Document.submission_id == submission_id)
                                 .order_by(Document.id))).all()
    plain = [gpg_decrypt(officer_gnupg, core.store.read(d.object_name)) for d in docs]
    assert plain[1:] == [b"first file", b"second"]
    assert b'"size": 10' in plain[0] and b'"size": 6' in plain[0]


async def test_commit_closes_a_file_still_open(core: CoreServices, officer_gnupg: Path) -> None:
    unit = await _unit(core)
    login = await core.sources.create(generate_codename())
    draft = core.intake.draft(unit)
    await draft.add_message({"text": "first the message"})
    await draft.open_file("late.txt", "text/plain")
    await draft.write_file(b"late")
    submission_id = await draft.commit(source_id=login.source_id, unit=unit)
    assert draft._open is None and _temp_files(core) == []
    async with core.sessions() as db:
        docs = (await db.scalars(select(Document).where(Document.submission_id == submission_id)
                                 .order_by(Document.id))).all()
    assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == b"late"


async def test_an_abandoned_draft_leaves_nothing(core: CoreServices) -> None:
    unit = await _unit(core)
    async with core.intake.draft(unit) as draft:
        await draft.open_file("a.txt", "text/plain")
        await draft.write_file(b"x" * 1000)
        await draft.open_file("b.txt", "text/plain")
        await draft.write_file(b"y")  # b.txt's gpg is still running when the draft ends
        assert len(_temp_files(core)) == 2
    assert draft.objects == [] and draft._open is None
    assert _temp_files(core) == [] and list(core.store.object_names()) == []
    assert await _rows(core) == (0, 0)
    await draft.abort()  # again: harmless


async def test_a_failing_commit_leaves_nothing(core: CoreServices) -> None:
    unit = await _unit(core)
    async with core.intake.draft(unit) as draft:
        await draft.add_message({"text": "t"})
        with pytest.raises(IntegrityError):  # no such source: the rows cannot be written
            await draft.commit(source_id=999_999, unit=unit)
        assert draft.objects == []
    assert _temp_files(core) == [] and list(core.store.object_names()) == []
    assert await _rows(core) == (0, 0)


async def test_a_message_that_cannot_be_encrypted_leaves_nothing(core: CoreServices) -> None:
    draft = Draft(store=core.store, keyring=core.officer_keys, cases=core.cases,
                  recipients=["0" * 40], max_bytes=10_000, max_files=2)
    async with draft:
        with pytest.raises(EncryptionFailed):
            await draft.add_message({"text": "to nobody"})
    assert _temp_files(core) == []
