"""Officer workstations' keys for the officer onion's v3 client authorization.

The server keeps only public keys: one ``authorized_clients/NAME.auth`` file per workstation
(``descriptor:x25519:<base32 public key>``), which tor reads from the officer onion's service
directory. The private half is printed once for the workstation's tor and never stored here,
so a seized server cannot be used to reach the officer onion as an officer.

Fail closed: a v3 onion whose ``authorized_clients`` holds no valid key is published *without*
client authorization. A sealing key, whose private half is thrown away at birth, is therefore
always present: with no workstation authorized, nobody can reach the officer onion.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from .errors import BadClientName, UnknownClient, UnsafeKeyFile

#: base32 of an x25519 private key: a secret that belongs on one officer workstation only.
ClientPrivateKey = NewType("ClientPrivateKey", str)

AUTH_SUFFIX = ".auth"
SEAL_NAME = "_sealed"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_AUTH_LINE = re.compile(r"^descriptor:x25519:([A-Z2-7]{52})$")


def b32(key: bytes) -> str:
    """tor's base32: RFC 4648 alphabet, upper case, no padding (52 characters for 32 bytes)."""
    return base64.b32encode(key).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class ClientKeyPair:
    name: str
    public: str  # base32
    private: ClientPrivateKey

    def __repr__(self) -> str:  # keep the private key out of logs and tracebacks
        return f"ClientKeyPair(name={self.name!r}, public={self.public!r})"


