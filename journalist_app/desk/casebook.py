"""Cases as an officer reads them: cached metadata plus the tip's message decrypted on demand.

Decrypted messages and replies are kept in this process's memory only (``forget`` drops them at
logout); nothing decrypted is written anywhere. A message that cannot be decrypted (not synced
yet, or not encrypted to this desk's key) is shown as such and hides no other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from . import filemeta
from .cache import Cache
from .crypto import DeskCrypto
from .errors import CryptoError, NotCached
from .i18n import N_
from .wire import Case, Document, Reply, Submission, Unit


@dataclass(frozen=True)
class FileEntry:
    """A file as the source's message lists it (name and type are inside the encryption)."""

    name: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Message:
    """The structured message of a submission (``cpcp-tip/1`` JSON)."""

    text: str
    kind: str | None
    category: str | None
    place: str | None
    area: str | None
    when: str | None
    language: str | None
    follow_up: bool
    files: tuple[FileEntry, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, plaintext: bytes) -> Message:
        try:
            data = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CryptoError("the message is not the expected JSON document") from exc
        if not isinstance(data, dict):
            raise CryptoError("the message is not the expected JSON document")

        def text(key: str) -> str | None:
            value = data.get(key)
            return str(value) if value not in (None, "") else None

        files = []
        for item in data.get("files") or []:
            if isinstance(item, dict):
                size = item.get("size")
                files.append(FileEntry(name=str(item.get("name") or "file"),
                                       content_type=str(item.get("content_type") or "application/octet-stream"),
                                       size=size if isinstance(size, int) else 0))
        return cls(text=text("text") or "", kind=text("kind"), category=text("category"),
                   place=text("place"), area=text("police_station_area"), when=text("when"),
                   language=text("language"), follow_up=bool(data.get("follow_up")),
                   files=tuple(files), raw=data)


@dataclass(frozen=True)
class FileView:
    document: Document
    entry: FileEntry | None
    cached: bool


@dataclass(frozen=True)
class SubmissionView:
    submission: Submission
    message: Message | None
    problem: str | None
    files: list[FileView]


@dataclass(frozen=True)
class ReplyView:
    reply: Reply
    text: str | None
    problem: str | None


@dataclass(frozen=True)
class Conversation:
    case: Case
    unit: Unit | None
    submissions: list[SubmissionView]
    replies: list[ReplyView]

    @property
    def events(self) -> list[tuple[dt.datetime, str, SubmissionView | ReplyView]]:
        """Submissions and replies in the order they happened."""
        items: list[tuple[dt.datetime, str, SubmissionView | ReplyView]] = [
            (s.submission.received_at, "submission", s) for s in self.submissions]
        items += [(r.reply.sent_at, "reply", r) for r in self.replies]
        return sorted(items, key=lambda item: (item[0], item[1] == "reply"))


@dataclass(frozen=True)
class CaseSummary:
    """One inbox row: metadata plus what the first message says."""

    case: Case
    kind: str | None
    category: str | None
    excerpt: str
    text: str
    problem: str | None


def message_document(submission: Submission) -> Document | None:
    return next((d for d in submission.documents if d.role == "message"), None)


def file_documents(submission: Submission) -> list[Document]:
    """File documents in upload order (the order the message lists them)."""
    return sorted((d for d in submission.documents if d.role == "file"), key=lambda d: d.id)


