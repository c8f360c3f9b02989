"""The one typed settings object: loaded and validated once, then passed in.

This is the only module that reads configuration files or the environment. Values come from a
TOML file (``cpcp.toml`` in the data folder by default), then ``CPCP_*`` environment variables
override single keys (``CPCP_SOURCE__PORT=8081`` sets ``[source] port``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
SECONDS = 1
MINUTES = 60 * SECONDS

LOCALES = ("hi", "en")


@dataclass(frozen=True)
class KdfSettings:
    """argon2id cost of turning a codename into its lookup id and reply-key passphrase.

    The cost is what makes a stolen database useless for guessing codenames offline.
    """

    time_cost: int = 3
    memory_kib: int = 64 * KIB
    parallelism: int = 1


@dataclass(frozen=True)
class SourceSettings:
    """The public, source-facing web app."""

    host: str = "127.0.0.1"
    port: int = 8080
    session_idle_timeout: int = 60 * MINUTES
    # Cookie "Secure" flag: off by default because onion services are served over plain http.
    secure_cookie: bool = False
    # Codename logins are budgeted per caller: per tor circuit on the source onion (tor's
    # HiddenServiceExportCircuitID), one shared "direct" caller for connections without it.
    # cpcp/throttle.py explains the scheme.
    # A wrong codename makes its own caller wait this long (others are not held up by it).
    login_failure_delay: float = 2.0 * SECONDS
    # Wrong codenames (or garbage) one circuit may try at once, and how fast that refills.
    login_circuit_burst: int = 5
    login_circuit_failures_per_hour: int = 30
    # Tries of one circuit queued or hashing at once; more are told to wait.
    login_queue_per_circuit: int = 2
    # Circuits remembered at most (bounded memory); a full bucket idle this long is forgotten.
    login_circuits_tracked: int = 10_000
    login_circuit_idle: int = 10 * MINUTES
    # Site-wide ceiling of wrong codenames per minute from circuits that already gave a wrong
    # one: past it their tries wait (never refused); a circuit with no failure is not held to it.
    login_failures_per_minute: int = 30
    # Concurrent codename hashes; each costs ``kdf.memory_kib`` of memory.
    login_concurrency: int = 2
    # Per-codename limits over the last hour, against floods and pranks without a CAPTCHA
    # (which would need JavaScript or a third party): sendings (the tip and follow-ups) and
    # files in them. Past either, a 429 page says when to come back; nothing is stored.
    submissions_per_hour: int = 10
    files_per_hour: int = 60


@dataclass(frozen=True)
class GatewaySettings:
    """The officer-facing gateway (behind its own onion with client authorization)."""

    host: str = "127.0.0.1"
    port: int = 8081
    token_ttl: int = 8 * 60 * MINUTES
    max_login_failures: int = 5
    lockout: int = 15 * MINUTES
    # The longest a desk's poll of the change feed is held open (GET /api/v1/changes?wait=):
    # under Tor's idle circuit limits, and short enough that a restart keeps no desk waiting.
    feed_max_wait: int = 25


@dataclass(frozen=True)
class TorSettings:
    """The deployment's own tor (``cpcp-onion run``)."""

    # A torrc fragment the deployment's tor reads after CPCP's own lines: bridges on a censored
    # network, a test network's DirAuthority lines. Plain "Option value" lines; the options CPCP
    # sets itself (control port, DataDirectory, SOCKS, onion services) are refused there:
    # onion/deployment.py ALLOWED_OPTIONS lists what is accepted.
    torrc_include: Path | None = None
    # Where this tor keeps its DataDirectory (tor/), the onion keys and client keys (onion/) and
    # its log (logs/tor.log). Empty: the data folder. A folder of its own lets tor run as a user
    # of its own, so the apps cannot read the onion keys (ansible/server.yml does that).
    data_dir: Path | None = None
    # Admin SSH through a third onion service (SecureDrop's pattern): sshd's loopback port
    # (0: no SSH onion), and the admins' client keys for it, one "NAME descriptor:x25519:KEY"
    # line each (see ``cpcp-onion admin-key``). Only these keys can reach the onion.
    ssh_port: int = 0
    ssh_clients_file: Path | None = None


