"""Building the core's collaborators from Settings, once, and checking them at start-up."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .audit import AuditLog
from .cases import Cases
from .casework import Casework
from .db import make_engine, make_sessionmaker
from .disclosure import Disclosures
from .errors import KeyProblem
from .intake import Intake
from .migrate import require_current_schema
from .models import Officer, Unit
from .officers import OfficerAuth
from .pgp import Keyring
from .server_secrets import ServerSecrets, load_server_secrets
from .settings import Settings
from .sources import SourceAccounts
from .store import Store
from .throttle import LoginThrottle


@dataclass
class CoreServices:
    settings: Settings
    secrets: ServerSecrets
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    store: Store
    officer_keys: Keyring
    source_keys: Keyring
    cases: Cases
    sources: SourceAccounts
    intake: Intake
    audit: AuditLog
    officer_auth: OfficerAuth
    casework: Casework
    disclosures: Disclosures
    started: bool = False

    async def close(self) -> None:
        await self.engine.dispose()
        for keyring in (self.officer_keys, self.source_keys):
            await asyncio.to_thread(keyring.close)


def build_core(settings: Settings) -> CoreServices:
    """Construct everything; fails closed on missing secrets. No I/O to the database yet."""
    secrets = load_server_secrets(settings.secrets_file)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    store = Store(settings.store_dir)
    officer_keys = Keyring(settings.gnupg_home / "officers", gpg_binary=settings.gpg_binary)
    source_keys = Keyring(settings.gnupg_home / "sources", gpg_binary=settings.gpg_binary)
    cases = Cases(sessions=sessions, store=store, oversight_fingerprint=settings.oversight_fingerprint)
    src = settings.source
    throttle = LoginThrottle(
        caller_burst=src.login_circuit_burst,
        caller_per_hour=src.login_circuit_failures_per_hour,
        site_per_minute=src.login_failures_per_minute,
        concurrency=src.login_concurrency,
        queue_per_caller=src.login_queue_per_circuit,
        max_callers=src.login_circuits_tracked,
        caller_idle=src.login_circuit_idle,
        failure_delay=src.login_failure_delay,
    )
    sources = SourceAccounts(
        sessions=sessions, keyring=source_keys, salt=secrets.codename_salt, kdf=settings.kdf,
        throttle=throttle,
    )
    intake = Intake(
        store=store, keyring=officer_keys, cases=cases, max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files_per_submission,
    )
    audit = AuditLog(sessions=sessions)
    officer_auth = OfficerAuth(
        sessions=sessions, audit=audit, max_failures=settings.gateway.max_login_failures,
        lockout=dt.timedelta(seconds=settings.gateway.lockout),
        token_ttl=dt.timedelta(seconds=settings.gateway.token_ttl),
    )
    casework = Casework(sessions=sessions, store=store, source_keys=source_keys,
                        officer_keys=officer_keys, audit=audit)
    disclosures = Disclosures(sessions=sessions, store=store, officer_keys=officer_keys, audit=audit)
    return CoreServices(
        settings=settings, secrets=secrets, engine=engine, sessions=sessions, store=store,
        officer_keys=officer_keys, source_keys=source_keys, cases=cases, sources=sources,
        intake=intake, audit=audit, officer_auth=officer_auth, casework=casework,
        disclosures=disclosures,
    )


async def check_keys(core: CoreServices) -> None:
    """Every active unit's officers and the oversight key can be encrypted to, right now, and
    no officer or oversight private key is on this server. Raises KeyProblem otherwise."""
    ring = core.officer_keys
    await asyncio.to_thread(
        ring.require_encryption_key, core.settings.oversight_fingerprint, who="oversight key"
    )
    async with core.sessions() as db:
        units = (await db.scalars(select(Unit).where(Unit.active))).all()
        if not units:
            raise KeyProblem("no active unit: load a deployment with 'cpcp-admin deploy'")
        for unit in units:
            for officer in unit.officers:
                if officer.active:
                    await asyncio.to_thread(
                        ring.require_encryption_key, officer.fingerprint,
                        who=f"officer {officer.handle} of {unit.slug}",
                    )
        custodians = (await db.scalars(select(Officer).where(Officer.active, Officer.is_custodian))).all()
        for custodian in custodians:
            await asyncio.to_thread(ring.require_encryption_key, custodian.fingerprint,
                                    who=f"custodian {custodian.handle}")
        pinned = set((await db.scalars(select(Officer.fingerprint))).all())
    pinned.add(core.settings.oversight_fingerprint)
    secret = await asyncio.to_thread(ring.secret_fingerprints)
    if secret:
        raise KeyProblem("a private key is in the server's officer keyring; remove it")
    leaked = pinned & await asyncio.to_thread(core.source_keys.secret_fingerprints)
    if leaked:
        raise KeyProblem("an officer's private key is in the source keyring; remove it")


async def start_core(core: CoreServices) -> None:
    """Start-up: keys must be usable; leftovers of interrupted uploads are swept. Once."""
    if core.started:
        return
    await require_current_schema(core.engine, core.settings.database_url)
    await check_keys(core)
    referenced = await core.cases.referenced_objects()
    await asyncio.to_thread(core.store.sweep, referenced)
    core.started = True
