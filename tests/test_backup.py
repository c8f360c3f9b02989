"""Backup and restore: a server lost after a backup comes back as the same server.

Real gpg, real databases (SQLite and PostgreSQL), the real admin code. The backup key in
these tests is the throwaway oversight key (its private half is in ``officer_gnupg``).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cpcp.admin import init_deployment
from cpcp.backup import BackupError, make_backup
from cpcp.codenames import generate_codename
from cpcp.errors import ConfigError, KeyProblem
from cpcp.models import ApiToken, AuditEntry, Source
from cpcp.restore import RestoreError, drill, restore
from cpcp.services import CoreServices, build_core
from cpcp.settings import load_settings

from .conftest import (
    FPR,
    fresh_database,
    gpg_decrypt,
    gpg_encrypt,
    stop_gpg_agents,
    write_deployment,
)

CANARY = "BACKUP-CANARY-" + secrets.token_hex(8)
BACKUP_KEY = f"""
[backup]
fingerprint = "{FPR['oversight']}"
key_file = "oversight.asc"
"""
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    root: Path
    config: Path
    core: CoreServices


@pytest.fixture
def second_database_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    """Where the restored server's database lives: a new SQLite file or PostgreSQL database."""
    with fresh_database(db_kind, tmp_path / "new" / "data" / "cpcp.sqlite", "cpcp_restore") as url:
        yield url


def _init(root: Path, database_url: str) -> Path:
    """A deployment as ``cpcp-admin init`` (the playbook) leaves it: secrets, schema, units."""
    config = write_deployment(root, database_url, extra=BACKUP_KEY, custodian=True)
    init_deployment(load_settings(config, env={}))
    return config


async def _server(root: Path, database_url: str) -> Server:
    config = await asyncio.to_thread(_init, root, database_url)
    return Server(root=root, config=config, core=build_core(load_settings(config, env={})))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path: a restore drill's GnuPG homes lie deeper in the data folder,
    and gpg-agent's socket path (inside each home) may not exceed 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="cpcp-", dir="/tmp"))
    yield path
    stop_gpg_agents(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def old_config(short_tmp: Path, database_url: str, db_kind: str) -> Path:
    if db_kind == "sqlite":
        database_url = f"sqlite+aiosqlite:///{short_tmp / 'data' / 'cpcp.sqlite'}"
    return _init(short_tmp, database_url)


@pytest.fixture
def new_config(tmp_path: Path, second_database_url: str) -> Path:
    return _init(tmp_path / "new", second_database_url)


@pytest.fixture
async def old(old_config: Path) -> AsyncIterator[Server]:
    server = Server(old_config.parent, old_config, build_core(load_settings(old_config, env={})))
    yield server
    await server.core.close()


@pytest.fixture
async def new(new_config: Path) -> AsyncIterator[Server]:
    server = Server(new_config.parent, new_config, build_core(load_settings(new_config, env={})))
    yield server
    await server.core.close()


@dataclass
class Journey:
    codename: str
    source_id: int
    case_id: int
    reply_id: int


async def journey(core: CoreServices, officer_gnupg: Path) -> Journey:
    """A source's tip with a file and sealed contact details; an officer's reply."""
    codename = generate_codename()
    login = await core.sources.create(codename)
    unit = await core.cases.unit_by_slug("ps-sadar-bazar")
    async with core.intake.draft(unit, custodians=await core.cases.custodian_fingerprints()) as draft:
        await draft.add_message({"text": f"tip {CANARY}"})
        await draft.open_file("photo.jpg", "image/jpeg")
        await draft.write_file(f"file {CANARY}".encode() * 1000)
        await draft.close_file()
        await draft.add_contact(f"phone {CANARY}")
        await draft.commit(source_id=login.source_id, unit=unit)
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None
    officer = await core.officer_auth.identity("officer-a")
    fpr, armored = await core.casework.source_key(officer, case.id)
    subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"], input=armored.encode(),
                   check=True, capture_output=True)
    reply = gpg_encrypt(officer_gnupg, f"reply {CANARY}".encode(), [fpr, FPR["officer-a"]])
    reply_id = await core.casework.add_reply(officer, case.id, reply)
    await core.officer_auth.issue_token(officer)
    return Journey(codename=str(codename), source_id=login.source_id, case_id=case.id, reply_id=reply_id)


