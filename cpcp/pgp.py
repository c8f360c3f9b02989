"""The OpenPGP layer: the one place that spawns gpg.

Key management and small decryptions go through python-gnupg. Streaming encryption of uploads
spawns gpg with asyncio directly, so request bytes flow into gpg's stdin and ciphertext from its
stdout straight into a store file: no plaintext buffer, no plaintext temp file, and back-pressure
all the way to the client's socket (python-gnupg would need a thread and a pipe per upload).

Compression is off on purpose: tips are mostly photos and videos, which do not compress, and
gpg's default zlib is ~10x slower than the encryption itself (1.2 s vs 11.6 s for 256 MiB).
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import fcntl
import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import gnupg

from .errors import DecryptionFailed, EncryptionFailed, KeyProblem

Fingerprint = NewType("Fingerprint", str)

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux

_AGENT_CONF = (
    # A source's reply-key passphrase is not cached for later calls: default-cache-ttl 0.
    # max-cache-ttl must not be 0, though: key generation hands the passphrase to its own
    # self-signatures through a one-time nonce cache entry, and with 0 the agent purged it
    # whenever a second boundary fell between the two steps (key generation then asked for a
    # pinentry and failed, under load). So that entry lives in the agent's memory for up to
    # ~12 s (10 s + its clean-up tick) after a new source's key is made; never on disk.
    "default-cache-ttl 0\nmax-cache-ttl 10\nallow-loopback-pinentry\n"
    # Reply-key passphrases are 256-bit HMAC outputs, so S2K stretching adds nothing; the
    # agent's calibrated default costs about 1 s per new source.
    "s2k-count 65536\n"
)
_COMMON_ARGS = ("--batch", "--no-tty", "--quiet", "--yes", "--no-greeting", "--trust-model", "always")


AGENT_USERS_FILE = ".cpcp-agent-users"


def stop_agents(home: Path, *, gpg_binary: str = "gpg") -> None:
    """Stop the gpg-agent (and any other GnuPG daemon) running for ``home``, whoever uses it:
    :class:`AgentUse` calls it when no other program is using the home."""
    sibling = Path(gpg_binary).with_name("gpgconf")  # the gpgconf of that gpg, if it has one
    gpgconf = str(sibling) if os.sep in gpg_binary and sibling.exists() else "gpgconf"
    if home.is_dir():
        try:
            subprocess.run([gpgconf, "--homedir", str(home), "--kill", "all"],
                           capture_output=True, check=False, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass  # nothing to stop with, or it hangs: stopping must not fail the shutdown


class AgentUse:
    """This program's use of a GnuPG home, so that the last user stops its gpg-agent.

    gpg starts an agent per home on first need and leaves it running after the program that
    used it exits: every program must stop the ones it started, or a server's restarts and a
    test run pile up hundreds. But the source app and the gateway share the server's homes, and
    killing an agent breaks the other's key generation or decryption in flight. So each user
    holds a shared flock on a file in the home (the kernel drops it if the process dies), and
    on close the agent is stopped only if an exclusive lock can be had: nobody else is using
    the home. While one is held, a new user's shared lock waits the moment it takes.
    """

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
                return  # another program (or keyring) still uses the home: the last one stops it
            stop_agents(self.home, gpg_binary=self.gpg_binary)
        finally:
            os.close(fd)


_agent_uses: set[AgentUse] = set()


@atexit.register
def _close_agent_uses_at_exit() -> None:
    # The backstop for a Keyring nobody closed (cpcp-admin demo's workstation keyring, say).
    while _agent_uses:
        _agent_uses.pop().close()


def _prepare_home(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    conf = home / "gpg-agent.conf"
    if not conf.exists() or conf.read_text() != _AGENT_CONF:
        conf.write_text(_AGENT_CONF)
        # An agent already running for this home must pick the settings up.
        subprocess.run(["gpgconf", "--homedir", str(home), "--reload", "gpg-agent"],
                       capture_output=True, check=False)


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent gpg may have started for ``home`` (a scratch home about to go)."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                   capture_output=True, check=False)


@dataclass(frozen=True)
class KeyInfo:
    fingerprint: Fingerprint
    uids: tuple[str, ...]
    expires: dt.datetime | None
    can_encrypt: bool
    validity: str  # gpg's field: 'e' expired, 'r' revoked, '-'/'u'/'f'... otherwise


class Keyring:
    """One GnuPG home. The server has two: officers' public keys, and sources' reply keys."""

    def __init__(self, home: Path, *, gpg_binary: str = "gpg") -> None:
        _prepare_home(home)
        self.home = home
        self.gpg_binary = gpg_binary
        self._gpg = gnupg.GPG(gnupghome=str(home), gpgbinary=gpg_binary)
        self._gpg.encoding = "utf-8"
        self._agent = AgentUse(home, gpg_binary)

    def close(self) -> None:
        """Done with this home: its gpg-agent is stopped unless another program (or keyring)
        still uses it (see AgentUse). Calling it again does nothing."""
        self._agent.close()

    # -- keys -------------------------------------------------------------------------------

    def import_public_keys(self, armored: str) -> list[Fingerprint]:
        """Import public keys only; a private key block is refused before gpg sees it."""
        if "PRIVATE KEY BLOCK" in armored:
            raise KeyProblem("refusing to import a private key onto the server")
        result = self._gpg.import_keys(armored)
        fprs = [Fingerprint(f) for f in result.fingerprints if f]
        if not fprs:
            raise KeyProblem("no OpenPGP public key found in the data given")
        return fprs

    def key_info(self, fingerprint: str) -> KeyInfo | None:
        keys = self._gpg.list_keys(keys=[fingerprint])
        for key in keys:
            if key["fingerprint"] == fingerprint:
                expires = (
                    dt.datetime.fromtimestamp(int(key["expires"]), dt.UTC) if key["expires"] else None
                )
                return KeyInfo(
                    fingerprint=Fingerprint(key["fingerprint"]),
                    uids=tuple(key["uids"]),
                    expires=expires,
                    can_encrypt="E" in key["cap"],
                    validity=key["trust"],
                )
        return None

    def require_encryption_key(self, fingerprint: str, *, who: str) -> KeyInfo:
        """The key exists under exactly this fingerprint and can encrypt now, or KeyProblem."""
        info = self.key_info(fingerprint)
        if info is None:
            raise KeyProblem(f"{who}: no public key with pinned fingerprint {fingerprint}")
        if info.validity == "r":
            raise KeyProblem(f"{who}: key {fingerprint} is revoked")
        now = dt.datetime.now(dt.UTC)
        if info.validity == "e" or (info.expires is not None and info.expires <= now):
            raise KeyProblem(f"{who}: key {fingerprint} has expired")
        if not info.can_encrypt:
            raise KeyProblem(f"{who}: key {fingerprint} has no usable encryption subkey")
        return info

    def encryption_key_ids(self, fingerprint: str) -> set[str]:
        """Long key ids a message to this key names as recipient (its encryption subkeys)."""
        ids: set[str] = set()
        for key in self._gpg.list_keys(keys=[fingerprint]):
            if key["fingerprint"] != fingerprint:
                continue
            if "e" in key.get("cap", ""):
                ids.add(key["keyid"])
            for sub in key.get("subkeys", []):
                if "e" in sub[1]:
                    ids.add(sub[0])
        return ids

    def message_recipients(self, data: bytes) -> set[str]:
        """Key ids an OpenPGP message is encrypted to, read without decrypting; empty when
        ``data`` is not an encrypted OpenPGP message at all."""
        if not (data.startswith(b"-----BEGIN PGP MESSAGE-----") or data[:1] in (b"\x84", b"\x85", b"\xc1")):
            return set()
        result = self._gpg.get_recipients(data)
        return {r for r in result if r}

    def secret_fingerprints(self) -> set[Fingerprint]:
        return {Fingerprint(k["fingerprint"]) for k in self._gpg.list_keys(secret=True)}

    def export_public_key(self, fingerprint: str) -> str:
        armored = self._gpg.export_keys([fingerprint])
        if not isinstance(armored, str) or "PUBLIC KEY BLOCK" not in armored:
            raise KeyProblem(f"no public key {fingerprint} to export")
        return armored

    def generate_key(self, *, passphrase: str | None, uid: str) -> Fingerprint:
        """A new Ed25519/Curve25519 key pair whose secret part is locked with ``passphrase``
        (``None`` only for demo and test officer keys, which live off the server).

        Blocking (about 0.1 s): call it from a thread.
        """
        if not uid or any(ch in uid for ch in "\r\n") or (passphrase and "\n" in passphrase):
            raise EncryptionFailed("a key's user id and passphrase are single lines")
        # Written out rather than through gen_key_input: that helper writes "(None) <None>" for
        # an absent comment and e-mail, or this machine's user and host name for empty ones;
        # a source's reply key names no one, not even the server.
        lines = [
            "Key-Type: EDDSA", "Key-Curve: ed25519", "Key-Usage: sign",
            "Subkey-Type: ECDH", "Subkey-Curve: cv25519", "Subkey-Usage: encrypt",
            f"Name-Real: {uid}", "Expire-Date: 0",
            f"Passphrase: {passphrase}" if passphrase is not None else "%no-protection",
            "%commit",
        ]
        spec = "\n".join(lines) + "\n"
        result = self._gpg.gen_key(spec)
        if not result.fingerprint:
            raise EncryptionFailed(f"gpg could not generate a key: {result.stderr[-300:]}")
        return Fingerprint(result.fingerprint)

    def delete_key_pair(self, fingerprint: str, *, passphrase: str) -> None:
        self._gpg.delete_keys([fingerprint], secret=True, passphrase=passphrase)
        self._gpg.delete_keys([fingerprint])

    def forget_key(self, fingerprint: str) -> None:
        """Delete a key pair whose passphrase nobody here knows (a source's reply key, when
        retention removes its source); gpg needs none to delete in batch mode. Blocking."""
        self._gpg.delete_keys([fingerprint], secret=True, expect_passphrase=False)
        self._gpg.delete_keys([fingerprint])
        if self.key_info(fingerprint) is not None:
            raise KeyProblem(f"gpg did not delete key {fingerprint}")

    def key_creation_times(self) -> dict[Fingerprint, float]:
        """Every public key's fingerprint and creation time (seconds since the epoch)."""
        return {Fingerprint(k["fingerprint"]): float(k["date"]) for k in self._gpg.list_keys()}

    # -- data -------------------------------------------------------------------------------

    def encrypt_bytes(self, data: bytes, recipients: Sequence[str]) -> bytes:
        """Small in-memory encryption (tests, the core's own replies); blocking."""
        result = self._gpg.encrypt(
            data, list(recipients), armor=False, always_trust=True,
            extra_args=["--compress-algo", "none"],
        )
        if not result.ok:
            raise EncryptionFailed(f"gpg: {result.status}")
        return bytes(result.data)

    def decrypt_bytes(self, ciphertext: bytes, *, passphrase: str | None = None) -> bytes:
        """Decrypt in memory; plaintext is returned, never written. Blocking."""
        result = self._gpg.decrypt(ciphertext, passphrase=passphrase, extra_args=["--no-symkey-cache"])
        if not result.ok:
            raise DecryptionFailed(f"gpg: {result.status}")
        return bytes(result.data)

    # -- streaming --------------------------------------------------------------------------

    async def start_encryption(self, recipients: Sequence[str], output_fd: int) -> EncryptionStream:
        """Spawn ``gpg --encrypt`` reading from us and writing ciphertext to ``output_fd``.

        Nothing about the data is on gpg's command line: any local user can read a process's
        arguments (ps, /proc/PID/cmdline), so a file's name was visible there while it was
        encrypted. gpg reads stdin and so writes an empty, neutral name in the literal packet;
        the original name travels inside the tip's encrypted JSON message (cpcp.intake).
        """
        if not recipients:
            raise EncryptionFailed("no recipients")
        args: list[str] = [self.gpg_binary, "--homedir", str(self.home), *_COMMON_ARGS,
                           "--compress-algo", "none", "--encrypt"]
        for fpr in recipients:
            args += ["--recipient", fpr]
        args += ["--output", "-"]
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=output_fd,
            stderr=asyncio.subprocess.PIPE,
        )
        return EncryptionStream(proc)


