"""Who gets content-free alerts, from the deployment file (opt-in per unit)::

    [alerts]
    min_delay = 30          # seconds: a batch goes out uniformly at random in [min, max]
    max_delay = 120         # after its first tip, so its timing cannot single out a source

    [oversight]             # the district oversight (the SP's office): the last escalation
    alerts = ["mailtos://sp-office:PASSWORD@mail.example.in?to=sp@example.in"]

    [[officers]]
    handle = "sho-sadar"
    ...
    alerts = ["ntfy://ntfy.example.in/sho-sadar-7f3a"]   # where this officer is reached as a head

    [[units]]
    slug = "ps-sadar-bazar"
    ...
    alerts = ["mailtos://...", "json://..."]   # "N new tips for <unit>"
    head = "sho-sadar"                         # overdue cases are reminded to the head first

Every value is an Apprise URL (https://github.com/caronc/apprise/wiki). They hold credentials:
only ``cpcp-admin deploy`` (which refuses a bad one) and ``cpcp-alerts`` read them, from the
file; they are never copied to the database, the audit log or a log line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apprise

from .errors import ConfigError

DEFAULT_MIN_DELAY = 30.0
DEFAULT_MAX_DELAY = 120.0
MAX_DELAY = 3600.0


@dataclass(frozen=True)
class UnitAlerts:
    urls: tuple[str, ...] = ()
    head: str | None = None


@dataclass(frozen=True)
class AlertConfig:
    units: Mapping[str, UnitAlerts] = field(default_factory=dict)  # by slug
    officers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # by handle
    oversight: tuple[str, ...] = ()
    min_delay: float = DEFAULT_MIN_DELAY
    max_delay: float = DEFAULT_MAX_DELAY

    def for_unit(self, slug: str) -> UnitAlerts:
        return self.units.get(slug, UnitAlerts())

    def head_urls(self, slug: str) -> tuple[str, tuple[str, ...]]:
        """Who hears of a unit's overdue cases first: its head's URLs, else the unit's own."""
        unit = self.for_unit(slug)
        if unit.head is not None and self.officers.get(unit.head):
            return f"head {unit.head}", self.officers[unit.head]
        return "unit", unit.urls

    @property
    def any(self) -> bool:
        return bool(self.oversight or any(u.urls for u in self.units.values())
                    or any(self.officers.values()))


def _urls(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise ConfigError(f"{where}: alerts must be a list of Apprise URLs")
    for i, url in enumerate(value):
        # Apprise's own parser: a URL it cannot use fails here, not at the first alert.
        # The URL itself is never printed: it may hold a password.
        if not apprise.Apprise().add(url):
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise ConfigError(f"{where}: alerts[{i}] ({scheme}://...) is not an Apprise URL "
                              "Apprise can use; nothing was changed")
    return tuple(value)


def _delay(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_DELAY:
        raise ConfigError(f"{where} must be a number of seconds from 0 to {MAX_DELAY:.0f}")
    return float(value)


def parse_alert_config(raw: Mapping[str, Any]) -> AlertConfig:
    officers: dict[str, tuple[str, ...]] = {}
    handles: set[str] = set()
    for entry in raw.get("officers", []):
        if not isinstance(entry, dict):
            continue
        handle = str(entry.get("handle"))
        if entry.get("retired") is not True:  # a retired head would hear of nothing
            handles.add(handle)
        if "alerts" in entry:
            officers[handle] = _urls(entry["alerts"], f"officer {handle}")
    units: dict[str, UnitAlerts] = {}
    for entry in raw.get("units", []):
        if not isinstance(entry, dict):
            continue
        slug = str(entry.get("slug"))
        urls = _urls(entry["alerts"], f"unit {slug}") if "alerts" in entry else ()
        head = entry.get("head")
        if head is not None and (not isinstance(head, str) or head not in handles):
            raise ConfigError(f"unit {slug}: head {head!r} is not a serving officer of the deployment")
        units[slug] = UnitAlerts(urls=urls, head=head)
    oversight_table = raw.get("oversight", {})
    if not isinstance(oversight_table, dict):
        raise ConfigError("[oversight] must be a table")
    oversight = _urls(oversight_table.get("alerts", []), "[oversight]")
    table = raw.get("alerts", {})
    if not isinstance(table, dict):
        raise ConfigError("[alerts] must be a table")
    unknown = sorted(set(table) - {"min_delay", "max_delay"})
    if unknown:
        raise ConfigError(f"[alerts]: unknown key(s) {', '.join(unknown)} (known: min_delay, max_delay)")
    low = _delay(table.get("min_delay", DEFAULT_MIN_DELAY), "[alerts] min_delay")
    high = _delay(table.get("max_delay", max(low, DEFAULT_MAX_DELAY)), "[alerts] max_delay")
    if high < low:
        raise ConfigError("[alerts] max_delay must not be below min_delay")
    return AlertConfig(units=units, officers=officers, oversight=oversight, min_delay=low,
                       max_delay=high)


def load_alert_config(path: Path) -> AlertConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"deployment file {path}: {exc}") from exc
    return parse_alert_config(raw)
