"""Streaming a multipart tip from the request into gpg, part by part.

Quart's ``request.files`` would spool large files to a temp file in plaintext, so the submit
view never touches it. Instead Werkzeug's sans-I/O MultipartDecoder turns body chunks into
events: text fields are collected (bounded), and the first file part triggers validation of
those fields (CSRF included) before a single file byte reaches gpg. The form puts all text
fields before the file inputs, and browsers send parts in document order.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterable, Awaitable, Callable

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from cpcp.errors import SubmissionRejected
from cpcp.intake import Draft

FIELDS_LIMIT = 256 * 1024  # all text fields together, in bytes
MAX_PARTS = 64


def clean_filename(raw: str) -> str:
    """The name as the source's device gave it, minus any path and control characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C")
    return name.strip()[:200] or "file"


class TipReceiver:
    """Drives one upload; ``draft`` is set once the fields were accepted."""

    def __init__(
        self,
        boundary: bytes,
        *,
        accept_fields: Callable[[MultiDict[str, str]], Awaitable[Draft]],
    ) -> None:
        self._decoder = MultipartDecoder(boundary, max_parts=MAX_PARTS)
        self._accept_fields = accept_fields
        self.fields: MultiDict[str, str] = MultiDict()
        self.draft: Draft | None = None
        self._field_name: str | None = None
        self._field_buf = bytearray()
        self._field_bytes = 0
        self._in_file = False
        self._skipping = False
        self._complete = False

    async def run(self, body: AsyncIterable[bytes]) -> None:
        try:
            async for chunk in body:
                self._decoder.receive_data(chunk)
                await self._drain()
            self._decoder.receive_data(None)
            await self._drain()
        except RequestEntityTooLarge as exc:
            raise SubmissionRejected("too_large", status=413) from exc
        except ValueError as exc:
            raise SubmissionRejected("malformed") from exc
        if not self._complete:
            raise SubmissionRejected("malformed")

    async def _drain(self) -> None:
        while True:
            event = self._decoder.next_event()
            if isinstance(event, NeedData):
                return
            if isinstance(event, File):
                await self._start_file(event)
            elif isinstance(event, Field):
                self._field_name, self._field_buf = event.name, bytearray()
            elif isinstance(event, Data):
                await self._data(event)
            elif isinstance(event, Epilogue):
                self._complete = True
                return

    async def _start_file(self, event: File) -> None:
        self._field_name = None
        if not event.filename:
            # An empty file input: browsers send the part with no name and no content.
            self._skipping = True
            return
        if self.draft is None:
            self.draft = await self._accept_fields(self.fields)
        content_type = event.headers.get("Content-Type", "application/octet-stream")[:100]
        await self.draft.open_file(clean_filename(event.filename), content_type)
        self._in_file, self._skipping = True, False

    async def _data(self, event: Data) -> None:
        if self._skipping:
            if event.data:
                raise SubmissionRejected("malformed")
            if not event.more_data:
                self._skipping = False
            return
        if self._in_file:
            assert self.draft is not None
            if event.data:
                await self.draft.write_file(event.data)
            if not event.more_data:
                self._in_file = False
                await self.draft.close_file()
            return
        if self._field_name is None:
            raise SubmissionRejected("malformed")
        self._field_bytes += len(event.data)
        if self._field_bytes > FIELDS_LIMIT:
            raise SubmissionRejected("too_large", status=413)
        self._field_buf += event.data
        if not event.more_data:
            try:
                value = self._field_buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SubmissionRejected("malformed") from exc
            self.fields.add(self._field_name, value.replace("\r\n", "\n"))
            self._field_name = None
