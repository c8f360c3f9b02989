"""The desk's local cache: ciphertext exactly as the gateway stores it, and case metadata.

Layout under ``root`` (all 0700/0600)::

    cases/<id>.json     case metadata (what the gateway knows in clear)
    units.json          the officer's units and their officers' fingerprints
    docs/<id>.gpg       submission ciphertexts
    replies/<id>.gpg    reply ciphertexts
    .partial/           downloads in progress; swept at start

Nothing here is ever plaintext. Sync is incremental (only objects not cached yet are fetched)
and resumable (a download lands under its final name only when complete, so after an
interruption the next sync starts at the first missing object).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from ._fs import in_thread_to_the_end, write_new
from .client import BATCH_MAX_BYTES, BATCH_MAX_IDS, BATCH_MAX_OBJECT, GatewayClient
from .errors import DocumentsMissing, GatewayError, NotCached, NotFound
from .wire import Case, Unit

_UNITS = TypeAdapter(list[Unit])


@dataclass(frozen=True)
class SyncReport:
    cases: int
    downloaded: int
    already_cached: int
    unavailable: int
    removed: int


SYNC_CONCURRENCY = 8


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cases: dict[int, Case] = {}
        self._units: list[Unit] = []
        self._docs: set[int] = set()
        self._replies: set[int] = set()
        self._lock = asyncio.Lock()

    @property
    def partial_dir(self) -> Path:
        return self.root / ".partial"

    def document_path(self, document_id: int) -> Path:
        return self.root / "docs" / f"{int(document_id)}.gpg"

    def reply_path(self, reply_id: int) -> Path:
        return self.root / "replies" / f"{int(reply_id)}.gpg"

    async def open(self) -> None:
        """Create the folders, drop interrupted downloads, load the metadata index."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        for sub in ("", "cases", "docs", "replies", ".partial"):
            folder = self.root / sub
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        for leftover in self.partial_dir.iterdir():
            if leftover.is_file():
                leftover.unlink()
        for path in (self.root / "cases").glob("*.json"):
            try:
                case = Case.model_validate_json(path.read_bytes())
            except (OSError, ValidationError):
                path.unlink(missing_ok=True)  # damaged: the next sync fetches it again
                continue
            self._cases[case.id] = case
        units = self.root / "units.json"
        if units.exists():
            try:
                self._units = _UNITS.validate_json(units.read_bytes())
            except ValidationError:
                units.unlink()
        self._scan_objects()

    def _scan_objects(self) -> None:
        self._docs = {int(p.stem) for p in (self.root / "docs").glob("*.gpg") if p.stem.isdigit()}
        self._replies = {int(p.stem) for p in (self.root / "replies").glob("*.gpg") if p.stem.isdigit()}

    # -- metadata ----------------------------------------------------------------------------

    def cases(self) -> list[Case]:
        return [self._cases[k] for k in sorted(self._cases)]

    def case(self, case_id: int) -> Case | None:
        return self._cases.get(case_id)

    def units(self) -> list[Unit]:
        return list(self._units)

    def unit(self, slug: str) -> Unit | None:
        return next((u for u in self._units if u.slug == slug), None)

    async def store_case(self, case: Case) -> None:
        if self._cases.get(case.id) != case:
            await asyncio.to_thread(write_new, self.root / "cases" / f"{case.id}.json",
                                    case.model_dump_json().encode(), replace=True)
            self._cases[case.id] = case

    async def store_units(self, units: list[Unit]) -> None:
        await asyncio.to_thread(write_new, self.root / "units.json", _UNITS.dump_json(units), replace=True)
        self._units = list(units)

    # -- ciphertext --------------------------------------------------------------------------

    def has_document(self, document_id: int) -> bool:
        return document_id in self._docs

    def has_reply(self, reply_id: int) -> bool:
        return reply_id in self._replies

    def require_document(self, document_id: int) -> Path:
        if document_id not in self._docs:
            raise NotCached(f"document {document_id} is not synced yet")
        return self.document_path(document_id)

    def require_reply(self, reply_id: int) -> Path:
        if reply_id not in self._replies:
            raise NotCached(f"reply {reply_id} is not synced yet")
        return self.reply_path(reply_id)

    async def fetch_case_objects(self, client: GatewayClient, case: Case) -> tuple[int, int, int]:
        """Download what of one case is missing; returns (downloaded, cached, unavailable)."""
        downloaded = cached = unavailable = 0
        for submission in case.submissions:
            for doc in submission.documents:
                if doc.id in self._docs:
                    cached += 1
                    continue
                try:
                    await client.download_document(doc.id, self.document_path(doc.id),
                                                   tmp_dir=self.partial_dir, expected_size=doc.size)
                except NotFound:
                    unavailable += 1
                    continue
                self._docs.add(doc.id)
                downloaded += 1
        for reply in case.replies:
            if reply.id in self._replies:
                cached += 1
                continue
            if reply.deleted_by_source:
                continue  # deleted on the server; nothing to fetch
            try:
                await client.download_reply(reply.id, self.reply_path(reply.id),
                                            tmp_dir=self.partial_dir, expected_size=reply.size)
            except NotFound:
                unavailable += 1
                continue
            self._replies.add(reply.id)
            downloaded += 1
        return downloaded, cached, unavailable

    async def refresh_case(self, client: GatewayClient, case_id: int) -> Case:
        """Fetch one case's metadata and its missing objects (after a reply, for instance)."""
        async with self._lock:
            case = await client.case(case_id)
            await self.store_case(case)
            await self.fetch_case_objects(client, case)
            return case

    async def sync(self, client: GatewayClient) -> SyncReport:
        """Bring the cache up to date with the gateway: all cases of the officer's units, then
        every ciphertext not cached yet. Cases no longer visible are removed with their
        objects. An error stops the sync; what was complete stays, and the next sync resumes."""
        async with self._lock:
            # What is on disk is what is cached: a download cancelled while its file was being
            # renamed into place (a failed sibling stops the sync) is complete all the same.
            await asyncio.to_thread(self._scan_objects)
            await self.store_units(await client.units())
            seen: list[Case] = []
            async for case in client.all_cases():
                await self.store_case(case)
                seen.append(case)
            removed = await self._prune({c.id for c in seen})
            # Several downloads in flight: each is a round trip (over Tor, a slow one), and
            # one at a time left both ends idle most of the time (bench/desk_sync.py).
            gate = asyncio.Semaphore(SYNC_CONCURRENCY)

            async def fetch(case: Case) -> tuple[int, int, int]:
                async with gate:
                    return await self.fetch_case_objects(client, case)

            # Small messages first, a hundred per request and per audit entry; then whatever
            # is still missing (files, replies, anything a batch could not carry) one by one.
            small = [(doc.id, doc.size) for case in seen for sub in case.submissions
                     for doc in sub.documents if doc.id not in self._docs and doc.size <= BATCH_MAX_OBJECT]

            async def fetch_batch(batch: list[tuple[int, int]]) -> int:
                async with gate:
                    return await self._fetch_batch(client, batch)

            async with asyncio.TaskGroup() as group:  # the first error cancels the rest
                batches = [group.create_task(fetch_batch(batch)) for batch in _batches(small)]
            batched = sum(t.result() for t in batches)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(fetch(case)) for case in seen]
            counts = [t.result() for t in tasks]
            downloaded = batched + sum(c[0] for c in counts)
            cached = sum(c[1] for c in counts) - batched  # the second pass found those in the cache
            unavailable = sum(c[2] for c in counts)
            return SyncReport(cases=len(seen), downloaded=downloaded, already_cached=cached,
                              unavailable=unavailable, removed=removed)

    async def _fetch_batch(self, client: GatewayClient, batch: list[tuple[int, int]]) -> int:
        """One batch into the cache; returns how many landed. Documents the gateway says the
        officer cannot have are left out and asked for again alone by the one-by-one pass,
        which counts them unavailable; so is a batch refused as too large."""
        ids = [doc_id for doc_id, _ in batch]
        for _ in range(2):  # once more without the missing ones; a second refusal: one by one
            try:
                blobs = await client.document_batch(ids)
                break
            except DocumentsMissing as exc:
                ids = [doc_id for doc_id in ids if doc_id not in set(exc.missing)]
                if not exc.missing or not ids:
                    return 0
            except GatewayError as exc:
                if exc.status == 413:
                    return 0
                raise
        else:
            return 0
        sizes = dict(batch)
        for doc_id, blob in blobs.items():
            if len(blob) != sizes[doc_id]:
                raise GatewayError(f"document {doc_id}: {len(blob)} bytes, the case says {sizes[doc_id]}")
        await in_thread_to_the_end(self._store_documents, blobs)
        self._docs.update(blobs)
        return len(blobs)

    def _store_documents(self, blobs: dict[int, bytes]) -> None:
        for doc_id, blob in blobs.items():
            dest = self.document_path(doc_id)
            tmp = self.partial_dir / f"{dest.name}.{secrets.token_hex(4)}.part"
            write_new(tmp, blob)  # fsynced; renamed only when complete, as a streamed download
            os.replace(tmp, dest)

    async def _prune(self, visible: set[int]) -> int:
        gone = [c for cid, c in self._cases.items() if cid not in visible]
        for case in gone:
            docs = [d.id for s in case.submissions for d in s.documents]
            replies = [r.id for r in case.replies]
            await asyncio.to_thread(self._remove, case.id, docs, replies)
            del self._cases[case.id]
            self._docs.difference_update(docs)
            self._replies.difference_update(replies)
        return len(gone)

    def _remove(self, case_id: int, docs: list[int], replies: list[int]) -> None:
        for path in [*(self.document_path(d) for d in docs), *(self.reply_path(r) for r in replies),
                     self.root / "cases" / f"{case_id}.json"]:
            path.unlink(missing_ok=True)


def _batches(docs: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """(id, size) pairs in order, cut where a batch would pass the count or byte limit."""
    batches: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    total = 0
    for doc in docs:
        if current and (len(current) == BATCH_MAX_IDS or total + doc[1] > BATCH_MAX_BYTES):
            batches.append(current)
            current, total = [], 0
        current.append(doc)
        total += doc[1]
    if current:
        batches.append(current)
    return batches
