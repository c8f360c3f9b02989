"""Known-answer tests: fixed vectors for every value that outlives the code that computed it.

A codename's lookup id and reply-key passphrase, and every audit entry's hash, are stored (or
locked into a key) by one version and recomputed by the next. A change to a cost parameter, an
HMAC label, the genesis value or a JSON separator passes every round-trip test, yet after an
upgrade it locks out every existing source or makes ``audit-verify`` report tampering on every
existing log. These vectors were computed once (December 2026) and must never change; each is
also recomputed here along an independent path (argon2's C context API checked against RFC 9106,
HMAC and SHA-256 written out from hashlib, onion client keys against RFC 7748), so a vector is
not merely a snapshot of a bug.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import time
from pathlib import Path

import pytest
from _argon2_cffi_bindings import ffi, lib  # type: ignore[import-untyped]  # what low_level wraps
from argon2.low_level import ARGON2_VERSION, Type, core
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cpcp.audit import GENESIS, AuditCheck, AuditLog, _entry_hash
from cpcp.codenames import Codename, derive_keys, normalize_codename
from cpcp.models import AuditEntry, Document, DocumentRole
from cpcp.services import CoreServices
from cpcp.settings import KdfSettings
from cpcp.store import Store
from journalist_app.desk.casebook import FileEntry, Message
from onion.clients import ClientPrivateKey, auth_line, auth_private_line, b32, clamp, public_key

from .conftest import gpg_decrypt
from .schema import sessions_fixture  # noqa: F401 (the "sessions" fixture)

# -- codename key derivation -------------------------------------------------------------------

CODENAME = Codename("abacus drop-down zoom yo-yo t-shirt legroom abdomen")
SALT = bytes(range(32))
LIGHT = KdfSettings(time_cost=1, memory_kib=8192, parallelism=1)

LIGHT_LOOKUP_ID = "613a573372beb5ea437a038ec6e12db4e3dacd598b12fccadbff8a8e0963dc0f"
LIGHT_REPLY_PASSPHRASE = "ebf8b817dda3ee3da0e80b2ed54be33d99ca84d8e6e24c6678747faaef01ebab"
# Production's default cost (64 MiB, 3 passes, 1 lane): what every deployment has stored.
DEFAULT_LOOKUP_ID = "268408a88783b0cb91eb1f48fd64db5d6e96b54c6be9923e573018c1ea0f2cab"
DEFAULT_REPLY_PASSPHRASE = "84ea3c8491467e4840ebe6650af8dedc9ed6e18fbc92f8e8a8eb8c8f4a21c0ec"


def _argon2id_by_context(
    password: bytes, salt: bytes, *, t: int, m: int, p: int, length: int,
    secret: bytes = b"", ad: bytes = b"",
) -> bytes:
    """argon2id through the C library's argon2_ctx, not hash_secret_raw which codenames uses."""
    out = ffi.new("uint8_t[]", length)

    def buf(data: bytes) -> object:
        return ffi.new("uint8_t[]", data) if data else ffi.NULL

    keep = [buf(password), buf(salt), buf(secret), buf(ad)]  # alive until argon2_ctx returns
    ctx = ffi.new("argon2_context *", {
        "out": out, "outlen": length,
        "pwd": keep[0], "pwdlen": len(password),
        "salt": keep[1], "saltlen": len(salt),
        "secret": keep[2], "secretlen": len(secret),
        "ad": keep[3], "adlen": len(ad),
        "t_cost": t, "m_cost": m, "lanes": p, "threads": p,
        "version": ARGON2_VERSION,
        "allocate_cbk": ffi.NULL, "free_cbk": ffi.NULL, "flags": lib.ARGON2_DEFAULT_FLAGS,
    })
    assert core(ctx, Type.ID.value) == lib.ARGON2_OK
    return bytes(ffi.buffer(out, length))


def _hmac_sha256(key: bytes, message: bytes) -> str:
    """RFC 2104 HMAC-SHA-256 written out from SHA-256 (key shorter than the 64-byte block)."""
    block = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block) + message).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in block) + inner).hexdigest()


def test_argon2id_context_path_gives_rfc9106_test_vector() -> None:
    # RFC 9106, section 5.3 (Argon2id, version 0x13).
    tag = _argon2id_by_context(
        b"\x01" * 32, b"\x02" * 16, secret=b"\x03" * 8, ad=b"\x04" * 12, t=3, m=32, p=4, length=32
    )
    assert tag.hex() == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"


@pytest.mark.parametrize(
    ("kdf", "lookup_id", "reply_passphrase"),
    [
        (LIGHT, LIGHT_LOOKUP_ID, LIGHT_REPLY_PASSPHRASE),
        (KdfSettings(), DEFAULT_LOOKUP_ID, DEFAULT_REPLY_PASSPHRASE),
    ],
    ids=["light", "production-default"],
)
def test_derived_keys_match_fixed_vectors(kdf: KdfSettings, lookup_id: str, reply_passphrase: str) -> None:
    keys = derive_keys(CODENAME, salt=SALT, kdf=kdf)
    assert keys.lookup_id == lookup_id
    assert keys.reply_passphrase == reply_passphrase


