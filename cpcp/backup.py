"""``cpcp-admin backup``: the whole server in one OpenPGP-encrypted file.

What a lost server cannot be rebuilt without: the database (cpcp/dbdump.py), the store's
ciphertext, the server secrets (the codename salt: without it no source can log in again), the
sources' reply keys, the officer keyring and the onion services' keys (the source onion's
address). The file is a tar archive streamed into ``gpg --encrypt`` to the pinned backup key,
whose private half stays off the server: the archive exists in clear nowhere, not even in a
temp file, and the server cannot read its own backups.

Archive members, in this order::

    FORMAT.json                 {"format": "cpcp-backup", "version": 1, "schema_revision", "created_at"}
    database/00001-<table>.jsonl  one snapshot of every table, in chunks (cpcp/dbdump.py)
    data/<path>                 the data folder's files but the store, tor's cache, the logs
                                and a SQLite database (its rows are above)
    data/store/<case>/<object>  exactly the objects the snapshot's rows refer to
    MANIFEST.json               size and SHA-256 of every member above, row counts, audit head

The snapshot comes first: an object stored after it is not referenced by it and stays out; a
source key is made before its row, so every source in the snapshot has its key in the copy.
Bearer tokens are not kept: after a restore officers log in again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from .db import make_engine
from .dbdump import DumpResult, dump
from .errors import ConfigError, CPCPError
from .migrate import alembic_config, require_current_schema
from .pgp import EncryptionStream, Keyring
from .settings import Settings
from .store import Store

FORMAT = "cpcp-backup"
VERSION = 1
READ_CHUNK = 4 * 1024 * 1024
BLOCK = 512
# Never copied: what tor rebuilds, logs, the store (its referenced objects are copied by name).
SKIPPED_DIRS = frozenset({"store", "tor", "logs"})
STAGING_PREFIX = ".restore-"


class BackupError(CPCPError):
    """No backup was written (and no partial file is left)."""


Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size: int  # bytes of the encrypted file
    rows: int
    objects: int
    object_bytes: int
    audit_entries: int
    audit_head: str | None
    seconds: float


class ArchiveWriter:
    """A POSIX (pax) tar stream written member by member into ``sink``; records each
    member's size and SHA-256 for the manifest. Members are 0600, owned by uid 0, dated
    ``mtime``: the archive says nothing about the server's users or file times."""

    def __init__(self, sink: EncryptionStream, *, mtime: int) -> None:
        self._sink = sink
        self._mtime = mtime
        self.members: dict[str, dict[str, int | str]] = {}

    def _info(self, name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o600, self._mtime
        return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")

    async def _pad(self, size: int) -> None:
        if size % BLOCK:
            await self._sink.write(b"\0" * (BLOCK - size % BLOCK))

    async def add_bytes(self, name: str, data: bytes, *, listed: bool = True) -> None:
        await self._sink.write(self._info(name, len(data)))
        await self._sink.write(data)
        await self._pad(len(data))
        if listed:
            self.members[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    async def add_file(self, name: str, path: Path) -> int:
        """Copy one file; its size is taken when it is opened and must not change."""
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            await self._sink.write(self._info(name, size))
            digest, left = hashlib.sha256(), size

            def read_and_hash(n: int) -> bytes:
                chunk = fh.read(n)
                digest.update(chunk)  # hashlib lets go of the GIL for large chunks
                return chunk

            # The next chunk is read and hashed while gpg takes this one.
            ahead = asyncio.ensure_future(asyncio.to_thread(read_and_hash, min(READ_CHUNK, left)))
            try:
                while left:
                    chunk = await ahead
                    if not chunk:
                        raise BackupError(f"{path} shrank while it was copied; run the backup again")
                    left -= len(chunk)
                    if left:
                        ahead = asyncio.ensure_future(
                            asyncio.to_thread(read_and_hash, min(READ_CHUNK, left)))
                    await self._sink.write(chunk)
            finally:
                if not ahead.done():  # gpg failed while a read was under way
                    with contextlib.suppress(Exception):
                        await ahead
        await self._pad(size)
        self.members[name] = {"size": size, "sha256": digest.hexdigest()}
        return size

    async def close(self) -> None:
        await self._sink.write(b"\0" * (2 * BLOCK))


def require_owner(data_dir: Path) -> None:
    """Backup and restore run as the data folder's owner (the services' user), never as root
    in another user's folder: gpg started there as root would leave root's gpg-agent sockets
    and files in the services' GnuPG homes, which they then could not use."""
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        return
    if os.geteuid() == 0 and owner != 0:
        raise ConfigError(f"{data_dir} belongs to uid {owner}: run this as that user "
                          "(sudo -u cpcp ...), not as root")


def sqlite_files(settings: Settings) -> set[Path]:
    """The SQLite database's files, when the database is SQLite."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return set()
    db = Path(url.database).resolve()
    return {db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"),
            db.with_name(db.name + "-journal")}


def data_files(settings: Settings) -> list[tuple[str, Path]]:
    """The data folder's files a backup holds, as (archive name, path), in a stable order:
    regular files only (no gpg-agent sockets), no lock files, nothing under SKIPPED_DIRS."""
    root = settings.data_dir.resolve()
    skip = sqlite_files(settings)
    found: list[tuple[str, Path]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if here == root:
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(STAGING_PREFIX)]
        dirs.sort()
        for name in sorted(files):
            path = here / name
            if path in skip or name.endswith(".lock") or name.startswith(".#lk"):
                continue
            if not path.is_file() or path.is_symlink():
                continue
            found.append(("data/" + path.relative_to(root).as_posix(), path))
    return found


def backup_keyring(settings: Settings) -> tuple[Keyring, str]:
    """The keyring holding the pinned backup key, refreshed from ``keys_dir``; or ConfigError."""
    fpr = settings.backup.fingerprint
    if not fpr:
        raise ConfigError("no backup key: set [backup] fingerprint (and key_file in keys_dir)")
    key_file = settings.keys_dir / settings.backup.key_file
    try:
        armored = key_file.read_text(encoding="ascii")
    except OSError as exc:
        raise ConfigError(f"backup key file {key_file}: {exc.strerror}") from exc
    ring = Keyring(settings.gnupg_home / "backup", gpg_binary=settings.gpg_binary)
    ring.import_public_keys(armored)
    ring.require_encryption_key(fpr, who="backup key")
    return ring, fpr


#: The onion keys tor's own user hands over (``--tor-keys``): a few small files.
TOR_KEYS_LIMIT = 16 * 2**20


def read_tor_keys(stream: IO[bytes]) -> list[tuple[str, bytes]]:
    """The regular files of a tar stream of tor's folder's ``onion/`` (written by tor's user, who
    alone may read it: ``tar -C /var/lib/cpcp-tor -cf - onion``), as (archive name, content)
    under ``data/onion/``, where restore puts them back and the playbook hands them to tor's user
    again. Links, devices, paths outside ``onion/`` and more than TOR_KEYS_LIMIT are refused.
    Blocking."""
    found: list[tuple[str, bytes]] = []
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != "onion":
                    raise BackupError(f"tor keys: refusing {member.name!r} (only onion/...)")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BackupError(f"tor keys: {member.name!r} is not a regular file")
                total += member.size
                if total > TOR_KEYS_LIMIT:
                    raise BackupError("tor keys: more than 16 MiB; is this tor's onion folder?")
                data = tar.extractfile(member)
                assert data is not None
                found.append(("data/" + path.as_posix(), data.read()))
    except tarfile.TarError as exc:
        raise BackupError(f"tor keys: not a tar stream ({exc})") from exc
    if not found:
        raise BackupError("tor keys: the stream holds no onion key")
    return found


async def make_backup(settings: Settings, dest: Path, *, clock: Clock = _utcnow,
                      tor_keys: IO[bytes] | None = None) -> BackupReport:
    """Write the backup to ``dest`` (a new file, 0600) or raise and leave nothing there.

    ``tor_keys``: a tar stream of tor's ``onion/`` folder, where tor runs as a user of its own
    (ansible/server.yml) and the data folder has no ``onion/``."""
    started = time.monotonic()
    require_owner(settings.data_dir)
    if dest.exists():
        raise BackupError(f"{dest} exists already; backups are never overwritten")
    if dest.resolve().is_relative_to(settings.data_dir.resolve()):
        raise BackupError(f"{dest} is in the data folder: the next backup would hold this one; "
                          "keep backups elsewhere (and a copy off the server)")
    ring, fpr = await asyncio.to_thread(backup_keyring, settings)
    onion_keys: list[tuple[str, bytes]] = []
    if tor_keys is not None:
        if (settings.data_dir / "onion").exists():
            raise BackupError(f"{settings.data_dir / 'onion'} exists and tor keys were given too: "
                              "which are the onion keys?")
        onion_keys = await asyncio.to_thread(read_tor_keys, tor_keys)
    store = Store(settings.store_dir, shared=settings.shared_data)
    engine = make_engine(settings.database_url)
    created = clock().astimezone(dt.UTC).replace(microsecond=0)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stream: EncryptionStream | None = None
    try:
        await require_current_schema(engine, settings.database_url)
        revision = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
        stream = await ring.start_encryption([fpr], fd)
        archive = ArchiveWriter(stream, mtime=int(created.timestamp()))
        await archive.add_bytes("FORMAT.json", json.dumps(
            {"format": FORMAT, "version": VERSION, "schema_revision": revision,
             "created_at": created.isoformat()}, sort_keys=True).encode())
        result = DumpResult(rows={}, object_names=set())
        number = 0
        async with contextlib.aclosing(dump(engine, result)) as chunks:
            async for chunk in chunks:
                number += 1
                await archive.add_bytes(f"database/{number:05d}-{chunk.table}.jsonl", chunk.body)
        for name, path in data_files(settings):
            await archive.add_file(name, path)
        for name, data in onion_keys:
            await archive.add_bytes(name, data)
        object_bytes = 0
        for name in sorted(result.object_names):
            try:
                object_bytes += await archive.add_file(f"data/store/{name}", store.path(name))
            except FileNotFoundError as exc:
                raise BackupError(f"store object {name} vanished during the backup (deleted "
                                  "meanwhile?); run the backup again") from exc
        manifest = {
            "format": FORMAT, "version": VERSION, "schema_revision": revision,
            "created_at": created.isoformat(), "database": engine.dialect.name,
            "rows": result.rows, "objects": len(result.object_names),
            "audit": {"entries": result.audit_entries, "head": result.audit_head},
            "members": archive.members,
        }
        await archive.add_bytes("MANIFEST.json", json.dumps(manifest, sort_keys=True, indent=1).encode(),
                                listed=False)
        await archive.close()
        await stream.finish()
        stream = None
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, dest)
        dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if stream is not None:
            await stream.abort()
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        await engine.dispose()
    return BackupReport(
        path=dest, size=dest.stat().st_size, rows=sum(result.rows.values()),
        objects=len(result.object_names), object_bytes=object_bytes,
        audit_entries=result.audit_entries, audit_head=result.audit_head,
        seconds=time.monotonic() - started,
    )