def fake_onion_key(server: Server) -> bytes:
    """What tor keeps for the source onion: its key is its address."""
    folder = server.core.settings.data_dir / "onion" / "source"
    folder.mkdir(mode=0o700, parents=True)
    key = secrets.token_bytes(96)
    (folder / "hs_ed25519_secret_key").write_bytes(key)
    os.chmod(folder / "hs_ed25519_secret_key", 0o600)
    (folder / "hostname").write_text("a" * 56 + ".onion\n")
    return key


def decrypt(officer_gnupg: Path, path: Path) -> bytes:
    return gpg_decrypt(officer_gnupg, path.read_bytes())


def members(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|") as tar:
        return [m.name for m in tar]


async def test_a_restored_server_is_the_same_server(old: Server, new: Server, officer_gnupg: Path,
                                                    custodian_gnupg: Path) -> None:
    j = await journey(old.core, officer_gnupg)
    onion_key = fake_onion_key(old)
    before = await old.core.audit.verify()
    dest = old.root / "backup.gpg"
    report = await make_backup(old.core.settings, dest)
    assert report.objects == 4 and report.audit_head == before.head
    assert os.stat(dest).st_mode & 0o777 == 0o600
    assert CANARY.encode() not in dest.read_bytes()
    archive = decrypt(officer_gnupg, dest)  # stock gpg and the backup key's private half
    names = members(archive)
    assert names[0] == "FORMAT.json" and names[-1] == "MANIFEST.json"
    assert "data/secrets.json" in names and "data/onion/source/hs_ed25519_secret_key" in names
    assert not any(n.startswith(("data/tor/", "data/logs/")) or n.endswith("cpcp.sqlite") for n in names)
    assert sum(n.startswith("data/store/") for n in names) == 4
    # Nothing in the archive is a tip, a reply or contact details in clear.
    assert CANARY.encode() not in archive

    await new.core.close()
    restored = await restore(new.core.settings, io.BytesIO(archive))
    assert restored.rows == report.rows and restored.objects == 4 and restored.key_problem is None
    new.core = build_core(new.core.settings)
    core = new.core
    # The audit chain is the old one, plus the restore's own entry after its head.
    check = await core.audit.verify()
    assert check.ok and check.entries == before.entries + 1 and check.head == restored.audit_head
    async with core.sessions() as db:
        last = await db.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1))
        assert last is not None and last.action == "restored_from_backup" and last.prev_hash == before.head
        assert await db.scalar(select(func.count()).select_from(ApiToken)) == 0  # officers log in again
    # The source's codename still works (same salt) and opens its reply (same reply key).
    login = await core.sources.login(j.codename, caller="test")
    assert login.source_id == j.source_id
    reply = await core.cases.reply_ciphertext(login.source_id, j.reply_id)
    assert await core.sources.decrypt_reply(login, reply) == f"reply {CANARY}".encode()
    # The officer finds the case and its documents decrypt with the officer's key.
    officer = await core.officer_auth.identity("officer-a")
    cases = await core.casework.list_cases(officer)
    assert [c["id"] for c in cases] == [j.case_id]
    plaintexts = []
    for sub in cases[0]["submissions"]:
        for doc in sub["documents"]:
            path = await core.casework.document_path(officer, doc["id"])
            plaintexts.append(gpg_decrypt(officer_gnupg, path.read_bytes()))
    assert any(CANARY.encode() in p for p in plaintexts) and len(plaintexts) == 2
    # The sealed contact details came back, for the custodian's key only.
    sealed = [p for p in (new.core.settings.store_dir).rglob("*-sealed.gpg")]
    assert len(sealed) == 1 and CANARY.encode() in gpg_decrypt(custodian_gnupg, sealed[0].read_bytes())
    # Same secrets, same onion address, kept private.
    assert (new.core.settings.secrets_file.read_bytes() == old.core.settings.secrets_file.read_bytes())
    key = new.core.settings.data_dir / "onion" / "source" / "hs_ed25519_secret_key"
    assert key.read_bytes() == onion_key and key.stat().st_mode & 0o777 == 0o600
    assert not list(new.core.settings.data_dir.glob(".restore-*"))
    # The restored server takes new tips: ids continue after the restored ones (PostgreSQL
    # sequences were moved on).
    second = await journey(core, officer_gnupg)
    assert second.case_id > j.case_id and second.source_id > j.source_id