class Casebook:
    def __init__(self, *, cache: Cache, crypto: DeskCrypto, concurrency: int = 4) -> None:
        self._cache = cache
        self._crypto = crypto
        self._messages: dict[int, Message] = {}
        self._replies: dict[int, str] = {}
        # What each file says about itself: read from its plaintext, so kept as the messages are.
        self._reports: dict[int, filemeta.MetadataReport] = {}
        self._gate = asyncio.Semaphore(concurrency)

    def forget(self) -> None:
        """Drop every decrypted message and reply from memory (logout)."""
        self._messages.clear()
        self._replies.clear()
        self._reports.clear()

    def drop_uncached(self) -> int:
        """Drop decrypted messages and replies whose ciphertext the cache no longer holds (a
        sync removed their case: deleted on the server, or no longer the officer's)."""
        gone = [d for d in self._messages if not self._cache.has_document(d)]
        gone_replies = [r for r in self._replies if not self._cache.has_reply(r)]
        for doc_id in gone:
            del self._messages[doc_id]
        for reply_id in gone_replies:
            del self._replies[reply_id]
        for doc_id in [d for d in self._reports if not self._cache.has_document(d)]:
            del self._reports[doc_id]
        return len(gone) + len(gone_replies)

    async def message(self, document_id: int) -> Message:
        found = self._messages.get(document_id)
        if found is None:
            path = self._cache.require_document(document_id)
            async with self._gate:
                found = Message.parse(await self._crypto.decrypt_file(path))
            self._messages[document_id] = found
        return found

    async def reply_text(self, reply_id: int) -> str:
        found = self._replies.get(reply_id)
        if found is None:
            path = self._cache.require_reply(reply_id)
            async with self._gate:
                found = (await self._crypto.decrypt_file(path)).decode("utf-8", "replace")
            self._replies[reply_id] = found
        return found

    async def _try_message(self, submission: Submission) -> tuple[Message | None, str | None]:
        doc = message_document(submission)
        if doc is None:
            return None, N_("no message document")
        try:
            return await self.message(doc.id), None
        except NotCached:
            return None, N_("not synced yet")
        except CryptoError as exc:
            return None, str(exc)

    async def summary(self, case: Case) -> CaseSummary:
        if not case.submissions:
            return CaseSummary(case, None, None, "", "", N_("no submission"))
        message, problem = await self._try_message(case.submissions[0])
        texts = [message.text] if message else []
        for submission in case.submissions[1:]:  # follow-ups are searched too
            more, _ = await self._try_message(submission)
            if more is not None:
                texts.append(more.text)
        excerpt = message.text[:140] if message else ""
        return CaseSummary(case, message.kind if message else None, message.category if message else None,
                           excerpt, "\n".join(texts), problem)

    async def summaries(self) -> list[CaseSummary]:
        return list(await asyncio.gather(*(self.summary(c) for c in self._cache.cases())))

    async def conversation(self, case: Case) -> Conversation:
        submissions = []
        for submission in case.submissions:
            message, problem = await self._try_message(submission)
            entries = list(message.files) if message else []
            files = [FileView(doc, entries[i] if i < len(entries) else None, self._cache.has_document(doc.id))
                     for i, doc in enumerate(file_documents(submission))]
            submissions.append(SubmissionView(submission, message, problem, files))
        replies = [await self._reply_view(reply) for reply in case.replies]
        return Conversation(case, self._cache.unit(case.unit), submissions, replies)

    async def _reply_view(self, reply: Reply) -> ReplyView:
        try:
            return ReplyView(reply, await self.reply_text(reply.id), None)
        except NotCached:
            return ReplyView(reply, None, N_("deleted by the source") if reply.deleted_by_source
                             else N_("not synced yet"))
        except CryptoError as exc:
            return ReplyView(reply, None, str(exc))

    async def file_report(self, document_id: int, limit: int) -> filemeta.MetadataReport:
        """The embedded metadata of a synced file, from the first ``limit`` bytes of its
        plaintext (decrypted in memory, then dropped)."""
        found = self._reports.get(document_id)
        if found is None:
            path = self._cache.require_document(document_id)
            async with self._gate:
                data, truncated = await self._crypto.decrypt_head(path, limit)
            found = await asyncio.to_thread(filemeta.inspect, data, truncated=truncated)
            del data
            self._reports[document_id] = found
        return found

    async def file(self, case: Case, document_id: int) -> FileView | None:
        """A file document of this case with its listed name, or None if it is not one."""
        for submission in case.submissions:
            docs = file_documents(submission)
            for i, doc in enumerate(docs):
                if doc.id == document_id:
                    message, _ = await self._try_message(submission)
                    entry = message.files[i] if message and i < len(message.files) else None
                    return FileView(doc, entry, self._cache.has_document(doc.id))
        return None
