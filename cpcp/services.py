"""Building the core's collaborators from Settings, once, and checking them at start-up."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .audit import AuditLog
from .cases import Cases
from .casework import Casework
from .db import make_engine, make_sessionmaker
from .disclosure import Disclosures
from .errors import ConfigError, KeyProblem
from .gateway_secrets import GatewaySecrets, load_gateway_secrets
from .intake import Intake
from .migrate import require_current_schema
from .models import Officer, Source, Unit
from .officers import OfficerAuth
from .pgp import Keyring
from .server_secrets import ServerSecrets, load_server_secrets
from .settings import Settings
from .sources import SourceAccounts
from .store import Store
from .throttle import LoginThrottle

#: Which program the core is built for, and so which secrets it opens (docs/architecture.md):
#: "source": secrets.json and the GnuPG homes under gnupg/ (the reply keys' secret halves);
#: "gateway": gateway-secrets.json and its own public-only homes under gnupg-gateway/;
#: "all": both, for one user holding everything (development, tests, a restore as root).
Role = Literal["source", "gateway", "all"]
ROLES: tuple[Role, ...] = ("source", "gateway", "all")


@dataclass
class CoreServices:
    settings: Settings
    role: Role
    # None for the gateway: it never opens secrets.json.
    server_secrets: ServerSecrets | None
    # None for the source app: it never opens gateway-secrets.json.
    gateway_secrets: GatewaySecrets | None
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
    # Every officers' keyring this role keeps up to date (`cpcp-admin deploy`) and checks: for
    # "all", the source app's and the gateway's; officer_keys is the first.
    officer_keyrings: tuple[Keyring, ...] = field(default=())
    started: bool = False

    @property
    def secrets(self) -> ServerSecrets:
        """The source app's secrets; ConfigError for the gateway, which has none."""
        if self.server_secrets is None:
            raise ConfigError("this program does not hold secrets.json: run it as the source app's user")
        return self.server_secrets

    async def close(self) -> None:
        await self.engine.dispose()
        for keyring in {id(k): k for k in (*self.officer_keyrings, self.officer_keys, self.source_keys)}.values():
            await asyncio.to_thread(keyring.close)


def build_core(settings: Settings, role: Role = "all") -> CoreServices:
    """Construct what ``role`` needs, opening only that role's secrets and GnuPG homes; fails
    closed on missing secrets. No I/O to the database yet."""
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}")
    secrets = load_server_secrets(settings.secrets_file) if role != "gateway" else None
    gateway_secrets = load_gateway_secrets(settings.gateway_secrets_file) if role != "source" else None
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    store = Store(settings.store_dir, shared=settings.shared_data)
    gpg = settings.gpg_binary
    if role == "gateway":
        # Public keys only: the officers' (imported by deploy) and the sources' reply keys
        # (imported from the database as needed, cpcp.casework).
        officer_keys = Keyring(settings.gateway_gnupg_home / "officers", gpg_binary=gpg)
        source_keys = Keyring(settings.gateway_gnupg_home / "sources", gpg_binary=gpg)
        officer_keyrings: tuple[Keyring, ...] = (officer_keys,)
    else:
        officer_keys = Keyring(settings.gnupg_home / "officers", gpg_binary=gpg)
        source_keys = Keyring(settings.gnupg_home / "sources", gpg_binary=gpg)
        officer_keyrings = (officer_keys,)
        if role == "all":
            officer_keyrings += (Keyring(settings.gateway_gnupg_home / "officers", gpg_binary=gpg),)
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
        sessions=sessions, keyring=source_keys, salt=secrets.codename_salt if secrets else None,
        kdf=settings.kdf, throttle=throttle,
    )
    intake = Intake(
        store=store, keyring=officer_keys, cases=cases, max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files_per_submission,
    )
    audit = AuditLog(sessions=sessions)
    officer_auth = OfficerAuth(
        sessions=sessions, audit=audit, max_failures=settings.gateway.max_login_failures,
        lockout=dt.timedelta(seconds=settings.gateway.lockout),
        token_ttl=dt.timedelta(seconds=settings.gateway.token_ttl), secrets_=gateway_secrets,
    )
    casework = Casework(sessions=sessions, store=store, source_keys=source_keys,
                        officer_keys=officer_keys, audit=audit)
    disclosures = Disclosures(sessions=sessions, store=store, officer_keys=officer_keys, audit=audit)
    return CoreServices(
        settings=settings, role=role, server_secrets=secrets, gateway_secrets=gateway_secrets,
        engine=engine, sessions=sessions, store=store,
        officer_keys=officer_keys, source_keys=source_keys, cases=cases, sources=sources,
        intake=intake, audit=audit, officer_auth=officer_auth, casework=casework,
        disclosures=disclosures, officer_keyrings=officer_keyrings,
    )


async def check_keys(core: CoreServices) -> None:
    """Every active unit's officers and the oversight key can be encrypted to, right now, and
    no officer or oversight private key is on this server. Raises KeyProblem otherwise. Each of
    the role's officers' keyrings is checked."""
    for ring in core.officer_keyrings:
        await _check_officer_keyring(core, ring)
    if core.role == "gateway":
        if await asyncio.to_thread(core.source_keys.secret_fingerprints):
            raise KeyProblem("a private key is in the gateway's source keyring; remove it")
        return
    pinned = await _pinned_fingerprints(core)
    leaked = pinned & await asyncio.to_thread(core.source_keys.secret_fingerprints)
    if leaked:
        raise KeyProblem("an officer's private key is in the source keyring; remove it")


async def _pinned_fingerprints(core: CoreServices) -> set[str]:
    async with core.sessions() as db:
        pinned = set((await db.scalars(select(Officer.fingerprint))).all())
    pinned.add(core.settings.oversight_fingerprint)
    return pinned


async def _check_officer_keyring(core: CoreServices, ring: Keyring) -> None:
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
    secret = await asyncio.to_thread(ring.secret_fingerprints)
    if secret:
        raise KeyProblem("a private key is in the server's officer keyring; remove it")


async def publish_reply_keys(core: CoreServices) -> int:
    """The source app's part of the hand-over: the public half of every reply key the database
    does not hold yet (sources made before it did), from the keyring only the source app opens.
    Returns how many were filled in."""
    async with core.sessions.begin() as db:
        missing = (await db.scalars(select(Source).where(Source.reply_public_key.is_(None)))).all()
        for source in missing:
            source.reply_public_key = await asyncio.to_thread(
                core.source_keys.export_public_key, source.reply_key_fingerprint)
        return len(missing)


async def forget_gone_reply_keys(core: CoreServices) -> int:
    """The gateway's part of retention: the public reply keys of sources the purge deleted
    (it runs as the source app's user and cannot open this keyring) go too, so that no key's
    creation time outlives its source. Returns how many went."""
    async with core.sessions() as db:
        kept = set((await db.scalars(select(Source.reply_key_fingerprint))).all())
    held = await asyncio.to_thread(core.source_keys.key_creation_times)
    gone = [fpr for fpr in held if fpr not in kept]
    for fpr in gone:
        await asyncio.to_thread(core.source_keys.forget_key, fpr)
    return len(gone)


async def start_core(core: CoreServices) -> None:
    """Start-up: keys must be usable; leftovers of interrupted uploads are swept. Once."""
    if core.started:
        return
    await require_current_schema(core.engine, core.settings.database_url)
    await check_keys(core)
    if core.role != "gateway":
        await publish_reply_keys(core)
    else:
        await forget_gone_reply_keys(core)
    referenced = await core.cases.referenced_objects()
    await asyncio.to_thread(core.store.sweep, referenced)
    core.started = True
