"""Export a case: the one place the desk writes plaintext, on the officer's explicit request.

``export_dir/<case public id>/`` receives the decrypted files (``files/``), ``message.json``
(every submission's message and the decrypted replies) and ``MANIFEST.sha256`` (checkable with
``sha256sum -c`` from inside the folder). The export is assembled in a hidden folder beside it,
recorded in the server's audit log, and only then renamed into place: an export that could not
be recorded is deleted, so every export on disk is in the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from . import timefmt
from ._fs import write_all, write_new
from .cache import Cache
from .casebook import Casebook, Conversation, file_documents
from .client import GatewayClient
from .crypto import DeskCrypto
from .errors import DeskError, ExportError

MANIFEST = "MANIFEST.sha256"


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    files: int
    total_bytes: int
    manifest_sha256: str


def safe_name(name: str, fallback: str) -> str:
    """A file name that cannot leave its folder or confuse a shell or ``sha256sum -c``."""
    name = unicodedata.normalize("NFC", name).replace("/", "_").replace("\\", "_")
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".-")[:120]
    return name or fallback


def _mkdir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=False)


def _document(conversation: Conversation, zone: ZoneInfo) -> dict[str, Any]:
    """message.json: times in ISO 8601 with the deployment's offset, so that whoever reads the
    export sees the clock of the place, and a program can still parse them."""
    case = conversation.case
    return {
        "case": case.public_id, "unit": case.unit, "status": case.status, "priority": case.priority,
        "labels": case.labels, "time_zone": zone.key, "received_at": timefmt.iso(case.received_at, zone),
        "submissions": [
            {"received_at": timefmt.iso(s.submission.received_at, zone),
             "message": s.message.raw if s.message else None, "problem": s.problem}
            for s in conversation.submissions
        ],
        "replies": [
            {"sent_at": timefmt.iso(r.reply.sent_at, zone), "text": r.text,
             "deleted_by_source": r.reply.deleted_by_source}
            for r in conversation.replies
        ],
    }


class Exporter:
    def __init__(self, *, export_dir: Path, cache: Cache, casebook: Casebook, crypto: DeskCrypto,
                 zone: ZoneInfo) -> None:
        self._root = export_dir
        self._zone = zone
        self._cache = cache
        self._casebook = casebook
        self._crypto = crypto

    async def export(self, client: GatewayClient, case_id: int) -> ExportResult:
        """Write the export and record it via the gateway; all or nothing."""
        case = self._cache.case(case_id)
        if case is None:
            raise ExportError("no such case in the cache: sync first")
        final = self._root / case.public_id
        if await asyncio.to_thread(final.exists):
            raise ExportError(f"{final} exists already: move it away to export again")
        work = self._root / f".{case.public_id}.{secrets.token_hex(4)}.partial"
        await asyncio.to_thread(self._root.mkdir, mode=0o700, parents=True, exist_ok=True)
        await asyncio.to_thread(_mkdir, work / "files")
        try:
            result = await self._assemble(case_id, work)
            await client.post_audit(case.id, "export", {
                "files": str(result.files), "bytes": str(result.total_bytes),
                "manifest_sha256": result.manifest_sha256,
            })
            await asyncio.to_thread(os.rename, work, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        return ExportResult(final, result.files, result.total_bytes, result.manifest_sha256)

    async def _assemble(self, case_id: int, work: Path) -> ExportResult:
        case = self._cache.case(case_id)
        assert case is not None
        conversation = await self._casebook.conversation(case)
        lines: list[str] = []
        total = 0
        count = 0
        for view in conversation.submissions:
            listed = list(view.message.files) if view.message else []
            for i, doc in enumerate(file_documents(view.submission)):
                name = safe_name(listed[i].name if i < len(listed) else "", "file")
                relative = f"files/{doc.id}-{name}"
                try:
                    digest, size = await self._decrypt_to(doc.id, work / relative)
                except DeskError as exc:
                    raise ExportError(f"file {doc.id} could not be exported: {exc}") from exc
                lines.append(f"{digest}  {relative}")
                total += size
                count += 1
        body = json.dumps(_document(conversation, self._zone), ensure_ascii=False, indent=2).encode("utf-8")
        await asyncio.to_thread(write_new, work / "message.json", body)
        lines.append(f"{hashlib.sha256(body).hexdigest()}  message.json")
        manifest = ("\n".join(lines) + "\n").encode("utf-8")
        await asyncio.to_thread(write_new, work / MANIFEST, manifest)
        return ExportResult(work, count, total, hashlib.sha256(manifest).hexdigest())

    async def _decrypt_to(self, document_id: int, target: Path) -> tuple[str, int]:
        path = self._cache.require_document(document_id)
        fd = await asyncio.to_thread(os.open, target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in self._crypto.stream_decrypt(path):
                digest.update(chunk)
                size += len(chunk)
                await asyncio.to_thread(write_all, fd, chunk)
            await asyncio.to_thread(os.fsync, fd)
        finally:
            await asyncio.to_thread(os.close, fd)
        return digest.hexdigest(), size
