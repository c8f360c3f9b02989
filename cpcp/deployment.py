"""A deployment's units and designated officers, described in TOML and synced into the database.

    [[officers]]
    handle = "sho-sadar"
    name = "SHO Sadar Bazar"
    fingerprint = "40 HEX DIGITS"      # pinned: the key file must hold exactly this key
    key_file = "sho-sadar.asc"         # in keys_dir

    [[officers]]
    handle = "sp"
    name = "Superintendent of Police"
    fingerprint = "40 HEX DIGITS"
    key_file = "sp.asc"
    custodian = true                   # the SP or a designated ASP; needs no unit

    [[units]]
    slug = "ps-sadar-bazar"
    kind = "police_station"            # police_station | cell | control_room
    name_en = "Sadar Bazar Police Station"
    name_hi = "थाना सदर बाजार"
    officers = ["sho-sadar"]

Custodians hold the keys that sources' contact details are sealed to (never the units' keys),
and only they approve a disclosure to a case officer. A deployment without any custodian does
not offer contact details on the tip form at all, and says so there (``cpcp-admin deploy`` and
``check`` say so too): details no one could ever unseal would only endanger the source.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .errors import ConfigError, KeyProblem
from .models import Officer, Unit, UnitKind
from .pgp import Keyring

_FPR = re.compile(r"^[0-9A-F]{40}$")
_HANDLE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


@dataclass(frozen=True)
class OfficerSpec:
    handle: str
    name: str
    fingerprint: str
    key_file: str
    custodian: bool = False


@dataclass(frozen=True)
class UnitSpec:
    slug: str
    kind: UnitKind
    name_en: str
    name_hi: str
    officers: tuple[str, ...]


@dataclass(frozen=True)
class Deployment:
    officers: tuple[OfficerSpec, ...]
    units: tuple[UnitSpec, ...]

    @property
    def custodians(self) -> tuple[OfficerSpec, ...]:
        return tuple(o for o in self.officers if o.custodian)


def load_deployment(path: Path) -> Deployment:
    """Parse and validate; every problem is a ConfigError naming the entry."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"deployment file {path}: {exc}") from exc
    officers: list[OfficerSpec] = []
    for i, entry in enumerate(raw.get("officers", [])):
        try:
            spec = OfficerSpec(
                handle=str(entry["handle"]), name=str(entry["name"]),
                fingerprint=str(entry["fingerprint"]).replace(" ", "").upper(),
                key_file=str(entry["key_file"]),
                custodian=entry.get("custodian", False),
            )
        except KeyError as exc:
            raise ConfigError(f"officers[{i}] lacks {exc}") from exc
        if not _HANDLE.match(spec.handle):
            raise ConfigError(f"officer {spec.handle!r}: handle must be lower-case letters, digits, . _ -")
        if not _FPR.match(spec.fingerprint):
            raise ConfigError(f"officer {spec.handle}: fingerprint must be 40 hex digits")
        if not isinstance(spec.custodian, bool):
            raise ConfigError(f"officer {spec.handle}: custodian must be true or false")
        officers.append(spec)
    handles = {o.handle for o in officers}
    if len(handles) != len(officers):
        raise ConfigError("officer handles must be unique")
    units: list[UnitSpec] = []
    for i, entry in enumerate(raw.get("units", [])):
        try:
            unit = UnitSpec(
                slug=str(entry["slug"]), kind=UnitKind(entry["kind"]),
                name_en=str(entry["name_en"]), name_hi=str(entry["name_hi"]),
                officers=tuple(entry.get("officers", [])),
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"units[{i}]: {exc}") from exc
        if not _SLUG.match(unit.slug):
            raise ConfigError(f"unit {unit.slug!r}: slug must be lower-case letters, digits, '-'")
        missing = set(unit.officers) - handles
        if missing:
            raise ConfigError(f"unit {unit.slug}: unknown officer(s) {', '.join(sorted(missing))}")
        units.append(unit)
    if not units:
        raise ConfigError("a deployment needs at least one unit")
    if len({u.slug for u in units}) != len(units):
        raise ConfigError("unit slugs must be unique")
    return Deployment(officers=tuple(officers), units=tuple(units))


def import_pinned_key(keyring: Keyring, key_file: Path, fingerprint: str, *, who: str) -> None:
    """Import one public key file and insist it holds the pinned fingerprint."""
    try:
        armored = key_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyProblem(f"{who}: cannot read key file {key_file}: {exc}") from exc
    found = keyring.import_public_keys(armored)
    if fingerprint not in found:
        raise KeyProblem(
            f"{who}: {key_file.name} holds {', '.join(found)}, not the pinned {fingerprint}"
        )
    keyring.require_encryption_key(fingerprint, who=who)


async def apply_deployment(
    deployment: Deployment,
    *,
    keys_dir: Path,
    oversight_key_file: str,
    oversight_fingerprint: str,
    keyring: Keyring,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """Import the oversight and officers' keys (pinned) and upsert officers and units. Nothing
    unlisted is touched: a shortened file must not lock officers out or hide cases; retiring
    an officer or a unit is an explicit admin command."""
    import_pinned_key(keyring, keys_dir / oversight_key_file, oversight_fingerprint, who="oversight key")
    for spec in deployment.officers:
        import_pinned_key(keyring, keys_dir / spec.key_file, spec.fingerprint, who=f"officer {spec.handle}")
    async with sessions.begin() as db:
        by_handle = {o.handle: o for o in (await db.scalars(select(Officer))).all()}
        for spec in deployment.officers:
            officer = by_handle.get(spec.handle)
            if officer is None:
                officer = Officer(handle=spec.handle)
                db.add(officer)
                by_handle[spec.handle] = officer
            officer.display_name = spec.name
            officer.fingerprint = spec.fingerprint
            officer.is_custodian = spec.custodian
            officer.active = True
        await db.flush()
        by_slug = {u.slug: u for u in (await db.scalars(select(Unit))).all()}
        for uspec in deployment.units:
            unit = by_slug.get(uspec.slug)
            if unit is None:
                unit = Unit(slug=uspec.slug)
                db.add(unit)
            unit.kind = uspec.kind
            unit.name_en = uspec.name_en
            unit.name_hi = uspec.name_hi
            unit.active = True
            unit.officers = [by_handle[h] for h in uspec.officers]