def clamp(scalar: bytes) -> bytes:
    """RFC 7748's decodeScalar25519 bit-fixing, as bytes. tor stores a client's private key
    clamped (it clamps when it makes one), so the key printed for a workstation is clamped too;
    X25519 clamps on use anyway, so the public key is the same either way."""
    if len(scalar) != 32:
        raise ValueError("an X25519 scalar has 32 bytes")
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return bytes(k)


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 bytes) of a 32-byte private key, by pyca/cryptography
    (OpenSSL's constant-time X25519)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate_key_pair(name: str) -> ClientKeyPair:
    """A fresh x25519 key pair, both halves in tor's base32."""
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    private = clamp(raw)
    return ClientKeyPair(name, b32(public_key(private)), ClientPrivateKey(b32(private)))


def check_name(name: str) -> str:
    """A workstation name is a short file-name-safe word (letters, digits, ``-``, ``_``)."""
    if not _NAME.match(name):
        raise BadClientName(f"workstation name must be 1-64 letters, digits, '-' or '_', "
                            f"starting with a letter or digit: {name!r}")
    return name


def parse_client_lines(text: str, *, where: str) -> dict[str, str]:
    """``NAME descriptor:x25519:KEY`` lines (``#`` comments, blank lines) -> name: public key."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, key = line.partition(" ")
        match = _AUTH_LINE.match(key.strip())
        if not match:
            raise UnsafeKeyFile(f"{where}:{number}: not 'NAME descriptor:x25519:<52 base32>'")
        if check_name(name) == SEAL_NAME or name in keys:
            raise BadClientName(f"{where}:{number}: name {name!r} is reserved or repeated")
        keys[name] = match.group(1)
    return keys


def admin_key_instructions(pair: ClientKeyPair) -> str:
    """A key pair made on the admin's own machine, for the SSH onion."""
    return (
        f"# Admin key {pair.name!r} for the SSH onion. 1. The server gets the public line (ansible:\n"
        f"#    cpcp_admin_onion_clients, or a line of [tor] ssh_clients_file):\n"
        f"{pair.name} {auth_line(pair.public)}\n"
        f"# 2. Your own tor keeps the private key, in its ClientOnionAuthDir as\n"
        f"#    cpcp-ssh.auth_private once the server printed the SSH onion's address:\n"
        f"#    <address without .onion>:descriptor:x25519:<private key>\n"
        f"# private key: {pair.private}\n"
    )


def auth_line(public: str) -> str:
    """The content of a service-side ``NAME.auth`` file."""
    return f"descriptor:x25519:{public}"


def auth_private_line(onion_address: str, private: ClientPrivateKey) -> str:
    """The content of the workstation's ``*.auth_private`` file for ``onion_address``."""
    host = onion_address.removesuffix(".onion")
    return f"{host}:descriptor:x25519:{private}"


def workstation_instructions(onion_address: str, pair: ClientKeyPair,
                             auth_dir: str = "/var/lib/tor/onion_auth") -> str:
    """Exactly what the officer workstation's tor needs, as text for the admin to carry over."""
    return (
        f"# Officer workstation {pair.name!r}: give it these, over a trusted channel, once.\n"
        f"# 1. Save the next line, alone, as {auth_dir}/cpcp-officer.auth_private\n"
        f"#    (owned by the workstation's tor user, mode 0600):\n"
        f"{auth_private_line(onion_address, pair.private)}\n"
        f"# 2. Add this line to the workstation's torrc and reload tor:\n"
        f"ClientOnionAuthDir {auth_dir}\n"
        f"# 3. The desk then reaches the gateway at http://{onion_address}/ through the\n"
        f"#    workstation tor's SocksPort (Debian's default: 127.0.0.1:9050).\n"
        f"# The server keeps only the public key; this private key is shown once and not stored.\n"
    )


class ClientRegistry:
    """The ``authorized_clients`` folder of one onion service."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def ensure(self) -> None:
        """Create the folder (0700) and the sealing key if missing."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if not (self.directory / f"{SEAL_NAME}{AUTH_SUFFIX}").exists():
            # The private half is dropped here: this key authorizes nobody.
            self._write(SEAL_NAME, generate_key_pair(SEAL_NAME).public)

    def add(self, name: str) -> ClientKeyPair:
        """Authorize a new workstation; the returned private key is not stored anywhere."""
        check_name(name)
        self.ensure()
        if (self.directory / f"{name}{AUTH_SUFFIX}").exists():
            raise BadClientName(f"workstation {name!r} is already authorized; revoke it first")
        pair = generate_key_pair(name)
        self._write(name, pair.public)
        return pair

    def revoke(self, name: str) -> None:
        """Remove a workstation's key (takes effect when the onion is published again)."""
        check_name(name)
        try:
            (self.directory / f"{name}{AUTH_SUFFIX}").unlink()
        except FileNotFoundError as exc:
            raise UnknownClient(f"no authorized workstation named {name!r}") from exc

    def replace(self, keys: dict[str, str]) -> bool:
        """Authorize exactly ``keys`` (name: public key), besides the sealing key; True if
        that changed anything. For the SSH onion, whose keys the settings list."""
        self.ensure()
        before = self.public_keys()
        for name in self.names():
            if name not in keys:
                self.revoke(name)
        for name, public in keys.items():
            if before.get(check_name(name)) != public:
                self._write(name, public)
        return self.public_keys() != before

    def names(self) -> list[str]:
        """Authorized workstations, without the sealing key."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name.removesuffix(AUTH_SUFFIX) for p in self.directory.glob(f"*{AUTH_SUFFIX}")
                      if p.name != f"{SEAL_NAME}{AUTH_SUFFIX}")

    def public_keys(self) -> dict[str, str]:
        """Every valid key tor will use, sealing key included; refuses malformed files.

        A malformed file would be skipped by tor with a warning; if it were the only one, tor
        would publish the officer onion without client authorization.
        """
        keys: dict[str, str] = {}
        for path in sorted(self.directory.glob(f"*{AUTH_SUFFIX}")):
            match = _AUTH_LINE.match(path.read_text(encoding="ascii").strip())
            if not match:
                raise UnsafeKeyFile(f"{path}: not a 'descriptor:x25519:<key>' line")
            keys[path.name.removesuffix(AUTH_SUFFIX)] = match.group(1)
        return keys

    def _write(self, name: str, public: str) -> None:
        path = self.directory / f"{name}{AUTH_SUFFIX}"
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(auth_line(public) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
