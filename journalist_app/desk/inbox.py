"""Inbox filtering and the home page's counts; pure functions over case summaries."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .casebook import CaseSummary
from .i18n import N_

NEW = frozenset({"received"})
OPEN = frozenset({"received", "under_review", "action_taken"})
WEEKS_SHOWN = 12

KINDS = {
    "information": N_("Information"),
    "complaint": N_("Complaint"),
    "suggestion": N_("Suggestion"),
    "event_feedback": N_("Event feedback"),
}
CATEGORIES = {
    "suspicious_person": N_("Suspicious person"),
    "suspicious_vehicle": N_("Suspicious vehicle"),
    "criminal_activity": N_("Criminal activity"),
    "illegal_trade": N_("Illegal trade"),
    "traffic": N_("Traffic or road accident"),
    "law_and_order": N_("Law and order"),
    "social_safety": N_("Social safety"),
    "women_safety": N_("Harassment of women"),
    "other": N_("Other"),
}
STATUS_LABELS = {
    "received": N_("Received"),
    "under_review": N_("Under review"),
    "action_taken": N_("Action taken"),
    "closed": N_("Closed"),
}
PRIORITY_LABELS = {"low": N_("Low"), "normal": N_("Normal"), "high": N_("High"), "urgent": N_("Urgent")}
DISCLOSURE_LABELS = {"pending": N_("pending"), "refused": N_("refused"), "approved": N_("approved"),
                     "disclosed": N_("disclosed")}
RISK_LABELS = {"high": N_("high"), "medium": N_("medium"), "low": N_("low")}


@dataclass(frozen=True)
class InboxFilter:
    unit: str = ""
    status: str = ""
    kind: str = ""
    category: str = ""
    since: dt.date | None = None
    until: dt.date | None = None
    text: str = ""
    # The inbox hides cases marked spam; the spam view (spam=1) shows only those.
    spam: bool = False
    # From and To are days on the deployment's calendar, not UTC's.
    zone: dt.tzinfo = dt.UTC

    @classmethod
    def from_args(cls, args: Mapping[str, str], zone: dt.tzinfo = dt.UTC) -> InboxFilter:
        """From a query string; anything unparseable is ignored rather than an error."""

        def date(key: str) -> dt.date | None:
            try:
                return dt.date.fromisoformat(args.get(key, ""))
            except ValueError:
                return None

        return cls(unit=args.get("unit", "")[:64], status=args.get("status", "")[:32],
                   kind=args.get("kind", "")[:32], category=args.get("category", "")[:32],
                   since=date("since"), until=date("until"), text=args.get("q", "").strip()[:200],
                   spam=args.get("spam", "") == "1", zone=zone)

    def matches(self, row: CaseSummary) -> bool:
        case = row.case
        day = case.received_at.astimezone(self.zone).date()
        return (
            case.spam == self.spam
            and (not self.unit or case.unit == self.unit)
            and (not self.status or case.status == self.status)
            and (not self.kind or row.kind == self.kind)
            and (not self.category or row.category == self.category)
            and (self.since is None or day >= self.since)
            and (self.until is None or day <= self.until)
            and (not self.text or self.text.casefold() in row.text.casefold()
                 or self.text.casefold() in case.public_id.casefold())
        )


def apply(rows: Iterable[CaseSummary], inbox_filter: InboxFilter) -> list[CaseSummary]:
    """Matching rows, newest first."""
    found = [r for r in rows if inbox_filter.matches(r)]
    return sorted(found, key=lambda r: (r.case.received_at, r.case.id), reverse=True)


@dataclass(frozen=True)
class Bar:
    label: str
    new: int
    open: int


def iso_week(when: dt.datetime, zone: dt.tzinfo = dt.UTC) -> str:
    year, week, _ = when.astimezone(zone).isocalendar()
    return f"{year}-W{week:02d}"


def _bars(rows: list[CaseSummary], key: str, labels: Mapping[str, str] | None = None,
          zone: dt.tzinfo = dt.UTC) -> list[Bar]:
    new: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    for row in rows:
        value = {"unit": row.case.unit, "kind": row.kind, "category": row.category,
                 "week": iso_week(row.case.received_at, zone)}[key] or "(unknown)"
        if row.case.status in NEW:
            new[value] += 1
        if row.case.status in OPEN:
            opened[value] += 1
    keys = sorted(set(new) | set(opened))
    if key == "week":
        keys = keys[-WEEKS_SHOWN:]
    return [Bar((labels or {}).get(k, k), new[k], opened[k]) for k in keys]


def counts(rows: list[CaseSummary], unit_names: Mapping[str, str],
           translate: Callable[[str], str] = str, zone: dt.tzinfo = dt.UTC) -> dict[str, list[Bar]]:
    """New (received) and open (not closed) cases by unit, kind, category and week (on the
    deployment's calendar); the kind and category names through ``translate``."""
    return {
        "unit": _bars(rows, "unit", unit_names),
        "kind": _bars(rows, "kind", {k: translate(v) for k, v in KINDS.items()}),
        "category": _bars(rows, "category", {k: translate(v) for k, v in CATEGORIES.items()}),
        "week": _bars(rows, "week", zone=zone),
    }
