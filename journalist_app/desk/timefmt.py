"""The one way the desk writes a time for a person: in the deployment's zone, localised, with
the zone's abbreviation next to it ("2 Dec 2026, 08:45 IST", "2 दिस॰ 2026, 08:45 IST").

The abbreviation comes from the tz database, not from Babel, so it reads the same in both
languages (Babel gives "IST" in Hindi but "+0530" in English).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from babel.dates import format_datetime

PATTERN = "d MMM y, HH:mm"


def _local(value: dt.datetime, zone: ZoneInfo) -> dt.datetime:
    # The gateway sends aware times; a naive one is taken as UTC, never as the machine's zone.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(zone)


def show(value: dt.datetime, zone: ZoneInfo, locale: str) -> str:
    """Date and time to the minute in ``zone``, followed by the zone's abbreviation."""
    local = _local(value, zone)
    return f"{format_datetime(local, PATTERN, locale=locale)} {local.tzname()}"


def iso(value: dt.datetime, zone: ZoneInfo) -> str:
    """ISO 8601 with the zone's offset, for exports: machine-readable and the reader's clock."""
    return _local(value, zone).isoformat()


def clock(value: dt.datetime, zone: ZoneInfo) -> str:
    """Time of day to the second in ``zone`` with its abbreviation ("08:45:12 IST"), for
    "last heard from the gateway", where minutes are too coarse."""
    local = _local(value, zone)
    return f"{local:%H:%M:%S} {local.tzname()}"
