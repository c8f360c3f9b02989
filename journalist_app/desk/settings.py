"""The desk's own typed settings: loaded and validated once, then passed in.

This is the only desk module that reads configuration files or the environment. Values come
from a TOML file (``desk.toml``, flat keys), then ``CPCP_DESK_*`` environment variables
override single keys (``CPCP_DESK_PORT=8091`` sets ``port``). Relative paths are taken
relative to the file's folder. The desk shares no settings with the server: it imports nothing
of ``cpcp``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

SECONDS = 1
MINUTES = 60 * SECONDS
MIB = 1024 * 1024

ENV_PREFIX = "CPCP_DESK_"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: The desk's languages, Hindi first as on the source app.
LOCALES = ("hi", "en")


@dataclass(frozen=True)
class DeskSettings:
    """Everything the desk needs; frozen, so a view cannot change it."""

    #: The gateway's base URL, e.g. ``http://<officer onion>.onion`` (no path).
    gateway_url: str
    #: The officer's GnuPG home with the private key (or smartcard stub); passphrases go
    #: through gpg-agent and its pinentry, never through the desk.
    gnupg_home: Path
    #: Local cache of ciphertext and case metadata; never plaintext.
    data_dir: Path
    #: Where "export case" writes decrypted files; must not be inside ``data_dir``.
    export_dir: Path
    #: ``socks5h://127.0.0.1:9050`` (Tor). Required unless the gateway is on loopback.
    socks_proxy: str | None = None
    host: str = "127.0.0.1"
    port: int = 8090
    gpg_binary: str = "gpg"
    request_timeout: float = 120 * SECONDS
    session_idle_timeout: int = 30 * MINUTES
    #: How much of a file is decrypted into memory to read its embedded metadata.
    max_inspect_bytes: int = 64 * MIB
    #: The language the desk starts in; an officer's choice (a cookie) overrides it.
    default_locale: str = "hi"
    #: IANA name of the deployment's time zone: every time the desk shows is in it.
    time_zone: str = "Asia/Kolkata"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)  # checked by validate(); ZoneInfo caches instances
    #: Follow the gateway's change feed while an officer is logged in (new tips come in by
    #: themselves); false: only the Sync button fetches.
    follow: bool = True
    #: A desktop notification (unit and count only) when new tips come in; false: none.
    desktop_notifications: bool = True
    #: The session D-Bus for notifications; empty: ``$DBUS_SESSION_BUS_ADDRESS``.
    session_bus: str | None = None
    #: How long each poll of the gateway's change feed may be held open (seconds).
    follow_wait: int = 25

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Host headers the desk answers (anything else may be DNS rebinding)."""
        return frozenset({f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"})


_PATHS = ("gnupg_home", "data_dir", "export_dir")


def _coerce(name: str, raw: Any, target: str) -> Any:
    try:
        if target == "int":
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if target == "float":
            return float(raw)
        if target == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return str(raw).lower() in ("true", "1", "yes", "on")
            raise ValueError(raw)
        if target == "str":
            if not isinstance(raw, str | int):
                raise ValueError(raw)
            return str(raw)
        if target == "str | None":
            return None if raw in ("", None) else str(raw)
        if target == "Path":
            return Path(str(raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {raw!r}") from exc
    raise ConfigError(f"setting {name!r}: unsupported type {target!r}")  # pragma: no cover


def load_desk_settings(config_file: Path | None = None, env: Mapping[str, str] | None = None) -> DeskSettings:
    """Read the TOML file (default ``$CPCP_DESK_CONFIG``) and the ``CPCP_DESK_*`` environment;
    validate; return the settings or raise ConfigError."""
    env = os.environ if env is None else env
    if config_file is None and env.get("CPCP_DESK_CONFIG"):
        config_file = Path(env["CPCP_DESK_CONFIG"])
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
    for key, value in env.items():
        if key.startswith(ENV_PREFIX) and key != "CPCP_DESK_CONFIG":
            values[key[len(ENV_PREFIX):].lower()] = value
    fields = {f.name: f for f in dataclasses.fields(DeskSettings)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown desk setting(s): {', '.join(unknown)}")
    missing = sorted(n for n, f in fields.items()
                     if f.default is dataclasses.MISSING and n not in values)
    if missing:
        raise ConfigError(f"desk setting(s) not set: {', '.join(missing)}")
    kwargs = {name: _coerce(name, raw, str(fields[name].type)) for name, raw in values.items()}
    for key in _PATHS:
        kwargs[key] = (base / kwargs[key].expanduser()).resolve()
    if not kwargs.get("session_bus") and env.get("DBUS_SESSION_BUS_ADDRESS"):
        kwargs["session_bus"] = env["DBUS_SESSION_BUS_ADDRESS"]
    return validate(DeskSettings(**kwargs))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def validate(settings: DeskSettings) -> DeskSettings:
    """Fail closed on settings that would expose the desk or leak traffic outside Tor."""
    url = urlsplit(settings.gateway_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError("gateway_url must be an http:// or https:// URL with a host")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise ConfigError("gateway_url must be the gateway's base address only (no path, query or user)")
    if settings.socks_proxy is not None:
        proxy = urlsplit(settings.socks_proxy)
        if proxy.scheme != "socks5h" or not proxy.hostname or proxy.port is None:
            raise ConfigError("socks_proxy must look like socks5h://127.0.0.1:9050 "
                              "(socks5h: names are resolved by Tor, never by local DNS)")
    elif not _is_loopback(url.hostname):
        raise ConfigError("a gateway that is not on this machine must be reached through Tor: set socks_proxy")
    if settings.host not in LOOPBACK_NAMES:
        raise ConfigError("the desk listens on loopback only: host must be 127.0.0.1, localhost or ::1")
    if not 1 <= settings.port <= 65535:
        raise ConfigError("port must be between 1 and 65535")
    if settings.export_dir.is_relative_to(settings.data_dir):
        raise ConfigError("export_dir must not be inside data_dir: the cache never holds plaintext")
    if settings.data_dir.is_relative_to(settings.export_dir):
        raise ConfigError("data_dir must not be inside export_dir")
    if settings.request_timeout <= 0 or settings.session_idle_timeout <= 0:
        raise ConfigError("request_timeout and session_idle_timeout must be positive")
    if not 0 <= settings.follow_wait <= 60:
        raise ConfigError("follow_wait must be between 0 and 60 seconds")
    if settings.max_inspect_bytes < MIB:
        raise ConfigError("max_inspect_bytes must be at least 1 MiB")
    if settings.default_locale not in LOCALES:
        raise ConfigError(f"default_locale must be one of {', '.join(LOCALES)}")
    try:
        ZoneInfo(settings.time_zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:  # ValueError: not a zone name at all
        raise ConfigError(f"time_zone {settings.time_zone!r} is not a known time zone "
                          "(an IANA name such as Asia/Kolkata)") from exc
    return settings