@dataclass(frozen=True)
class BackupSettings:
    """``cpcp-admin backup``: one file, encrypted to a backup key whose private half is kept off
    the server (cpcp/backup.py). The backup holds the server secrets and the source onion's key,
    so this is not the oversight key: whoever holds it can stand up the whole server."""

    # The backup key's pinned fingerprint; empty: no backup can be made.
    fingerprint: str = ""
    key_file: str = "backup.asc"  # in keys_dir


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    keys_dir: Path
    deployment_file: Path | None
    oversight_fingerprint: str
    oversight_key_file: str = "oversight.asc"  # in keys_dir
    default_locale: str = "hi"
    # The files of one sending together (the form's "500 MB in total"); the text has its own
    # limit, max_text_chars, so a file of exactly this size with a long text still goes.
    max_upload_bytes: int = 500 * MIB
    max_files_per_submission: int = 20
    max_text_chars: int = 20_000
    gpg_binary: str = "gpg"
    source: SourceSettings = field(default_factory=SourceSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    kdf: KdfSettings = field(default_factory=KdfSettings)
    tor: TorSettings = field(default_factory=TorSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    # True where the source app and the gateway run as two users of one group (ansible's
    # cpcp-source and cpcp-gateway in cpcp-apps): the store's folders are made 2770 and its
    # objects 0640, and a SQLite database 0660, so that both may write them. False (one user,
    # as in development): everything stays 0700/0600.
    shared_data: bool = False

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def gnupg_home(self) -> Path:
        return self.data_dir / "gnupg"

    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secrets.json"

    @property
    def gateway_secrets_file(self) -> Path:
        return self.data_dir / "gateway-secrets.json"

    @property
    def gateway_gnupg_home(self) -> Path:
        """The gateway's own GnuPG homes (officers/, sources/): public keys only, so that the
        gateway never opens the source app's homes (two users on one home fight over its
        gpg-agent, and gnupg/sources holds the reply keys' secret halves)."""
        return self.data_dir / "gnupg-gateway"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML or environment value to the annotated type of the field."""
    try:
        if target in ("int", int):
            return int(raw)
        if target in ("float", float):
            return float(raw)
        if target in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if target in ("str", str):
            return str(raw)
        if target in ("Path", Path):
            return Path(raw)
        if target in ("Path | None",):
            return None if raw in ("", None) else Path(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {raw!r} ({exc})") from exc
    raise ConfigError(f"setting {name!r}: unsupported type {target!r}")


def _build(cls: Any, values: Mapping[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(prefix + u for u in sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        if name not in values:
            continue
        raw = values[name]
        if f.type in _SECTIONS:
            sub = _SECTIONS[f.type]
            if not isinstance(raw, Mapping):
                raise ConfigError(f"setting {prefix}{name!r} must be a table")
            kwargs[name] = _build(sub, raw, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(prefix + name, raw, f.type)
    return cls(**kwargs)


_SECTIONS: dict[str, Any] = {
    "SourceSettings": SourceSettings,
    "GatewaySettings": GatewaySettings,
    "KdfSettings": KdfSettings,
    "TorSettings": TorSettings,
    "BackupSettings": BackupSettings,
}


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """``CPCP_<FIELD>`` and ``CPCP_<SECTION>__<FIELD>`` for the server's own settings only:
    other programs' variables (``CPCP_DESK_*``, ``CPCP_TEST_*``) are not ours to refuse, while a
    misspelt field inside one of our sections still fails."""
    ours = {f.name for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("CPCP_"):
            continue
        parts = key[len("CPCP_"):].lower().split("__")
        if parts[0] not in ours:
            _refuse_one_underscore(key, parts[0])
            continue
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _refuse_one_underscore(key: str, name: str) -> None:
    """``CPCP_SOURCE_PORT`` for ``CPCP_SOURCE__PORT`` (the desk's are ``CPCP_DESK_PORT``, so the
    slip is easy) would be ignored: the program, and scripts/status, would use another port
    than the one the user set. A section's own field after one underscore is refused."""
    for section in dataclasses.fields(Settings):
        sub = _SECTIONS.get(str(section.type))
        rest = name.removeprefix(section.name + "_")
        if sub is not None and rest != name and rest in {f.name for f in dataclasses.fields(sub)}:
            raise ConfigError(f"{key} is not a setting; [{section.name}] {rest} is "
                              f"CPCP_{section.name.upper()}__{rest.upper()} (two underscores)")


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file (if any) and the ``CPCP_*`` environment; validate; return Settings.

    ``config_file`` defaults to ``$CPCP_CONFIG``. Relative paths in the file are taken relative
    to the file's folder.
    """
    env = os.environ if env is None else env
    if config_file is None and env.get("CPCP_CONFIG"):
        config_file = Path(env["CPCP_CONFIG"])
    values: dict[str, Any] = {}
    base = Path.cwd()
    if config_file is not None:
        try:
            values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {config_file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        base = config_file.resolve().parent
    values = _merge(values, _env_overrides(env))
    if "data_dir" not in values:
        raise ConfigError("data_dir is not set (config file or CPCP_DATA_DIR)")
    for key in ("data_dir", "keys_dir", "deployment_file"):
        if values.get(key):
            values[key] = str((base / str(values[key])).resolve())
    tor = values.get("tor")
    for key in ("torrc_include", "ssh_clients_file", "data_dir"):
        tor = values.get("tor")
        if isinstance(tor, Mapping) and tor.get(key):
            values["tor"] = {**tor, key: str(base / str(tor[key]))}
    data_dir = Path(values["data_dir"])
    values.setdefault("database_url", f"sqlite+aiosqlite:///{data_dir / 'cpcp.sqlite'}")
    values.setdefault("keys_dir", str(data_dir / "keys"))
    values.setdefault("deployment_file", None)
    if "oversight_fingerprint" not in values:
        raise ConfigError("oversight_fingerprint is not set: every tip is also encrypted to it")
    settings: Settings = _build(Settings, values, "")
    return validate(settings)


def validate(settings: Settings) -> Settings:
    """Fail closed on settings that cannot work or would weaken the system."""
    fpr = settings.oversight_fingerprint
    if len(fpr) != 40 or any(c not in "0123456789ABCDEF" for c in fpr):
        raise ConfigError("oversight_fingerprint must be a 40-hex-digit upper-case fingerprint")
    backup = settings.backup.fingerprint
    if backup and (len(backup) != 40 or any(c not in "0123456789ABCDEF" for c in backup)):
        raise ConfigError("backup.fingerprint must be a 40-hex-digit upper-case fingerprint")
    if settings.default_locale not in LOCALES:
        raise ConfigError(f"default_locale must be one of {', '.join(LOCALES)}")
    if not settings.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError("database_url must use sqlite+aiosqlite:// or postgresql+asyncpg://")
    if settings.max_upload_bytes < 1 * MIB:
        raise ConfigError("max_upload_bytes must be at least 1 MiB")
    if not 0 <= settings.gateway.feed_max_wait <= 60:
        raise ConfigError("gateway.feed_max_wait must be between 0 and 60 seconds")
    if settings.kdf.memory_kib < 8 * KIB or settings.kdf.time_cost < 1:
        raise ConfigError("kdf settings are too weak (memory_kib >= 8192, time_cost >= 1)")
    src = settings.source
    if min(src.login_concurrency, src.login_failures_per_minute, src.login_circuit_burst,
           src.login_circuit_failures_per_hour, src.login_queue_per_circuit,
           src.login_circuits_tracked) < 1 or src.login_circuit_idle < 0 or src.login_failure_delay < 0:
        raise ConfigError("source login_* settings must be >= 1 (login_circuit_idle and "
                          "login_failure_delay >= 0)")
    if settings.source.submissions_per_hour < 1 or settings.source.files_per_hour < 0:
        raise ConfigError("source submissions_per_hour must be >= 1 and files_per_hour >= 0")
    if not 0 <= settings.tor.ssh_port < 65536:
        raise ConfigError("tor.ssh_port must be a port (0: no SSH onion)")
    if settings.tor.ssh_port and settings.tor.ssh_clients_file is None:
        raise ConfigError("tor.ssh_port needs tor.ssh_clients_file: the SSH onion is never "
                          "published without client authorization")
    include = settings.tor.torrc_include
    if include is not None:
        # Checked here so that a typo stops every program at start-up, not tor much later.
        if not include.exists():
            raise ConfigError(f"tor.torrc_include: {include} does not exist")
        if not include.is_file():
            raise ConfigError(f"tor.torrc_include: {include} is not a regular file")
        try:
            with include.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"tor.torrc_include: cannot read {include}: {exc.strerror}") from exc
    return settings