def test_production_kdf_cost_is_what_the_stored_vectors_were_made_with() -> None:
    # Changing a default changes every lookup id: that needs a migration, not an edit.
    assert KdfSettings() == KdfSettings(time_cost=3, memory_kib=65536, parallelism=1)


def test_fixed_vectors_recomputed_independently() -> None:
    master = _argon2id_by_context(CODENAME.encode("utf-8"), SALT, t=1, m=8192, p=1, length=32)
    assert _hmac_sha256(master, b"cpcp/lookup-id/v1") == LIGHT_LOOKUP_ID
    assert _hmac_sha256(master, b"cpcp/reply-key/v1") == LIGHT_REPLY_PASSPHRASE


def test_the_typed_codename_reaches_the_vector() -> None:
    # What a source types, messily, must derive the very keys stored when the codename was made.
    typed = "  Abacus, DROP-DOWN\u00a0zoom.yo-yo\tt-shirt  legroom\nabdomen "
    keys = derive_keys(normalize_codename(typed), salt=SALT, kdf=LIGHT)
    assert keys.lookup_id == LIGHT_LOOKUP_ID


# -- audit log ---------------------------------------------------------------------------------

AT = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
# A stored two-entry log as today's code writes it: (officer_id, action, details, entry_hash).
LOG = [
    (7, "case.status", '{"case":"x","status":"in_progress"}',
     "05d751ef3a73423630483d23415e847bdd445ea463afc86e763747d6c2456bb8"),
    (None, "officer.login_failed", '{"handle":"अधिकारी"}',
     "d9496af83e6453d37d79aa5bf0048287beaf40c430afc11f94040543abb878e4"),
]


def test_audit_genesis_is_64_zeros() -> None:
    assert GENESIS == "0" * 64


def test_audit_entry_hash_is_sha256_of_the_documented_serialization() -> None:
    # Written out by hand: compact JSON array, UTC ISO time to the second, raw UTF-8.
    first = (
        '["' + "0" * 64 + '","2026-03-14T09:26:53+00:00",7,"case.status",'
        '"{\\"case\\":\\"x\\",\\"status\\":\\"in_progress\\"}"]'
    )
    assert hashlib.sha256(first.encode("utf-8")).hexdigest() == LOG[0][3]
    second = '["' + LOG[0][3] + '","2026-03-14T09:26:53+00:00",null,"officer.login_failed",' \
        '"{\\"handle\\":\\"अधिकारी\\"}"]'
    assert hashlib.sha256(second.encode("utf-8")).hexdigest() == LOG[1][3]


def test_entry_hash_of_today_matches_the_vectors() -> None:
    assert _entry_hash(GENESIS, AT, *LOG[0][:3]) == LOG[0][3]
    assert _entry_hash(LOG[0][3], AT, *LOG[1][:3]) == LOG[1][3]
    # The same instant in another zone, or with microseconds a backend kept, is the same entry.
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    assert _entry_hash(GENESIS, AT.astimezone(ist), *LOG[0][:3]) == LOG[0][3]
    assert _entry_hash(GENESIS, AT.replace(microsecond=999), *LOG[0][:3]) == LOG[0][3]


def test_entry_hash_does_not_depend_on_the_servers_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server in India (TZ=Asia/Kolkata) must hash the same instant as one on UTC.
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert _entry_hash(GENESIS, AT, *LOG[0][:3]) == LOG[0][3]
    finally:
        monkeypatch.undo()
        time.tzset()


async def _store_fixed_log(sessions: async_sessionmaker[AsyncSession]) -> None:
    prev = GENESIS
    async with sessions.begin() as db:
        for officer_id, action, details, entry_hash in LOG:
            db.add(AuditEntry(at=AT, officer_id=officer_id, action=action, details=details,
                              prev_hash=prev, entry_hash=entry_hash))
            await db.flush()
            prev = entry_hash


