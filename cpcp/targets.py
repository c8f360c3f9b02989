"""Response targets: how soon a tip's first officer reply is due. Read from the deployment file::

    [targets]
    default = "24h"                     # any tip not matched below; absent: no target
    information = "2h"                  # a kind
    "information.criminal_activity" = "1h"   # a kind and category: the most specific wins
    complaint = "24h"
    escalate_after = "2h"               # overdue this long -> the oversight; absent: the target

Durations are whole minutes ("90m") or hours ("2h"), from 1 minute to 365 days.

The kind and category are inside the tip's encryption; the server never learns them. The
source app, which holds them for the moment of the request, stores only the due time
(``cases.reply_due_at``): it tells which target applied, not the words. ``cpcp-admin deploy``
copies the targets into the database (cpcp/targetstore.py), where the source app reads them.
This module is pure.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

# The tip form's choices (source_app/forms.py uses these).
KINDS = ("information", "complaint", "suggestion", "event_feedback")
CATEGORIES = (
    "suspicious_person",
    "suspicious_vehicle",
    "criminal_activity",
    "illegal_trade",
    "traffic",
    "law_and_order",
    "social_safety",
    "women_safety",
    "other",
)

_DURATION = re.compile(r"^([1-9][0-9]{0,5})([mh])$")
MAX = dt.timedelta(days=365)


def parse_duration(value: Any, where: str) -> dt.timedelta:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where} must be a duration like \"90m\" or \"2h\", not {value!r}")
    amount = int(match.group(1))
    span = dt.timedelta(minutes=amount) if match.group(2) == "m" else dt.timedelta(hours=amount)
    if span > MAX:
        raise ConfigError(f"{where} must be at most 365 days")
    return span


def describe(span: dt.timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


@dataclass(frozen=True)
class ResponseTargets:
    default: dt.timedelta | None = None
    # "kind" or "kind.category" -> target
    rules: Mapping[str, dt.timedelta] = field(default_factory=dict)
    escalate_after: dt.timedelta | None = None  # None: as long as the case's own target

    def target_for(self, kind: str | None, category: str | None) -> dt.timedelta | None:
        if kind and category and f"{kind}.{category}" in self.rules:
            return self.rules[f"{kind}.{category}"]
        if kind and kind in self.rules:
            return self.rules[kind]
        return self.default

    def escalation_delay(self, target: dt.timedelta) -> dt.timedelta:
        return self.escalate_after if self.escalate_after is not None else target


def describe_targets(targets: ResponseTargets) -> str:
    if targets.default is None and not targets.rules:
        return "none (no reply is ever due)"
    parts = [f"{rule} {describe(span)}" for rule, span in sorted(targets.rules.items())]
    if targets.default is not None:
        parts.append(f"otherwise {describe(targets.default)}")
    if targets.escalate_after is not None:
        parts.append(f"escalated {describe(targets.escalate_after)} after due")
    return ", ".join(parts)


def is_overdue(*, reply_due_at: dt.datetime | None, replied: bool, closed: bool, spam: bool,
               now: dt.datetime) -> bool:
    """A case whose first officer reply is past due. Closed and spam cases owe no reply."""
    return (reply_due_at is not None and not replied and not closed and not spam
            and now >= reply_due_at)


def parse_targets(raw: Mapping[str, Any]) -> ResponseTargets:
    """The ``[targets]`` table of a parsed deployment file; absent: no targets."""
    table = raw.get("targets")
    if table is None:
        return ResponseTargets()
    if not isinstance(table, dict):
        raise ConfigError("[targets] must be a table")
    default: dt.timedelta | None = None
    escalate: dt.timedelta | None = None
    rules: dict[str, dt.timedelta] = {}
    for key, value in table.items():
        where = f"[targets] {key}"
        if key == "default":
            default = parse_duration(value, where)
            continue
        if key == "escalate_after":
            escalate = parse_duration(value, where)
            continue
        kind, _, category = key.partition(".")
        if kind not in KINDS or (category and category not in CATEGORIES):
            raise ConfigError(f"{where}: not a kind ({', '.join(KINDS)}) or kind.category "
                              f"(categories: {', '.join(CATEGORIES)})")
        rules[key] = parse_duration(value, where)
    return ResponseTargets(default=default, rules=rules, escalate_after=escalate)


def load_targets(path: Path | None) -> ResponseTargets:
    if path is None:
        return ResponseTargets()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"deployment file {path}: {exc}") from exc
    return parse_targets(raw)
