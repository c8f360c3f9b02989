"""OpenPGP at the desk: the one place the desk spawns gpg, always on the officer's own GnuPG
home. Private-key operations go through gpg-agent (its pinentry asks for the passphrase, or the
smartcard's PIN), so the desk never sees a passphrase.

Plaintext is only ever returned in memory or streamed out of gpg's stdout: nothing here writes
a decrypted byte to disk. Keys fetched from the gateway are imported only when the key block
holds exactly the fingerprint the gateway pinned, and replies are encrypted with
``--trust-model always`` because that pin is the trust decision.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import gnupg

from .errors import ConfigError, CryptoError

CHUNK = 64 * 1024
_ARGS = ("--batch", "--no-tty", "--quiet", "--no-greeting")


def stop_agents(home: Path, *, gpg_binary: str = "gpg") -> None:
    """Stop the gpg-agent (and scdaemon...) running for ``home``: gpg leaves the one it starts
    running after the desk exits, holding the officer's unlocked key until its cache expires.
    gpg starts a new one when needed."""
    sibling = Path(gpg_binary).with_name("gpgconf")  # the gpgconf of that gpg, if it has one
    gpgconf = str(sibling) if os.sep in gpg_binary and sibling.exists() else "gpgconf"
    if home.is_dir():
        try:
            subprocess.run([gpgconf, "--homedir", str(home), "--kill", "all"],
                           capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass  # nothing to stop with, or it hangs: stopping must not fail the shutdown


AGENT_USERS_FILE = ".cpcp-agent-users"


class AgentUse:
    """The desk's use of the officer's GnuPG home: a shared flock on a file in it, so that the
    agent is stopped on close only if no other desk process holds one (killing an agent breaks
    the decryption another is doing). The same scheme as cpcp.pgp.AgentUse, which the desk may
    not import."""

    def __init__(self, home: Path, gpg_binary: str) -> None:
        self.home = home
        self.gpg_binary = gpg_binary
        self._closed = False
        self._fd: int | None = None
        try:
            self._fd = os.open(home / AGENT_USERS_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        except OSError:
            pass  # a home we cannot write to: no count kept, close stops the agent regardless
        _agent_uses.add(self)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _agent_uses.discard(self)
        fd, self._fd = self._fd, None
        if fd is None:
            stop_agents(self.home, gpg_binary=self.gpg_binary)
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # still in use elsewhere: the last user stops it
            stop_agents(self.home, gpg_binary=self.gpg_binary)
        finally:
            os.close(fd)


_agent_uses: set[AgentUse] = set()


@atexit.register
def _close_agent_uses_at_exit() -> None:
    # The backstop for a desk that did not get to close its crypto (it failed to start, say).
    while _agent_uses:
        _agent_uses.pop().close()


class DeskCrypto:
    def __init__(self, home: Path, *, gpg_binary: str = "gpg") -> None:
        if not home.is_dir():
            raise ConfigError(f"gnupg_home {home} does not exist")
        self.home = home
        self.gpg_binary = gpg_binary
        self._gpg = gnupg.GPG(gnupghome=str(home), gpgbinary=gpg_binary)
        self._gpg.encoding = "utf-8"
        self._agent = AgentUse(home, gpg_binary)

    def close(self) -> None:
        """Stop the agent of the officer's home (see AgentUse); called when the desk stops."""
        self._agent.close()

    def check(self) -> set[str]:
        """Fail closed at start-up: the home must hold at least one private key (or a
        smartcard stub). Returns the fingerprints of the keys with a secret part."""
        found = self.secret_fingerprints()
        if not found:
            raise ConfigError(f"gnupg_home {self.home} holds no private key: the desk could decrypt nothing")
        return found

    def secret_fingerprints(self) -> set[str]:
        return {str(k["fingerprint"]) for k in self._gpg.list_keys(secret=True)}

    # -- keys --------------------------------------------------------------------------------

    def has_public_key(self, fingerprint: str) -> bool:
        return any(k["fingerprint"] == fingerprint for k in self._gpg.list_keys(keys=[fingerprint]))

    def import_pinned(self, armored: str, fingerprint: str) -> None:
        """Import a public key from the gateway if, and only if, the block holds exactly the
        pinned fingerprint (a block smuggling a second key is refused before import)."""
        if "PRIVATE KEY BLOCK" in armored:
            raise CryptoError("refusing a private key block from the gateway")
        scanned = {str(k["fingerprint"]) for k in self._gpg.scan_keys_mem(armored)}
        if scanned != {fingerprint}:
            raise CryptoError(f"the key block does not hold exactly the pinned key {fingerprint}")
        result = self._gpg.import_keys(armored)
        if fingerprint not in set(result.fingerprints):
            raise CryptoError(f"gpg did not import key {fingerprint}")

    # -- data --------------------------------------------------------------------------------

    def encrypt_reply(self, text: str, recipients: Sequence[str]) -> str:
        """An ASCII-armored OpenPGP message to every pinned fingerprint given (the source's
        reply key and the unit's officers). Blocking."""
        if not recipients:
            raise CryptoError("a reply needs recipients")
        result = self._gpg.encrypt(text.encode("utf-8"), list(recipients), armor=True, always_trust=True)
        armored = bytes(result.data).decode("ascii", "replace")
        if not result.ok or not armored.startswith("-----BEGIN PGP MESSAGE-----"):
            raise CryptoError(f"gpg could not encrypt the reply ({result.status})")
        return armored

    def encrypt_bytes(self, data: bytes, recipients: Sequence[str]) -> str:
        """An ASCII-armored OpenPGP message of ``data`` to the pinned fingerprints. Blocking."""
        if not recipients:
            raise CryptoError("a message needs recipients")
        result = self._gpg.encrypt(data, list(recipients), armor=True, always_trust=True)
        armored = bytes(result.data).decode("ascii", "replace")
        if not result.ok or not armored.startswith("-----BEGIN PGP MESSAGE-----"):
            raise CryptoError(f"gpg could not encrypt ({result.status})")
        return armored

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt in memory with the officer's key. Blocking."""
        result = self._gpg.decrypt(ciphertext, extra_args=["--no-symkey-cache"])
        if not result.ok:
            raise CryptoError(f"cannot decrypt with this desk's key ({result.status or 'gpg failed'})")
        return bytes(result.data)

    async def decrypt_file(self, path: Path) -> bytes:
        """Read a cached ciphertext and decrypt it in memory (in a thread)."""
        data = await asyncio.to_thread(path.read_bytes)
        return await asyncio.to_thread(self.decrypt, data)

    async def stream_decrypt(self, path: Path, *, limit: int | None = None) -> AsyncIterator[bytes]:
        """Decrypt a cached ciphertext, yielding plaintext chunks straight from gpg's stdout.

        With ``limit``, stop (and kill gpg) after that many bytes. Raises CryptoError at the
        end if gpg failed, so a consumer never takes a damaged file for a whole one. gpg is
        killed if the consumer stops early (a closed download, a failed export)."""
        proc = await asyncio.create_subprocess_exec(
            self.gpg_binary, "--homedir", str(self.home), *_ARGS, "--decrypt", "--output", "-",
            "--", os.fspath(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stderr = asyncio.ensure_future(proc.stderr.read())
        sent = 0
        try:
            while limit is None or sent < limit:
                chunk = await proc.stdout.read(CHUNK if limit is None else min(CHUNK, limit - sent))
                if not chunk:
                    break
                sent += len(chunk)
                yield chunk
            if limit is not None and sent >= limit:
                return
            code = await proc.wait()
            if code != 0:
                err = (await stderr).decode("utf-8", "replace").strip().splitlines()
                raise CryptoError(f"gpg could not decrypt ({err[-1] if err else f'exit {code}'})")
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            stderr.cancel()

    async def decrypt_head(self, path: Path, limit: int) -> tuple[bytes, bool]:
        """The first ``limit`` bytes of a file's plaintext, in memory; True if there is more."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.stream_decrypt(path, limit=limit + 1):
            parts.append(chunk)
            size += len(chunk)
        data = b"".join(parts)
        return data[:limit], size > limit
