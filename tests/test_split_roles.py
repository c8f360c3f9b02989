"""The source app and the gateway as two users: what each role opens, the gateway's sealed
TOTP secrets and keyed token hashes, and reply keys handed over through the database."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select, text

from cpcp.admin import default_role, init_deployment
from cpcp.casework import ReplyRejected
from cpcp.codenames import generate_codename
from cpcp.db import make_engine
from cpcp.errors import ConfigError
from cpcp.gateway_secrets import GatewaySecrets, load_gateway_secrets
from cpcp.migrate import upgrade
from cpcp.models import ApiToken, Officer, Source
from cpcp.officers import LoginFailed
from cpcp.services import build_core, start_core
from tests.conftest import FPR, Deployment

PASSPHRASE = "correct horse battery staple and more words"

# --- the at-rest format (it persists in every deployment's database) --------------------------

KAT = GatewaySecrets(totp_key=bytes(range(32)), token_key=bytes(range(32, 64)))
KAT_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
KAT_SEALED = "v1:AAAAAAAAAAAAAAAARP7miewfx+1N4Pl+K3zJyZgBBQRxsiR/xdbjyPavBQZ6lCVui1c3Bv/isPcrBsni"


def test_a_sealed_totp_secret_has_a_fixed_format() -> None:
    assert KAT.seal_totp(KAT_SECRET, 7, nonce=bytes(12)) == KAT_SEALED
    assert KAT.open_totp(KAT_SEALED, 7) == KAT_SECRET
    assert KAT.token_hash("token-abc") == "9699fa7a0a57eda1cc50b4731e8eede7cc7e3851a7bfc510df964140ddd67ef9"


def test_a_sealed_secret_opens_only_with_its_key_for_its_officer() -> None:
    sealed = KAT.seal_totp(KAT_SECRET, 7)
    assert sealed != KAT.seal_totp(KAT_SECRET, 7)  # a fresh nonce each time
    assert KAT.open_totp(sealed, 7) == KAT_SECRET
    assert KAT.open_totp(sealed, 8) is None  # copied onto another officer's row
    other = GatewaySecrets(totp_key=bytes(32), token_key=bytes(32))
    assert other.open_totp(sealed, 7) is None
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    assert KAT.open_totp(tampered, 7) is None
    # Plaintext (as a writer without the key would plant it) is no secret at all.
    assert KAT.open_totp(KAT_SECRET, 7) is None and KAT.open_totp(None, 7) is None


def test_the_gateway_secrets_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "gateway-secrets.json"
    with pytest.raises(ConfigError, match="missing"):
        load_gateway_secrets(path)
    path.write_text(json.dumps({"totp_key": "AAAA", "token_key": "AAAA"}))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="32 bytes"):
        load_gateway_secrets(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_gateway_secrets(path)


# --- roles ------------------------------------------------------------------------------------


async def test_the_gateway_opens_neither_secrets_json_nor_the_source_keyrings(
        deployment: Deployment, officer_gnupg: Path) -> None:
    settings = deployment.settings
    # A source made by the source app, so gnupg/sources holds a key pair.
    source_core = build_core(settings, "source")
    try:
        await start_core(source_core)
        login = await source_core.sources.create(generate_codename())
        unit = await source_core.cases.unit_by_slug("ps-sadar-bazar")
        async with source_core.intake.draft(unit) as draft:
            await draft.add_message({"text": "a tip"})
            await draft.commit(source_id=login.source_id, unit=unit)
        case = await source_core.cases.case_of_source(login.source_id)
        assert case is not None
        assert source_core.gateway_secrets is None
        with pytest.raises(ConfigError):
            await source_core.officer_auth.enrol("officer-a", PASSPHRASE)
    finally:
        await source_core.close()
    # Without secrets.json and with the source app's homes gone, the gateway starts and works.
    settings.secrets_file.unlink()
    shutil.rmtree(settings.gnupg_home)
    gateway = build_core(settings, "gateway")
    try:
        await start_core(gateway)
        assert gateway.server_secrets is None
        with pytest.raises(ConfigError):
            gateway.secrets  # noqa: B018 -- the property is the check
        assert not settings.gnupg_home.exists()
        assert gateway.officer_keys.home == settings.gateway_gnupg_home / "officers"
        secret = await gateway.officer_auth.enrol("officer-a", PASSPHRASE)
        identity = await gateway.officer_auth.login("officer-a", PASSPHRASE, pyotp.TOTP(secret).now())
        case_id = case.id
        fpr, armored = await gateway.casework.source_key(identity, case_id)
        assert "PUBLIC KEY BLOCK" in armored and "PRIVATE" not in armored
        # Replies encrypted at the desk: to the officer only (refused), then to the source too.
        subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"], input=armored.encode(),
                       check=True, capture_output=True)

        def desk_encrypt(*to: str) -> bytes:
            args = [a for fp in to for a in ("--recipient", fp)]
            return subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--trust-model", "always",
                                   "--encrypt", *args], input=b"thanks", check=True, capture_output=True).stdout

        with pytest.raises(ReplyRejected, match="source"):
            await gateway.casework.add_reply(identity, case_id, desk_encrypt(FPR["officer-a"]))
        assert await gateway.casework.add_reply(identity, case_id, desk_encrypt(fpr, FPR["officer-a"]))
        assert await asyncio.to_thread(gateway.source_keys.secret_fingerprints) == set()
        assert fpr in await asyncio.to_thread(gateway.source_keys.key_creation_times)
    finally:
        await gateway.close()
    # Retention deleted the source (as the source app's user): the gateway's next start drops
    # its public copy of the reply key too.
    engine = make_engine(settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM sources WHERE id = :i"), {"i": login.source_id})
    await engine.dispose()
    gateway = build_core(settings, "gateway")
    try:
        await start_core(gateway)
        assert fpr not in await asyncio.to_thread(gateway.source_keys.key_creation_times)
    finally:
        await gateway.close()
    assert not settings.gnupg_home.exists()


async def test_the_source_app_publishes_reply_keys_made_before_the_database_held_them(
        deployment: Deployment) -> None:
    core = build_core(deployment.settings, "source")
    try:
        await start_core(core)
        login = await core.sources.create(generate_codename())
        async with core.sessions.begin() as db:
            source = await db.get(Source, login.source_id)
            assert source is not None and source.reply_public_key is not None
            fpr = source.reply_key_fingerprint
            source.reply_public_key = None  # as migration 0005 leaves an existing source
        core.started = False
        await start_core(core)
        async with core.sessions() as db:
            published = await db.scalar(select(Source.reply_public_key).where(Source.id == login.source_id))
        assert published == await asyncio.to_thread(core.source_keys.export_public_key, fpr)
    finally:
        await core.close()


def test_the_default_role_is_whichever_secrets_this_user_may_read(deployment: Deployment) -> None:
    settings = deployment.settings
    assert default_role(settings) == "all"  # one user, both files (tests run as that user)
    settings.gateway_secrets_file.unlink()
    assert default_role(settings) == "all"  # absent: init would make it
    with pytest.raises(ConfigError, match="gateway-secrets.json is missing"):
        build_core(settings, "gateway")
    with pytest.raises(ConfigError, match="role"):
        build_core(settings, "desk")  # type: ignore[arg-type]


# --- sealing the plaintext TOTP secrets of before ---------------------------------------------


async def _plant(database_url: str, handle: str, totp: str) -> None:
    engine = make_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE officers SET totp_secret = :t WHERE handle = :h"), {"t": totp, "h": handle})
    await engine.dispose()


async def test_plaintext_totp_secrets_are_sealed_once_when_the_gateway_makes_its_keys(
        deployment: Deployment) -> None:
    settings = deployment.settings
    core = build_core(settings)
    try:
        secret = await core.officer_auth.enrol("officer-a", PASSPHRASE)
    finally:
        await core.close()
    # A deployment of before: its TOTP secret in plaintext, no gateway keys.
    await _plant(settings.database_url, "officer-a", secret)
    settings.gateway_secrets_file.unlink()
    await asyncio.to_thread(init_deployment, settings, "gateway")
    core = build_core(settings, "gateway")
    try:
        async with core.sessions() as db:
            stored = await db.scalar(select(Officer.totp_secret).where(Officer.handle == "officer-a"))
        assert stored is not None and stored.startswith("v1:") and secret not in stored
        identity = await core.officer_auth.login("officer-a", PASSPHRASE, pyotp.TOTP(secret).now())
        token, _ = await core.officer_auth.issue_token(identity)
        async with core.sessions() as db:
            hashes = set((await db.scalars(select(ApiToken.token_hash))).all())
        assert hashes == {core.officer_auth._keys().token_hash(token)}
        assert (await core.officer_auth.authenticate(token)) == identity
    finally:
        await core.close()
    # Planted later by a writer of the database: never sealed, never accepted.
    planted = pyotp.random_base32(32)
    await _plant(settings.database_url, "officer-a", planted)
    await asyncio.to_thread(init_deployment, settings, "gateway")
    core = build_core(settings, "gateway")
    try:
        with pytest.raises(LoginFailed):
            await core.officer_auth.login("officer-a", PASSPHRASE, pyotp.TOTP(planted).now())
        async with core.sessions() as db:
            assert await db.scalar(select(Officer.totp_secret).where(Officer.handle == "officer-a")) == planted
    finally:
        await core.close()


def test_migration_0005_keeps_totp_secrets_and_drops_unkeyed_tokens(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        (tmp_path / "data").mkdir()
    upgrade(database_url, "0004")
    plain = pyotp.random_base32(32)

    async def before() -> None:
        engine = make_engine(database_url)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO officers (handle, display_name, fingerprint, active, is_admin, "
                                    "totp_secret, failed_logins, is_custodian) VALUES "
                                    "('a', 'A', :f, true, false, :t, 0, false)"), {"f": FPR["officer-a"], "t": plain})
            officer_id = (await conn.execute(text("SELECT id FROM officers"))).scalar_one()
            await conn.execute(text("INSERT INTO api_tokens (token_hash, officer_id, expires_at) VALUES "
                                    "(:h, :o, '2999-01-01 00:00:00')"), {"h": "ab" * 32, "o": officer_id})
        await engine.dispose()

    async def after() -> tuple[str | None, int]:
        engine = make_engine(database_url)
        async with engine.connect() as conn:
            totp = (await conn.execute(text("SELECT totp_secret FROM officers"))).scalar_one()
            tokens = (await conn.execute(text("SELECT count(*) FROM api_tokens"))).scalar_one()
        await engine.dispose()
        return totp, tokens

    asyncio.run(before())
    upgrade(database_url)
    assert asyncio.run(after()) == (plain, 0)


def test_init_and_deploy_as_each_apps_user_open_only_that_apps_secrets(
        tmp_path: Path, database_url: str) -> None:
    """As ansible/server.yml runs it: `init --role source` as cpcp-source on a fresh host (the
    gateway's secrets not made yet), then `init --role gateway` as cpcp-gateway, each with the
    other's secrets out of reach (moved away here: the suite runs as one user)."""
    from cpcp.settings import load_settings
    from tests.conftest import write_deployment

    settings = load_settings(write_deployment(tmp_path, database_url), env={})
    init_deployment(settings, "source")
    assert settings.secrets_file.exists() and not settings.gateway_secrets_file.exists()
    hidden = tmp_path / "elsewhere"
    hidden.mkdir()
    shutil.move(settings.secrets_file, hidden / "secrets.json")
    init_deployment(settings, "gateway")  # reads no secrets.json
    assert settings.gateway_secrets_file.exists()
    shutil.move(hidden / "secrets.json", settings.secrets_file)
    shutil.move(settings.gateway_secrets_file, hidden / "gateway-secrets.json")
    init_deployment(settings, "source")  # again (idempotent), reading no gateway-secrets.json
    shutil.move(hidden / "gateway-secrets.json", settings.gateway_secrets_file)
