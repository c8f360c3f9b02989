"""``cpcp-admin restore``: a backup (cpcp/backup.py), decrypted, back into an empty deployment.

The server cannot decrypt its backups, so the admin does, with the backup key, wherever that
key lives, and pipes the archive in: ``gpg --decrypt FILE | cpcp-admin restore -``. The archive
is read once, as a stream, into a staging folder inside the data folder; nothing is changed
until every member matches the manifest at its end (a damaged or cut-short archive changes
nothing). Then the files move into place by rename, and the rows go in, in one transaction.

Restore refuses a deployment that already holds a source, a case or an audit entry (but those
the deployment file wrote, which a fresh host made by server.yml has): it goes
into a fresh one (``cpcp-admin init`` may have run; its units, officers and secrets are
replaced). Re-running it after an interruption is safe: the database is the authority, and it
either holds the backup's rows entirely or none of them (the rows commit last).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from .backup import FORMAT, READ_CHUNK, STAGING_PREFIX, VERSION, require_owner, sqlite_files
from .db import make_engine
from .dbdump import DumpError, clear, count_rows, insert, parse_chunk, reset_sequences
from .errors import CPCPError, KeyProblem
from .gateway_secrets import create_gateway_secrets
from .migrate import alembic_config, upgrade
from .models import AuditEntry, Source
from .roster import DEPLOYMENT_ACTIONS
from .services import build_core, check_keys, publish_reply_keys
from .settings import Settings

_DB_MEMBER = re.compile(r"^database/\d{5}-[a-z_]+\.jsonl$")
_STORE_MEMBER = re.compile(r"^data/store/[0-9a-f-]{36}/[0-9a-f]{32}-[a-z]+\.gpg$")
INSERT_BATCH = 1000
BLOCK_PEEK = 512


class RestoreError(CPCPError):
    """The backup was not restored. Raised before the deployment changed, for everything the
    archive itself can be wrong about; after, only if the checks of the restored deployment
    (audit chain, reply keys) fail."""


@dataclass(frozen=True)
class RestoreReport:
    created_at: str  # when the backup was made
    rows: int
    objects: int
    audit_entries: int
    audit_head: str  # after the restore's own entry
    key_problem: str | None  # what 'cpcp-admin check' would say, if anything


class _Prefixed:
    """A byte stream with its first bytes already read (to recognise an encrypted file)."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head, self._rest = head, rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._rest.read(size)


def _member_path(name: str) -> PurePosixPath:
    """A member name we wrote ourselves, or RestoreError: nothing may land outside staging."""
    path = PurePosixPath(name)
    if path.is_absolute() or any(p in ("", ".", "..") for p in path.parts) or "\\" in name:
        raise RestoreError(f"refusing archive member {name!r}")
    if name in ("FORMAT.json", "MANIFEST.json") or _DB_MEMBER.match(name):
        return path
    if path.parts[0] == "data" and len(path.parts) > 1:
        if path.parts[1] == "store" and not _STORE_MEMBER.match(name):
            raise RestoreError(f"refusing archive member {name!r}")
        if path.parts[1] in ("tor", "logs") or path.parts[1].startswith(STAGING_PREFIX):
            raise RestoreError(f"refusing archive member {name!r}")
        return path
    raise RestoreError(f"refusing archive member {name!r}")


