"""Officer accounts on the gateway: passphrase (argon2id) plus TOTP (RFC 6238), lock-out after
repeated failures, and short-lived bearer tokens for the desk.

Every failure is recorded in the audit log; a code is accepted once only; a locked account
is refused before the passphrase is even checked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit import AuditLog
from .codenames import wordlist
from .errors import ConfigError, CPCPError
from .gateway_secrets import GatewaySecrets, is_sealed
from .models import ApiToken, Officer

TOTP_STEP = 30
MIN_PASSPHRASE_CHARS = 20


class LoginFailed(CPCPError):
    """Wrong user, passphrase or code (deliberately not saying which)."""


class AccountLocked(CPCPError):
    def __init__(self, until: dt.datetime) -> None:
        super().__init__(f"locked until {until.isoformat(timespec='minutes')}")
        self.until = until


class WeakPassphrase(CPCPError):
    pass


@dataclass(frozen=True)
class OfficerIdentity:
    id: int
    handle: str
    display_name: str
    is_admin: bool
    unit_ids: frozenset[int]
    is_custodian: bool = False


def suggest_passphrase(words: int = 7) -> str:
    """A diceware suggestion from the same checked word list as codenames (90 bits)."""
    return " ".join(secrets.choice(wordlist()) for _ in range(words))


def new_totp_secret() -> str:
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, handle: str) -> str:
    return pyotp.TOTP(secret, interval=TOTP_STEP).provisioning_uri(name=handle, issuer_name="CPCP")


def _identity(officer: Officer) -> OfficerIdentity:
    return OfficerIdentity(
        id=officer.id, handle=officer.handle, display_name=officer.display_name,
        is_admin=officer.is_admin, unit_ids=frozenset(u.id for u in officer.units if u.active),
        is_custodian=officer.is_custodian,
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class OfficerAuth:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        audit: AuditLog,
        max_failures: int = 5,
        lockout: dt.timedelta = dt.timedelta(minutes=15),
        token_ttl: dt.timedelta = dt.timedelta(hours=8),
        secrets_: GatewaySecrets | None = None,
    ) -> None:
        self._sessions = sessions
        # None where this program is not the gateway (the source app): it cannot check or set
        # a TOTP code, nor issue or check a token.
        self._secrets = secrets_
        self._audit = audit
        self._hasher = PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory)
        self._dummy_hash = self._hasher.hash(secrets.token_hex(16))
        self._max_failures = max_failures
        self._lockout = lockout
        self._token_ttl = token_ttl

    def _keys(self) -> GatewaySecrets:
        if self._secrets is None:
            raise ConfigError("this program holds no gateway secrets: run it as the gateway's user")
        return self._secrets

    def hash_passphrase(self, passphrase: str) -> str:
        if len(passphrase) < MIN_PASSPHRASE_CHARS or len(set(passphrase)) < 8:
            raise WeakPassphrase(
                f"use at least {MIN_PASSPHRASE_CHARS} characters, e.g. {suggest_passphrase()!r}"
            )
        return self._hasher.hash(passphrase)

    def _passphrase_ok(self, stored: str | None, given: str) -> bool:
        if stored is None:
            return False
        try:
            return self._hasher.verify(stored, given)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    @staticmethod
    def _totp_step(secret: str | None, code: str, now: dt.datetime) -> int | None:
        """The time step a code belongs to (now, or one step either side for clock drift)."""
        if secret is None or not code.isdigit() or len(code) != 6:
            return None
        totp = pyotp.TOTP(secret, interval=TOTP_STEP)
        current = totp.timecode(now)
        for step in (current, current - 1, current + 1):
            if secrets.compare_digest(totp.generate_otp(step), code):
                return step
        return None

    async def enrol(self, handle: str, passphrase: str, *, admin: bool | None = None) -> str:
        """Give an officer (already known with a pinned key) a passphrase and a fresh TOTP
        secret; returns the secret for the authenticator app. Resets any lock-out."""
        keys = self._keys()
        digest = await asyncio.to_thread(self.hash_passphrase, passphrase)
        secret = new_totp_secret()
        async with self._audit.transaction() as db:
            officer = await db.scalar(select(Officer).where(Officer.handle == handle))
            if officer is None:
                raise LoginFailed(f"no officer {handle!r}: add it to the deployment file first")
            if not officer.active:
                raise LoginFailed(f"officer {handle!r} is retired: remove 'retired = true' from "
                                  "their entry and deploy first")
            officer.passphrase_hash = digest
            officer.totp_secret = keys.seal_totp(secret, officer.id)
            officer.totp_last_step = None
            officer.failed_logins = 0
            officer.locked_until = None
            if admin is not None:
                officer.is_admin = admin
            await self._audit.record(db, officer_id=None, action="officer_enrolled", officer=officer.id,
                                     admin=officer.is_admin)
        return secret

    async def login(self, handle: str, passphrase: str, code: str) -> OfficerIdentity:
        """Check all three factors; raise LoginFailed or AccountLocked. Audited either way."""
        now = _now()
        self._keys()  # no login at all without the keys, rather than every one failing
        failure: CPCPError
        # Failures are raised after the transaction commits, so their audit entries stay.
        async with self._audit.transaction() as db:
            officer = await db.scalar(select(Officer).where(Officer.handle == handle, Officer.active))
            if officer is None:
                # Same work as a real check, so timing does not reveal which handles exist.
                await asyncio.to_thread(self._passphrase_ok, self._dummy_hash, passphrase)
                await self._audit.record(db, officer_id=None, action="login_failed", reason="unknown user")
                failure = LoginFailed("login failed")
            elif officer.locked_until is not None and officer.locked_until > now:
                await self._audit.record(db, officer_id=officer.id, action="login_refused_locked")
                failure = AccountLocked(officer.locked_until)
            else:
                identity = await self._check_factors(db, officer, passphrase, code, now)
                if identity is not None:
                    return identity
                failure = LoginFailed("login failed")
        raise failure

    async def _check_factors(
        self, db: AsyncSession, officer: Officer, passphrase: str, code: str, now: dt.datetime
    ) -> OfficerIdentity | None:
        """Passphrase and a fresh TOTP code; counts failures and locks after too many."""
        good = await asyncio.to_thread(self._passphrase_ok, officer.passphrase_hash, passphrase)
        step = self._totp_step(self._keys().open_totp(officer.totp_secret, officer.id), code.strip(), now)
        reused = step is not None and officer.totp_last_step is not None and step <= officer.totp_last_step
        if not good or step is None or reused:
            officer.failed_logins += 1
            reason = "reused code" if (good and reused) else "bad passphrase or code"
            await self._audit.record(db, officer_id=officer.id, action="login_failed", reason=reason,
                                     failures=officer.failed_logins)
            if officer.failed_logins >= self._max_failures:
                officer.locked_until = now + self._lockout
                officer.failed_logins = 0
                await self._audit.record(db, officer_id=officer.id, action="account_locked",
                                         until=officer.locked_until.isoformat(timespec="minutes"))
            return None
        officer.failed_logins = 0
        officer.locked_until = None
        officer.totp_last_step = step
        await self._audit.record(db, officer_id=officer.id, action="login")
        return _identity(officer)

    async def identity(self, handle: str) -> OfficerIdentity:
        """An active officer's identity without a login: for admin commands and tests."""
        async with self._sessions() as db:
            officer = await db.scalar(select(Officer).where(Officer.handle == handle, Officer.active))
            if officer is None:
                raise LoginFailed(f"no active officer {handle!r}")
            return _identity(officer)

    async def issue_token(self, officer: OfficerIdentity) -> tuple[str, dt.datetime]:
        token = secrets.token_urlsafe(32)
        expires = _now() + self._token_ttl
        async with self._sessions.begin() as db:
            await db.execute(delete(ApiToken).where(ApiToken.expires_at < _now()))
            db.add(ApiToken(token_hash=self._keys().token_hash(token),
                            officer_id=officer.id, expires_at=expires))
        return token, expires

    async def authenticate(self, token: str) -> OfficerIdentity | None:
        digest = self._keys().token_hash(token)
        async with self._sessions() as db:
            row = await db.get(ApiToken, digest)
            if row is None or row.expires_at <= _now():
                return None
            officer = await db.get(Officer, row.officer_id)
            if officer is None or not officer.active or (
                officer.locked_until is not None and officer.locked_until > _now()
            ):
                return None
            return _identity(officer)

    async def revoke_token(self, token: str) -> None:
        async with self._sessions.begin() as db:
            await db.execute(delete(ApiToken).where(ApiToken.token_hash == self._keys().token_hash(token)))

    async def seal_plaintext_totp(self) -> int:
        """Seal the TOTP secrets stored in plaintext (by a release before the gateway had its
        own keys, or in a restored backup of one); return how many. Called only where the
        gateway's keys are made or a backup restored, never at a login or a start: else a
        writer of the database could plant a plaintext secret of its own to be sealed."""
        keys = self._keys()
        async with self._audit.transaction() as db:
            officers = (await db.scalars(select(Officer).where(Officer.totp_secret.is_not(None)))).all()
            plain = [o for o in officers if o.totp_secret is not None and not is_sealed(o.totp_secret)]
            for officer in plain:
                assert officer.totp_secret is not None
                officer.totp_secret = keys.seal_totp(officer.totp_secret, officer.id)
            if plain:
                await self._audit.record(db, officer_id=None, action="totp_secrets_sealed", count=len(plain))
        return len(plain)
