"""Server secrets: random keys made once at ``cpcp-admin init`` and kept 0600 in the data folder."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class ServerSecrets:
    # Salt of the codename KDF: without it a stolen database cannot even be attacked offline.
    codename_salt: bytes
    # Key of the WTForms CSRF tokens and session cookies of the source app.
    source_csrf_key: bytes


def create_server_secrets(path: Path) -> ServerSecrets:
    """Write fresh secrets to ``path`` (mode 0600); refuse to overwrite existing ones."""
    made = ServerSecrets(codename_salt=secrets.token_bytes(32), source_csrf_key=secrets.token_bytes(32))
    body = json.dumps(
        {k: base64.b64encode(v).decode() for k, v in made.__dict__.items()}, indent=2
    ).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already; refusing to replace server secrets") from exc
    with os.fdopen(fd, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    return made


def load_server_secrets(path: Path) -> ServerSecrets:
    """Read the secrets; fail closed when missing, malformed or readable by others."""
    try:
        mode = path.stat().st_mode & 0o777
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path} is missing: run 'cpcp-admin init' first") from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from exc
    if mode & 0o077:
        raise ConfigError(f"{path} must not be readable by group or others (chmod 600)")
    try:
        values = {k: base64.b64decode(raw[k]) for k in ("codename_salt", "source_csrf_key")}
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"{path} is malformed: {exc}") from exc
    if any(len(v) < 32 for v in values.values()):
        raise ConfigError(f"{path} holds secrets shorter than 32 bytes")
    return ServerSecrets(**values)