class EncryptionStream:
    """Feed plaintext with ``write``; ``finish`` waits for gpg; ``abort`` kills it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        assert proc.stderr is not None and proc.stdin is not None
        # A 64 KiB pipe lets gpg drain it in a fraction of a millisecond and then idle while
        # the next request chunk is parsed; 1 MiB lets the two overlap (bench/upload.py).
        pipe = proc.stdin.transport.get_extra_info("pipe")
        if pipe is not None:
            try:
                fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, 1024 * 1024)
            except OSError:
                pass  # the user's pipe memory limit is reached: still correct, only slower
            except ValueError:
                pass  # gpg already exited and asyncio closed the pipe: write/finish say why
        self._stderr_task = asyncio.ensure_future(proc.stderr.read())

    async def write(self, chunk: bytes) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(chunk)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            await self.abort()
            raise EncryptionFailed("gpg stopped reading") from exc

    async def finish(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.close()
            await stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError):
            pass
        code = await self._proc.wait()
        err = await self._stderr_task
        if code != 0:
            raise EncryptionFailed(f"gpg exited {code}: {err.decode('utf-8', 'replace')[-300:]}")

    async def abort(self) -> None:
        if self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
            await self._proc.wait()
        self._stderr_task.cancel()


def random_uid() -> str:
    """A user id for a source reply key that says nothing about the source."""
    return f"cpcp-source-{secrets.token_hex(8)}"