async def test_a_log_written_by_an_earlier_version_still_verifies(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await _store_fixed_log(sessions)
    check = await AuditLog(sessions=sessions).verify()
    assert check == AuditCheck(ok=True, entries=2, head=LOG[1][3])


async def test_recorded_entries_use_the_canonical_details_and_hash(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    audit = AuditLog(sessions=sessions)
    when = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.UTC)
    await audit.append(officer_id=7, action="case.export", zeta="ज़", alpha=1, when=when)
    await audit.append(officer_id=None, action="officer.login_failed", handle="अधिकारी")
    async with sessions() as db:
        first, second = (await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
    # Sorted keys, no spaces, raw UTF-8, non-JSON values as str(): the stored canonical form.
    assert first.details == '{"alpha":1,"when":"2026-03-14 09:26:53+00:00","zeta":"ज़"}'
    assert (first.officer_id, first.action, first.prev_hash) == (7, "case.export", GENESIS)
    assert first.at.microsecond == 0 and first.at.tzinfo is not None
    material = json.dumps(
        [GENESIS, first.at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00"), 7, "case.export",
         first.details], separators=(",", ":"), ensure_ascii=False)
    assert first.entry_hash == hashlib.sha256(material.encode("utf-8")).hexdigest()
    assert second.prev_hash == first.entry_hash
    assert second.details == '{"handle":"अधिकारी"}'
    check = await audit.verify()
    assert check == AuditCheck(ok=True, entries=2, head=second.entry_hash)


# -- store object names ------------------------------------------------------------------------

# A name as the database of an existing deployment holds it (documents.object_name).
STORED_NAME = "0f1e2d3c-4b5a-4968-8776-655443322110/00112233445566778899aabbccddeeff-message.gpg"


def test_document_roles_are_the_stored_values() -> None:
    assert {r.name: r.value for r in DocumentRole} == {"MESSAGE": "message", "FILE": "file"}


def test_a_stored_object_name_still_resolves(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    case, obj = STORED_NAME.split("/")
    (store.root / case).mkdir()
    (store.root / case / obj).write_bytes(b"ciphertext")
    assert store.path(STORED_NAME) == store.root / case / obj
    assert store.read(STORED_NAME) == b"ciphertext"
    assert store.size(STORED_NAME) == len(b"ciphertext")


def test_committed_objects_are_named_case_slash_random_role(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    case = STORED_NAME.split("/")[0]
    names = {store.write_bytes(b"x", case_public_id=case, role=role) for role in ("message", "file")}
    assert len(names) == 2
    for name in names:
        assert re.fullmatch(case + r"/[0-9a-f]{32}-(message|file)\.gpg", name), name
        assert (store.root / name).read_bytes() == b"x"
        assert store.path(name) == store.root / name


# -- the tip document the desk parses -----------------------------------------------------------


async def test_tip_document_is_the_format_the_desk_parses(core: CoreServices, officer_gnupg: Path) -> None:
    unit = await core.cases.unit_by_slug("ps-sadar-bazar")
    login = await core.sources.create(CODENAME)
    async with core.intake.draft(unit) as draft:
        await draft.open_file("फोटो.jpg", "image/jpeg")
        await draft.write_file(b"\xff\xd8" + b"j" * 98)
        await draft.write_file(b"j" * 20)
        await draft.open_file("note.txt", "text/plain")
        await draft.write_file(b"note")
        await draft.add_message({"kind": "information", "text": "नमस्ते", "follow_up": False})
        submission_id = await draft.commit(source_id=login.source_id, unit=unit)
    async with core.sessions() as db:
        docs = (await db.scalars(
            select(Document).where(Document.submission_id == submission_id).order_by(Document.id)
        )).all()
    assert [d.role for d in docs] == [DocumentRole.MESSAGE, DocumentRole.FILE, DocumentRole.FILE]
    plain = gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name))
    # Exactly these bytes: the format tag first, the answers, then the file list; indented
    # UTF-8 (not \\u escapes).
    assert plain.decode("utf-8") == """{
  "format": "cpcp-tip/1",
  "kind": "information",
  "text": "नमस्ते",
  "follow_up": false,
  "files": [
    {
      "name": "फोटो.jpg",
      "content_type": "image/jpeg",
      "size": 120
    },
    {
      "name": "note.txt",
      "content_type": "text/plain",
      "size": 4
    }
  ]
}"""
    message = Message.parse(plain)
    assert (message.kind, message.text, message.follow_up) == ("information", "नमस्ते", False)
    assert message.files == (FileEntry("फोटो.jpg", "image/jpeg", 120), FileEntry("note.txt", "text/plain", 4))
    assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == b"\xff\xd8" + b"j" * 118
    assert gpg_decrypt(officer_gnupg, core.store.read(docs[2].object_name)) == b"note"
    assert [d.size for d in docs] == [core.store.size(d.object_name) for d in docs]


# --- onion client authorization keys ------------------------------------------------------------


def test_client_auth_keys_are_rfc_7748_x25519_in_tors_base32() -> None:
    """A workstation's ``.auth_private`` line and the server's ``.auth`` file outlive the code
    that made them: X25519 keys (RFC 7748) in tor's base32. The vector is Alice's key pair of
    RFC 7748 section 6.1 (private key clamped, as tor stores it)."""
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    private = ClientPrivateKey(b32(clamp(alice)))
    public = b32(public_key(clamp(alice)))
    assert private == "OADW2CTTDCSX2PAWYFZFDMTGIXPUYL4H5PAJSKVRO752KHNZFRVA"
    assert public == "QUQPACMJGCTVI5ELPXOLIPXXLIG36OQNEY4BV5HLUSUY5KU3JZVA"
    # Independently: that base32 is the RFC's public key, in RFC 4648 base32 without padding.
    rfc_public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert base64.b32encode(rfc_public).decode().rstrip("=") == public
    assert auth_line(public) == "descriptor:x25519:QUQPACMJGCTVI5ELPXOLIPXXLIG36OQNEY4BV5HLUSUY5KU3JZVA"
    assert auth_private_line("a" * 56 + ".onion", private) == (
        "a" * 56 + ":descriptor:x25519:OADW2CTTDCSX2PAWYFZFDMTGIXPUYL4H5PAJSKVRO752KHNZFRVA")