async def test_a_snapshot_does_not_see_what_is_written_while_it_is_read(old: Server) -> None:
    from cpcp.db import make_engine
    from cpcp.dbdump import DumpResult, dump

    await old.core.audit.append(officer_id=None, action="before")
    engine = make_engine(old.core.settings.database_url)
    result = DumpResult(rows={}, object_names=set())
    chunks = dump(engine, result)
    first = await chunks.__anext__()
    assert first.table == "events"
    await old.core.audit.append(officer_id=None, action="during")  # after the snapshot began
    rest = [c async for c in chunks]
    await engine.dispose()
    audit = b"".join(c.body for c in rest if c.table == "audit_log")
    assert b'"before"' in audit and b'"during"' not in audit
    # Every entry but "during" (init wrote the deployment file's entries before "before").
    assert result.rows["audit_log"] == (await old.core.audit.verify()).entries - 1


async def test_a_restore_drill_checks_a_backup_and_leaves_the_live_deployment_alone(
        old: Server, officer_gnupg: Path) -> None:
    """On PostgreSQL this is also a PostgreSQL backup restored into SQLite (the drill's)."""
    await journey(old.core, officer_gnupg)
    await make_backup(old.core.settings, old.root / "b.gpg")
    archive = decrypt(officer_gnupg, old.root / "b.gpg")
    before = await old.core.audit.verify()
    secrets_before = old.core.settings.secrets_file.read_bytes()
    report = await drill(old.core.settings, io.BytesIO(archive))
    assert report.objects == 4 and report.key_problem is None
    assert report.audit_entries == before.entries + 1  # the trial's own entry, in the trial
    assert await old.core.audit.verify() == before
    assert old.core.settings.secrets_file.read_bytes() == secrets_before
    assert not list(old.core.settings.data_dir.glob(".restore-*"))
    with pytest.raises(RestoreError, match="cut short|damaged"):
        await drill(old.core.settings, io.BytesIO(archive[:len(archive) // 2]))
    assert not list(old.core.settings.data_dir.glob(".restore-*"))


async def test_restore_refuses_a_deployment_that_holds_data(old: Server, new: Server,
                                                            officer_gnupg: Path) -> None:
    await journey(old.core, officer_gnupg)
    await make_backup(old.core.settings, old.root / "b.gpg")
    archive = decrypt(officer_gnupg, old.root / "b.gpg")
    await new.core.sources.create(generate_codename())
    secrets_before = new.core.settings.secrets_file.read_bytes()
    with pytest.raises(RestoreError, match="holds data .*1 sources"):
        await restore(new.core.settings, io.BytesIO(archive))
    assert new.core.settings.secrets_file.read_bytes() == secrets_before


async def test_a_damaged_or_cut_short_archive_changes_nothing(old: Server, new: Server,
                                                              officer_gnupg: Path) -> None:
    await journey(old.core, officer_gnupg)
    await make_backup(old.core.settings, old.root / "b.gpg")
    archive = decrypt(officer_gnupg, old.root / "b.gpg")
    secrets_before = new.core.settings.secrets_file.read_bytes()
    async with new.core.sessions() as db:  # what init wrote: the deployment file's entries
        audit_before = await db.scalar(select(func.count()).select_from(AuditEntry))
    at = archive.index(b'"codename_salt"')  # inside data/secrets.json
    flipped = archive[:at] + bytes([archive[at] ^ 1]) + archive[at + 1:]
    manifest_at = archive.rindex(b"MANIFEST.json") - 100
    for bad, why in ((archive[:manifest_at], "cut short|damaged"),
                     (archive[:len(archive) // 3], "cut short|damaged"),
                     (flipped, "do not match the manifest|damaged"),
                     (b"", "not a CPCP backup|damaged")):
        with pytest.raises(RestoreError, match=why):
            await restore(new.core.settings, io.BytesIO(bad))
        assert new.core.settings.secrets_file.read_bytes() == secrets_before
        assert not list(new.core.settings.data_dir.glob(".restore-*"))
        async with new.core.sessions() as db:
            assert await db.scalar(select(func.count()).select_from(Source)) == 0
            assert await db.scalar(select(func.count()).select_from(AuditEntry)) == audit_before
    assert not list(new.core.settings.store_dir.glob("*/*.gpg"))


async def test_the_encrypted_file_itself_is_told_apart(old: Server, new: Server) -> None:
    await make_backup(old.core.settings, old.root / "b.gpg")
    with pytest.raises(RestoreError, match="gpg --decrypt FILE"):
        await restore(new.core.settings, io.BytesIO((old.root / "b.gpg").read_bytes()))


async def test_a_backup_needs_its_pinned_key_and_never_overwrites(old: Server, tmp_path: Path) -> None:
    import dataclasses

    settings = old.core.settings
    no_key = dataclasses.replace(settings, backup=dataclasses.replace(settings.backup, fingerprint=""))
    with pytest.raises(ConfigError, match="no backup key"):
        await make_backup(no_key, tmp_path / "x.gpg")
    wrong = dataclasses.replace(settings, backup=dataclasses.replace(settings.backup, fingerprint=FPR["officer-a"]))
    with pytest.raises(KeyProblem, match="backup key: no public key"):
        await make_backup(wrong, tmp_path / "x.gpg")
    assert not list(tmp_path.glob("*x.gpg*"))
    with pytest.raises(BackupError, match="in the data folder"):
        await make_backup(settings, settings.data_dir / "x.gpg")
    assert not list(settings.data_dir.glob("*x.gpg*"))
    (tmp_path / "there.gpg").write_bytes(b"an older backup")
    with pytest.raises(BackupError, match="never overwritten"):
        await make_backup(settings, tmp_path / "there.gpg")
    assert (tmp_path / "there.gpg").read_bytes() == b"an older backup"


def test_the_backup_fingerprint_is_checked_at_start_up(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "sqlite+aiosqlite:///x.sqlite",
                              extra='\n[backup]\nfingerprint = "abc"\n')
    with pytest.raises(ConfigError, match="backup.fingerprint"):
        load_settings(config, env={})


async def test_the_admin_backs_up_and_restores_through_a_pipe(old: Server, new: Server,
                                                               officer_gnupg: Path) -> None:
    """What the README tells the admin to type, in a shell: backup, then decrypt piped into
    restore (the backup key is not on the server)."""
    j = await journey(old.core, officer_gnupg)
    await new.core.close()
    admin = [sys.executable, "-m", "cpcp.admin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPCP_")}
    dest = old.root / "cpcp-backup.gpg"
    done = subprocess.run([*admin, "--config", str(old.config), "backup", str(dest)],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backup written: {dest}") and "4 store objects" in done.stdout
    trial = (f"gpg --homedir {officer_gnupg} --batch --quiet --decrypt {dest} | "
             f"{sys.executable} -m cpcp.admin --config {old.config} restore-drill -")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", trial], capture_output=True, text=True,
                          check=False, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("restore drill passed") and "4 store objects" in done.stdout
    pipe = (f"gpg --homedir {officer_gnupg} --batch --quiet --decrypt {dest} | "
            f"{sys.executable} -m cpcp.admin --config {new.config} restore -")
    done = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, text=True, check=False,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "4 store objects" in done.stdout and "audit log intact" in done.stdout
    again = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, text=True, check=False,
                           env=env, cwd=ROOT)
    assert again.returncode == 2 and "holds data" in again.stderr
    new.core = build_core(new.core.settings)
    login = await new.core.sources.login(j.codename, caller="test")
    assert login.source_id == j.source_id


@pytest.mark.postgres
async def test_a_sqlite_server_restores_into_postgresql(tmp_path: Path, officer_gnupg: Path) -> None:
    with fresh_database("postgres", tmp_path / "unused", "cpcp_restore") as url:
        old = await _server(tmp_path / "old", f"sqlite+aiosqlite:///{tmp_path / 'old' / 'data' / 'cpcp.sqlite'}")
        new = await _server(tmp_path / "new", url)
        try:
            j = await journey(old.core, officer_gnupg)
            await make_backup(old.core.settings, tmp_path / "b.gpg")
            await new.core.close()
            await restore(new.core.settings, io.BytesIO(decrypt(officer_gnupg, tmp_path / "b.gpg")))
            new.core = build_core(new.core.settings)  # the services start after the restore
            login = await new.core.sources.login(j.codename, caller="test")
            reply = await new.core.cases.reply_ciphertext(login.source_id, j.reply_id)
            assert await new.core.sources.decrypt_reply(login, reply) == f"reply {CANARY}".encode()
            assert (await new.core.audit.verify()).ok
        finally:
            await old.core.close()
            await new.core.close()



def _tar(members: list[tuple[str, bytes]], *, link: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("data/gnupg/sources/pubring.kbx")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize("name", ["data/../../escaped", "/etc/escaped", "data/store/../../escaped",
                                  "database/../escaped", "escaped", "data/tor/torrc"])
def test_an_archive_member_outside_its_place_is_refused(tmp_path: Path, name: str) -> None:
    from cpcp.restore import stage

    fmt = json.dumps({"format": "cpcp-backup", "version": 1, "schema_revision": _head()}).encode()
    staging = tmp_path / "a" / "b" / "staging"
    staging.mkdir(parents=True)
    with pytest.raises(RestoreError, match="refusing archive member"):
        stage(io.BytesIO(_tar([("FORMAT.json", fmt), (name, b"x")])), staging)
    assert not list(tmp_path.rglob("escaped")) and not list(tmp_path.rglob("torrc"))


def test_a_link_in_the_archive_is_refused(tmp_path: Path) -> None:
    from cpcp.restore import stage

    fmt = json.dumps({"format": "cpcp-backup", "version": 1, "schema_revision": _head()}).encode()
    with pytest.raises(RestoreError, match="not a regular file"):
        stage(io.BytesIO(_tar([("FORMAT.json", fmt)], link="/etc/shadow")), tmp_path)


def test_a_backup_of_another_schema_or_format_is_refused_at_its_first_member(tmp_path: Path) -> None:
    from cpcp.restore import stage

    for fmt, why in (({"format": "cpcp-backup", "version": 1, "schema_revision": "0001"}, "schema is 0001"),
                     ({"format": "cpcp-backup", "version": 2, "schema_revision": _head()}, "version 2"),
                     ({"format": "tarball"}, "not a CPCP backup")):
        staging = tmp_path / secrets.token_hex(4)
        staging.mkdir()
        with pytest.raises(RestoreError, match=why):
            stage(io.BytesIO(_tar([("FORMAT.json", json.dumps(fmt).encode())])), staging)
    with pytest.raises(RestoreError, match="no FORMAT.json first"):
        stage(io.BytesIO(_tar([("data/secrets.json", b"{}")])), tmp_path / secrets.token_hex(4))


def test_a_restore_never_replaces_the_deployments_own_sqlite_file(tmp_path: Path) -> None:
    from cpcp.restore import move_into_place

    data = tmp_path / "data"
    data.mkdir()
    (data / "cpcp.sqlite").write_bytes(b"the live database")
    staged = tmp_path / "staging" / "data"
    staged.mkdir(parents=True)
    (staged / "cpcp.sqlite").write_bytes(b"a stale file from the backup")
    (staged / "secrets.json").write_bytes(b"{}")
    with pytest.raises(RestoreError, match="SQLite database"):
        move_into_place(tmp_path / "staging", data, keep=frozenset({data / "cpcp.sqlite"}))
    assert (data / "cpcp.sqlite").read_bytes() == b"the live database"
    assert not (data / "secrets.json").exists()


def _head() -> str:
    from alembic.script import ScriptDirectory

    from cpcp.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can be in another user's folder")
async def test_root_is_sent_to_the_data_folders_owner(old: Server, new: Server, db_kind: str) -> None:
    """gpg run as root in the services' GnuPG homes would leave root's agent sockets there."""
    if db_kind != "sqlite":
        pytest.skip("ownership of files does not depend on the database")
    import pwd

    nobody = pwd.getpwnam("nobody")
    for server in (old, new):
        os.chown(server.core.settings.data_dir, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(ConfigError, match="run this as that user"):
        await make_backup(old.core.settings, old.root / "c.gpg")
    assert not list(old.root.glob("*c.gpg*"))
    secrets_before = new.core.settings.secrets_file.read_bytes()
    with pytest.raises(ConfigError, match="run this as that user"):
        await restore(new.core.settings, io.BytesIO(b"never read"))
    assert new.core.settings.secrets_file.read_bytes() == secrets_before


async def test_the_archive_format_is_known(old: Server, officer_gnupg: Path, db_kind: str) -> None:
    """Known answer for what a restore reads first, and the members' neutral tar headers."""
    import datetime as dt

    if db_kind != "sqlite":
        pytest.skip("the archive format does not depend on the database")
    j = await journey(old.core, officer_gnupg)
    # An object no row refers to (an upload in flight, a leftover) stays out of the backup.
    old.core.store.write_bytes(b"orphan", case_public_id="00000000-0000-4000-8000-000000000000", role="file")
    made = dt.datetime(2026, 12, 2, 6, 0, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    report = await make_backup(old.core.settings, old.root / "b.gpg", clock=lambda: made)
    assert report.objects == 4
    archive = decrypt(officer_gnupg, old.root / "b.gpg")
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r|") as tar:
        infos = []
        for info in tar:
            body = tar.extractfile(info).read()  # type: ignore[union-attr]
            infos.append((info, body))
    first, body = infos[0]
    assert first.name == "FORMAT.json"
    assert body == (b'{"created_at": "2026-12-02T00:30:30+00:00", "format": "cpcp-backup", '
                    b'"schema_revision": "' + _head().encode() + b'", "version": 1}')
    assert {(i.mode, i.uid, i.gid, i.uname, i.gname, i.mtime) for i, _ in infos} == {
        (0o600, 0, 0, "", "", int(made.timestamp()))}
    names = [i.name for i, _ in infos]
    tables = [n for n in names if n.startswith("database/")]
    assert tables[:4] == ["database/00001-events.jsonl", "database/00002-officers.jsonl",
                          "database/00003-response_targets.jsonl", "database/00004-sources.jsonl"]
    assert "database/00004-api_tokens.jsonl" not in names and not any("api_tokens" in n for n in names)
    assert not any("00000000-0000-4000-8000-000000000000" in n for n in names)
    manifest = json.loads(infos[-1][1])
    assert infos[-1][0].name == "MANIFEST.json"
    assert set(manifest) == {"audit", "created_at", "database", "format", "members", "objects", "rows",
                             "schema_revision", "version"}
    assert manifest["rows"]["sources"] == 1 and manifest["rows"]["cases"] == 1 and j.case_id == 1
    assert set(manifest["members"]) == set(names[:-1])


def _tor_keys_tar(members: list[tuple[str, bytes]]) -> bytes:
    """What ``tar -C /var/lib/cpcp-tor -cf - onion`` run by tor's user writes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


async def test_onion_keys_handed_over_by_tors_user_are_backed_up_and_restored(
        old: Server, new: Server, officer_gnupg: Path) -> None:
    """Where tor runs as a user of its own, its onion keys come in as a tar stream on stdin
    (``backup --tor-keys -``); restore puts them in the data folder's onion/, where the playbook
    hands them to tor's user again."""
    key = secrets.token_bytes(96)
    stream = io.BytesIO(_tor_keys_tar([("onion/source/hs_ed25519_secret_key", key),
                                       ("onion/source/hostname", b"b" * 56 + b".onion\n")]))
    dest = old.root / "with-tor-keys.gpg"
    await make_backup(old.core.settings, dest, tor_keys=stream)
    archive = decrypt(officer_gnupg, dest)
    assert "data/onion/source/hs_ed25519_secret_key" in members(archive)
    await new.core.close()
    await restore(new.core.settings, io.BytesIO(archive))
    assert (new.core.settings.data_dir / "onion" / "source" / "hs_ed25519_secret_key").read_bytes() == key


@pytest.mark.parametrize(("tar_members", "problem"), [
    ([("../escape", b"x")], "only onion/"),
    ([("keys/other", b"x")], "only onion/"),
    ([], "no onion key"),
])
async def test_tor_keys_that_are_not_tors_onion_folder_are_refused(
        old: Server, tar_members: list[tuple[str, bytes]], problem: str) -> None:
    dest = old.root / "refused.gpg"
    with pytest.raises(BackupError, match=problem):
        await make_backup(old.core.settings, dest, tor_keys=io.BytesIO(_tor_keys_tar(tar_members)))
    assert not dest.exists() and not list(old.root.glob(".refused.gpg.*"))
    with pytest.raises(BackupError, match="not a tar stream"):
        await make_backup(old.core.settings, dest, tor_keys=io.BytesIO(b"not a tar" * 100))
