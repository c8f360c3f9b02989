"""The retention policy: which cases go, and when. Read from the deployment file::

    [retention]
    closed_days = 90        # a closed case goes 90 days after its last change
    spam_days = 7           # a case marked spam goes 7 days after its last change

    [retention.units.cell-cyber]
    closed_days = 365       # this unit keeps its closed cases longer; spam_days as above

Without a ``[retention]`` table, or without a key, nothing is ever deleted under that rule:
keep forever. Days are whole numbers from 1 to 36500. A case's last change is its
``updated_at``: closing it, marking it spam, any officer's change, a reply or a new message from
the source all start the count again, so a case is never removed sooner than N days after it
was closed or marked. Spam is checked first; a closed spam case goes under whichever rule is
due first.

Purging (``purge``) is in :mod:`cpcp.purge`; this module is pure and knows no database.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models import CaseStatus

KEYS = ("closed_days", "spam_days")
MAX_DAYS = 36500


@dataclass(frozen=True)
class Rules:
    closed_days: int | None = None
    spam_days: int | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    default: Rules = Rules()
    units: Mapping[str, Rules] = field(default_factory=dict)

    def rules_for(self, unit_slug: str) -> Rules:
        return self.units.get(unit_slug, self.default)

    @property
    def keeps_forever(self) -> bool:
        return all(r == Rules() for r in (self.default, *self.units.values()))

    def describe(self) -> str:
        if self.keeps_forever:
            return "retention: no [retention] rule, cases are kept forever"
        parts = [f"retention: {_describe(self.default)}"]
        parts += [f"{slug}: {_describe(rules)}" for slug, rules in sorted(self.units.items())]
        return "; ".join(parts)


def _describe(rules: Rules) -> str:
    closed = f"closed cases {rules.closed_days} days" if rules.closed_days else "closed cases forever"
    spam = f"spam {rules.spam_days} days" if rules.spam_days else "spam forever"
    return f"{closed}, {spam}"


def due_rule(rules: Rules, *, status: CaseStatus, spam: bool, updated_at: dt.datetime,
             now: dt.datetime) -> str | None:
    """The rule under which a case is due at ``now`` (e.g. "closed 90 days"), or None."""
    if spam and rules.spam_days is not None and updated_at <= now - dt.timedelta(days=rules.spam_days):
        return f"spam {rules.spam_days} days"
    if (status == CaseStatus.CLOSED and rules.closed_days is not None
            and updated_at <= now - dt.timedelta(days=rules.closed_days)):
        return f"closed {rules.closed_days} days"
    return None


def _days(value: Any, where: str) -> int:
    # bool is an int to Python; "closed_days = true" is a mistake, not one day.
    if type(value) is not int or not 1 <= value <= MAX_DAYS:
        raise ConfigError(f"{where} must be a whole number of days from 1 to {MAX_DAYS}, not {value!r}")
    return value


def _rules(table: Any, where: str, base: Rules, *, allow: tuple[str, ...] = KEYS) -> Rules:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - set(allow))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(allow)})")
    found = {key: _days(table[key], f"{where}.{key}") for key in KEYS if key in table}
    return Rules(**{**base.__dict__, **found})


def parse_retention(raw: Mapping[str, Any]) -> RetentionPolicy:
    """The ``[retention]`` table of a parsed deployment file; absent: keep forever."""
    if "retention" not in raw:
        return RetentionPolicy()
    table = raw["retention"]
    default = _rules(table, "[retention]", Rules(), allow=(*KEYS, "units"))
    units_table = table.get("units", {})
    if not isinstance(units_table, dict):
        raise ConfigError("[retention].units must be a table of unit slugs")
    slugs = {str(u.get("slug")) for u in raw.get("units", []) if isinstance(u, dict)}
    units: dict[str, Rules] = {}
    for slug, rules in units_table.items():
        if slug not in slugs:
            raise ConfigError(f"[retention.units.{slug}]: no such unit in the deployment file")
        units[slug] = _rules(rules, f"[retention.units.{slug}]", default)
    return RetentionPolicy(default=default, units=units)


def load_retention(path: Path) -> RetentionPolicy:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"deployment file {path}: {exc}") from exc
    return parse_retention(raw)