def stage(stream: IO[bytes], staging: Path) -> dict[str, Any]:
    """Unpack the archive into ``staging`` and check it against its manifest; return the
    manifest. Blocking: call it from a thread."""
    head = stream.read(BLOCK_PEEK)
    if head.startswith(b"-----BEGIN PGP") or head[:1] in (b"\x84", b"\x85", b"\xc1"):
        raise RestoreError("this is the encrypted backup; decrypt it with the backup key and pipe "
                           "it in: gpg --decrypt FILE | cpcp-admin restore -")
    seen: dict[str, dict[str, int | str]] = {}
    manifest: dict[str, Any] | None = None
    fmt: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=_Prefixed(head, stream), mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                if manifest is not None:
                    raise RestoreError("archive members after the manifest")
                if not member.isfile():
                    raise RestoreError(f"archive member {member.name!r} is not a regular file")
                name = member.name
                rel = _member_path(name)
                if name in seen:
                    raise RestoreError(f"archive member {name!r} appears twice")
                src = tar.extractfile(member)
                assert src is not None
                if name == "MANIFEST.json":
                    manifest = _json(src.read(), name)
                    continue
                target = staging / rel
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                digest, size = hashlib.sha256(), 0
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := src.read(READ_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                seen[name] = {"size": size, "sha256": digest.hexdigest()}
                if fmt is None:
                    if name != "FORMAT.json":
                        raise RestoreError("not a CPCP backup (no FORMAT.json first)")
                    fmt = _json(target.read_bytes(), name)
                    _check_format(fmt)
    except (tarfile.TarError, EOFError) as exc:
        raise RestoreError(f"the archive is damaged or cut short: {exc}") from exc
    if fmt is None:
        raise RestoreError("not a CPCP backup (empty archive)")
    if manifest is None:
        raise RestoreError("the archive is cut short: its manifest is missing")
    if manifest.get("members") != seen:
        listed = manifest.get("members") or {}
        bad = sorted(n for n in set(listed) | set(seen) if listed.get(n) != seen.get(n))
        raise RestoreError(f"archive members do not match the manifest: {', '.join(bad[:5])}")
    return manifest



def _json(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise RestoreError(f"{name} is not JSON") from exc
    if not isinstance(value, dict):
        raise RestoreError(f"{name} is not a JSON object")
    return value


def _check_format(fmt: dict[str, Any]) -> None:
    if fmt.get("format") != FORMAT:
        raise RestoreError("not a CPCP backup")
    if fmt.get("version") != VERSION:
        raise RestoreError(f"backup format version {fmt.get('version')}; this release reads {VERSION}")
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if fmt.get("schema_revision") != head:
        raise RestoreError(
            f"the backup's database schema is {fmt.get('schema_revision')}, this release's is {head}: "
            "restore it with the release that made it, then upgrade")


async def _require_empty(database_url: str) -> None:
    """A fresh deployment: no source, no case, and in the audit log nothing but what applying
    the deployment file wrote (a host made by server.yml has that before its restore)."""
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            counts = await count_rows(conn, ["sources", "cases"])
            counts["audit_log"] = await conn.scalar(
                select(func.count()).select_from(AuditEntry)
                .where(AuditEntry.action.not_in(DEPLOYMENT_ACTIONS))) or 0
    finally:
        await engine.dispose()
    held = {k: v for k, v in counts.items() if v}
    if held:
        what = ", ".join(f"{v} {k}" for k, v in held.items())
        raise RestoreError(f"the deployment holds data ({what}); restore goes into a fresh one")


def _chunk_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from fh


def _chunks(staging: Path) -> list[Path]:
    return sorted((staging / "database").glob("*.jsonl"))


def check_rows(staging: Path, manifest: dict[str, Any]) -> int:
    """Decode every staged row (as loading will) and match the manifest's counts, before
    anything of the deployment changes; the row count. Blocking."""
    counted: dict[str, int] = {}
    for path in _chunks(staging):
        try:
            table, rows = parse_chunk(_chunk_lines(path))
        except DumpError as exc:
            raise RestoreError(f"{path.name}: {exc}") from exc
        counted[table.name] = counted.get(table.name, 0) + len(rows)
    if counted != manifest.get("rows"):
        raise RestoreError(f"row counts {counted} differ from the manifest's {manifest.get('rows')}")
    return sum(counted.values())


async def _load(database_url: str, staging: Path) -> None:
    """Replace every row with the backup's, in one transaction."""
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            await clear(conn)
            for path in _chunks(staging):
                table, rows = await asyncio.to_thread(parse_chunk, _chunk_lines(path))
                for start in range(0, len(rows), INSERT_BATCH):
                    await insert(conn, table, rows[start:start + INSERT_BATCH])
            await reset_sequences(conn)
    finally:
        await engine.dispose()


def _settle(path: Path) -> None:
    for folder, _dirs, files in os.walk(path):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(Path(folder) / name, 0o600)


def move_into_place(staging: Path, data_dir: Path, *, keep: frozenset[Path] = frozenset()) -> None:
    """Staged files replace the data folder's (a restored store object joins the store);
    ``keep`` (this deployment's SQLite files) are never replaced. Blocking."""
    staged = staging / "data"
    replaced = staging / "replaced"
    replaced.mkdir(mode=0o700, exist_ok=True)
    if not staged.is_dir():
        return
    for entry in staged.iterdir():
        if any(k == data_dir / entry.name or k.is_relative_to(data_dir / entry.name) for k in keep):
            raise RestoreError(f"the backup's data/{entry.name} would replace this deployment's "
                               "SQLite database")
    _settle(staged)
    for entry in sorted(staged.iterdir()):
        target = data_dir / entry.name
        if entry.name == "store":
            target.mkdir(mode=0o700, exist_ok=True)
            for case in sorted(entry.iterdir()):
                (target / case.name).mkdir(mode=0o700, exist_ok=True)
                for obj in case.iterdir():
                    os.replace(obj, target / case.name / obj.name)
            continue
        if target.exists() or target.is_symlink():
            os.rename(target, replaced / entry.name)
        os.rename(entry, target)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def restore(settings: Settings, stream: IO[bytes]) -> RestoreReport:
    """Restore the decrypted archive read from ``stream`` into the deployment of ``settings``."""
    data_dir: Path = settings.data_dir
    require_owner(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    await asyncio.to_thread(upgrade, settings.database_url)  # an empty database gets the schema
    await _require_empty(settings.database_url)
    for left in data_dir.glob(f"{STAGING_PREFIX}*"):  # of a restore that was killed
        await asyncio.to_thread(shutil.rmtree, left, True)
    staging = data_dir / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    try:
        manifest = await asyncio.to_thread(stage, stream, staging)
        rows = await asyncio.to_thread(check_rows, staging, manifest)
        # Files first, rows last: until the rows commit the deployment still counts as empty,
        # so an interrupted restore can simply be run again.
        keep = frozenset(p.resolve() for p in sqlite_files(settings))
        await asyncio.to_thread(partial(move_into_place, staging, data_dir.resolve(), keep=keep))
        await _load(settings.database_url, staging)
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)
    return await _after(settings, manifest, rows)


async def drill(settings: Settings, stream: IO[bytes]) -> RestoreReport:
    """A restore drill: the backup restored into a throwaway SQLite deployment in a folder of
    the data folder (0700; backups leave it out), checked as a real restore is, then deleted.
    The live deployment is not touched, so a drill may run while the services do; it needs
    as much free space as the backup's store."""
    # Short: gpg-agent's socket lies in each GnuPG home, and a socket path has at most 107 bytes.
    scratch = settings.data_dir / f"{STAGING_PREFIX}drill-{secrets.token_hex(4)}"
    scratch.mkdir(mode=0o700, parents=True)
    try:
        trial = dataclasses.replace(settings, data_dir=scratch,
                                    database_url=f"sqlite+aiosqlite:///{scratch / 'drill.sqlite'}")
        return await restore(trial, stream)
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


async def _after(settings: Settings, manifest: dict[str, Any], rows: int) -> RestoreReport:
    """Check what came back and record the restore in the audit log. As every role: a
    restore runs as root, or as the one user of a single-user deployment."""
    if not settings.gateway_secrets_file.exists():
        # A backup of a release before the gateway had keys of its own; its TOTP secrets are
        # plaintext and are sealed below, with these keys.
        create_gateway_secrets(settings.gateway_secrets_file)
    core = build_core(settings, "all")
    try:
        check = await core.audit.verify()
        audit = manifest.get("audit") or {}
        if not check.ok or check.entries != audit.get("entries") or (
                check.entries and check.head != audit.get("head")):
            raise RestoreError(f"the restored audit log does not verify: {check}")
        async with core.sessions() as db:
            fingerprints = set((await db.scalars(select(Source.reply_key_fingerprint))).all())
        missing = fingerprints - await asyncio.to_thread(core.source_keys.secret_fingerprints)
        if missing:
            raise RestoreError(f"{len(missing)} source reply key(s) are missing from the restored keyring")
        await core.officer_auth.seal_plaintext_totp()
        await publish_reply_keys(core)
        problem: str | None = None
        try:
            await check_keys(core)
        except KeyProblem as exc:
            problem = str(exc)
        await core.audit.append(officer_id=None, action="restored_from_backup",
                                backup_created_at=manifest.get("created_at"),
                                backup_audit_head=audit.get("head"))
        after = await core.audit.verify()
    finally:
        await core.close()
    return RestoreReport(created_at=str(manifest.get("created_at")), rows=rows,
                         objects=int(manifest.get("objects") or 0), audit_entries=after.entries,
                         audit_head=after.head, key_problem=problem)
