"""The gateway's own secrets: random keys in ``gateway-secrets.json`` (0600, the gateway's user
alone), never in the database that the source app can read and write too.

- ``totp_key`` seals each officer's TOTP secret in the database (AES-256-GCM, bound to the
  officer's row id), so a reader of the database learns no secret and a writer cannot plant one.
- ``token_key`` keys the hash of the desks' bearer tokens (HMAC-SHA256), so a writer of the
  database cannot insert a token of its own.

The sealed format persists in the database: ``v1:`` + base64(nonce 12 bytes || ciphertext ||
tag 16 bytes); tests/test_gateway_secrets.py pins it with a known answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import ConfigError

SEALED_PREFIX = "v1:"
_FIELDS = ("totp_key", "token_key")


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


def _totp_aad(officer_id: int) -> bytes:
    # Bound to the row: a sealed secret copied onto another officer's row does not open.
    return f"cpcp officer totp {officer_id}".encode()


@dataclass(frozen=True)
class GatewaySecrets:
    totp_key: bytes
    token_key: bytes

    def seal_totp(self, secret: str, officer_id: int, *, nonce: bytes | None = None) -> str:
        """``nonce`` only for the known-answer test: a fresh random one otherwise."""
        nonce = secrets.token_bytes(12) if nonce is None else nonce
        sealed = AESGCM(self.totp_key).encrypt(nonce, secret.encode(), _totp_aad(officer_id))
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def open_totp(self, stored: str | None, officer_id: int) -> str | None:
        """The TOTP secret, or None when there is none, it is not sealed (plaintext written
        by someone without the key) or it does not open with this key for this row."""
        if stored is None or not is_sealed(stored):
            return None
        try:
            raw = base64.b64decode(stored[len(SEALED_PREFIX):], validate=True)
            return AESGCM(self.totp_key).decrypt(raw[:12], raw[12:], _totp_aad(officer_id)).decode()
        except (ValueError, InvalidTag):
            return None

    def token_hash(self, token: str) -> str:
        return hmac.new(self.token_key, token.encode(), hashlib.sha256).hexdigest()


def create_gateway_secrets(path: Path) -> GatewaySecrets:
    """Write fresh keys to ``path`` (0600); refuse to overwrite existing ones."""
    made = GatewaySecrets(totp_key=secrets.token_bytes(32), token_key=secrets.token_bytes(32))
    body = json.dumps({k: base64.b64encode(getattr(made, k)).decode() for k in _FIELDS}, indent=2).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already; refusing to replace the gateway's secrets") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    return made


def load_gateway_secrets(path: Path) -> GatewaySecrets:
    """Read the keys; fail closed when missing, malformed or readable by others."""
    try:
        mode = path.stat().st_mode & 0o777
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing: run 'cpcp-admin init' as the gateway's user") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(f"{path} must not be readable by group or others (chmod 600)")
    try:
        values = {k: base64.b64decode(raw[k], validate=True) for k in _FIELDS}
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is malformed: {exc}") from exc
    if any(len(v) != 32 for v in values.values()):
        raise ConfigError(f"{path} holds keys that are not 32 bytes")
    return GatewaySecrets(**values)
