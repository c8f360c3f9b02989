"""Source accounts: codename in, lookup id and reply key out. Nothing here stores a codename."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .codenames import Codename, ReplyPassphrase, derive_keys, normalize_codename
from .errors import ConfigError, UnknownCodename
from .models import Source
from .pgp import Keyring, random_uid
from .settings import KdfSettings
from .throttle import LoginThrottle


@dataclass(frozen=True)
class SourceLogin:
    """What a logged-in source's session holds: its row id and the key to its reply key."""

    source_id: int
    reply_passphrase: ReplyPassphrase


class SourceAccounts:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        salt: bytes | None,
        kdf: KdfSettings,
        throttle: LoginThrottle,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        # None for the gateway, which never opens secrets.json: no codename can be checked.
        self._salt = salt
        self._kdf = kdf
        self._throttle = throttle

    def _require_salt(self) -> bytes:
        if self._salt is None:
            raise ConfigError("this program does not hold the codename salt (secrets.json)")
        return self._salt

    async def create(self, codename: Codename, *, caller: str = "unattributed") -> SourceLogin:
        """Register a new codename: store its lookup id, make its reply key pair. The hash
        takes ``caller``'s turn among the login hashes."""
        async with self._throttle.hashing(caller):
            keys = await asyncio.to_thread(derive_keys, codename, salt=self._require_salt(), kdf=self._kdf)
        fpr = await asyncio.to_thread(
            self._keyring.generate_key, passphrase=keys.reply_passphrase, uid=random_uid()
        )
        public = await asyncio.to_thread(self._keyring.export_public_key, fpr)
        async with self._sessions.begin() as db:
            # The public half goes to the database for the gateway (see Source.reply_public_key).
            source = Source(lookup_id=keys.lookup_id, reply_key_fingerprint=fpr, reply_public_key=public)
            db.add(source)
            await db.flush()
            return SourceLogin(source_id=source.id, reply_passphrase=keys.reply_passphrase)

    async def login(self, typed: str, *, caller: str) -> SourceLogin:
        """Check a typed codename for ``caller`` (an opaque key: who shares a budget of wrong
        tries, see cpcp.throttle). Wrong ones and garbage raise UnknownCodename after the
        failure delay; when ``caller``'s budget is spent, Throttled comes first."""
        async with self._throttle.attempt(caller) as attempt:
            try:
                codename = normalize_codename(typed)
            except UnknownCodename:
                await attempt.wrong()  # garbage: no hash, but the caller's token stays spent
                raise
            async with attempt.hashing():
                keys = await asyncio.to_thread(derive_keys, codename, salt=self._require_salt(), kdf=self._kdf)
            async with self._sessions() as db:
                source_id = await db.scalar(select(Source.id).where(Source.lookup_id == keys.lookup_id))
            if source_id is None:
                await attempt.wrong()
                raise UnknownCodename("no such codename")
            attempt.right()
        return SourceLogin(source_id=source_id, reply_passphrase=keys.reply_passphrase)

    async def exists(self, source_id: int) -> bool:
        """False once retention deleted the source (a session may outlive it)."""
        async with self._sessions() as db:
            return await db.scalar(select(Source.id).where(Source.id == source_id)) is not None

    async def reply_key_fingerprint(self, source_id: int) -> str:
        async with self._sessions() as db:
            fpr = await db.scalar(select(Source.reply_key_fingerprint).where(Source.id == source_id))
        if fpr is None:
            raise UnknownCodename("source is gone")
        return fpr

    async def decrypt_reply(self, login: SourceLogin, ciphertext: bytes) -> bytes:
        """Plaintext of a reply, in memory, for this source's eyes only."""
        return await asyncio.to_thread(
            self._keyring.decrypt_bytes, ciphertext, passphrase=login.reply_passphrase
        )
