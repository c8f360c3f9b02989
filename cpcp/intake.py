"""Intake: turning a tip into ciphertext objects as it arrives, then storing it all or nothing.

A Draft belongs to one request. Each file streams through its own gpg into a store temp file;
the structured message (answers, text, and the file list with each file's original name, which
is nowhere else) is encrypted last. Nothing is in the database
until ``commit``; ``abort`` (or any exception inside ``async with``) kills gpg and deletes every
temp file, so a rejected, failed or disconnected upload leaves nothing behind.

Contact details a source chooses to leave are sealed: encrypted to the custodians' keys only
(never the unit's, never the oversight key), into their own object, so that reading the tip
does not reveal who sent it; only a custodian's approval discloses them (cpcp/disclosure.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from .cases import Cases, UnitView
from .errors import RateLimited, SubmissionRejected
from .models import DocumentRole
from .pgp import EncryptionStream, Keyring
from .store import PendingObject, Store

MESSAGE_FORMAT = "cpcp-tip/1"
CONTACT_FORMAT = "cpcp-contact/1"


@dataclass
class FileRecord:
    name: str
    content_type: str
    size: int = 0


@dataclass
class _OpenFile:
    record: FileRecord
    pending: PendingObject
    stream: EncryptionStream


@dataclass
class Draft:
    store: Store
    keyring: Keyring
    cases: Cases
    recipients: Sequence[str]
    max_bytes: int
    max_files: int
    custodians: Sequence[str] = ()
    # Files this source may still send this hour (per-codename limit); None: no limit.
    files_budget: int | None = None
    objects: list[tuple[DocumentRole, PendingObject]] = field(default_factory=list)
    sealed: PendingObject | None = None
    files: list[FileRecord] = field(default_factory=list)
    received_bytes: int = 0
    _open: _OpenFile | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever happened, nothing of an uncommitted draft may remain.
        await self.abort()

    def _count(self, n: int) -> None:
        self.received_bytes += n
        if self.received_bytes > self.max_bytes:
            raise SubmissionRejected("too_large", status=413)

    async def open_file(self, name: str, content_type: str) -> None:
        if self._open is not None:
            await self.close_file()
        if len(self.files) >= self.max_files:
            raise SubmissionRejected("too_many_files", status=413)
        if self.files_budget is not None and len(self.files) >= self.files_budget:
            raise RateLimited(retry_after=3600)  # the view tells the real wait
        pending = self.store.new_object()
        self.objects.append((DocumentRole.FILE, pending))
        # The name goes into the encrypted message only (add_message), never to gpg.
        stream = await self.keyring.start_encryption(self.recipients, pending.fd)
        record = FileRecord(name=name, content_type=content_type)
        self.files.append(record)
        self._open = _OpenFile(record, pending, stream)

    async def write_file(self, chunk: bytes) -> None:
        assert self._open is not None, "open_file first"
        self._count(len(chunk))
        self._open.record.size += len(chunk)
        await self._open.stream.write(chunk)

    async def close_file(self) -> None:
        if self._open is None:
            return
        opened, self._open = self._open, None
        await opened.stream.finish()

    async def add_message(self, answers: dict[str, Any]) -> None:
        """Encrypt the structured message; it lists the files, so it comes after them."""
        await self.close_file()
        body = {
            "format": MESSAGE_FORMAT,
            **answers,
            "files": [
                {"name": f.name, "content_type": f.content_type, "size": f.size} for f in self.files
            ],
        }
        # Not counted against max_bytes, which is the files' limit (the form's "500 MB in total"):
        # the text fields have their own (max_text_chars, the upload's FIELDS_LIMIT).
        data = json.dumps(body, ensure_ascii=False, indent=2).encode("utf-8")
        pending = self.store.new_object()
        self.objects.insert(0, (DocumentRole.MESSAGE, pending))
        await self._encrypt_into(pending, data, self.recipients)

    async def add_contact(self, contact: str) -> None:
        """Seal the source's contact details to the custodians' keys, in their own object."""
        if not self.custodians:
            raise SubmissionRejected("no_custodian")
        body = {"format": CONTACT_FORMAT, "contact": contact}
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self._count(len(data))
        pending = self.store.new_object()
        self.sealed = pending
        await self._encrypt_into(pending, data, self.custodians)

    async def _encrypt_into(self, pending: PendingObject, data: bytes, recipients: Sequence[str]) -> None:
        """One small document (JSON, in memory already) encrypted into its pending object."""
        stream = await self.keyring.start_encryption(recipients, pending.fd)
        try:
            await stream.write(data)
            await stream.finish()
        except BaseException:
            await stream.abort()
            raise

    async def commit(self, *, source_id: int, unit: UnitView,
                     reply_target: dt.timedelta | None = None) -> int:
        """Store every object and the rows in one go; returns the submission id."""
        if self._open is not None:
            await self.close_file()
        objects, self.objects = self.objects, []
        sealed, self.sealed = self.sealed, None
        try:
            return await self.cases.record_submission(source_id=source_id, unit=unit, objects=objects,
                                                      sealed=sealed, reply_target=reply_target)
        except BaseException:
            for pending in [p for _, p in objects] + ([sealed] if sealed else []):
                self.store.discard(pending)
            raise

    async def abort(self) -> None:
        if self._open is not None:
            opened, self._open = self._open, None
            await opened.stream.abort()
        for _, pending in self.objects:
            self.store.discard(pending)
        self.objects = []
        if self.sealed is not None:
            self.store.discard(self.sealed)
            self.sealed = None


class Intake:
    def __init__(self, *, store: Store, keyring: Keyring, cases: Cases, max_bytes: int, max_files: int) -> None:
        self._store = store
        self._keyring = keyring
        self._cases = cases
        self._max_bytes = max_bytes
        self._max_files = max_files

    def draft(self, unit: UnitView, *, custodians: Sequence[str] = (),
              files_budget: int | None = None) -> Draft:
        return Draft(
            store=self._store, keyring=self._keyring, cases=self._cases,
            recipients=self._cases.recipients(unit), max_bytes=self._max_bytes,
            max_files=self._max_files, custodians=tuple(custodians), files_budget=files_budget,
        )
