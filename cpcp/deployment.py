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
    workstations = ["desk-sp"]         # its cpcp-onion client names (optional)

    [[officers]]
    handle = "si-old"
    name = "SI who left the district"
    retired = true                     # fingerprint and key_file may then be left out
    workstations = ["desk-3"]

    [[units]]
    slug = "ps-sadar-bazar"
    kind = "police_station"            # police_station | cell | control_room
    name_en = "Sadar Bazar Police Station"
    name_hi = "थाना सदर बाजार"
    officers = ["sho-sadar"]

Alerts (``alerts`` on a unit or an officer, a unit's ``head``, ``[oversight]``, ``[alerts]``) are
read by cpcp/alertconfig.py, response targets (``[targets]``) by cpcp/targets.py.

Custodians hold the keys that sources' contact details are sealed to (never the units' keys),
and only they approve a disclosure to a case officer. A deployment without any custodian does
not offer contact details on the tip form at all, and says so there (``cpcp-admin deploy`` and
``check`` say so too): details no one could ever unseal would only endanger the source.

**Retiring** an officer is ``retired = true`` on their entry, kept in the file (the file is the
admin's source of truth and ansible re-applies it; an officer merely left out is not touched).
``cpcp-admin deploy`` then, in one audited transaction: marks them inactive (their bearer
tokens are deleted and refused at once, their passphrase and TOTP secret are wiped, so they
cannot log in and only a fresh ``officer-enrol`` after un-retiring brings them back), takes
them out of every unit (new tips and replies are no longer encrypted to their key), and
removes the officer-onion client keys of the ``workstations`` listed on their entry (unless
an active officer lists the same workstation). Cases, replies and audit entries keep naming
them. **Rotating** a key is a new ``key_file`` and ``fingerprint`` on the entry (the oversight
key: ``oversight_key_file`` and ``oversight_fingerprint`` in the settings); old ciphertext
stays readable with the old private key at the desk.

Nothing changes when the result would be unsafe: every key is first checked in a scratch
keyring (pinned fingerprint, not expired or revoked, can encrypt), and a retirement that would
leave a unit without any officer, or the deployment without an admin, is refused, naming why.
"""

from __future__ import annotations

import re
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, KeyProblem
from .models import UnitKind
from .pgp import Keyring, stop_agent

_FPR = re.compile(r"^[0-9A-F]{40}$")
_HANDLE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
# cpcp-onion's workstation names (onion/clients.py), checked here without importing onion.
_WORKSTATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class OfficerSpec:
    handle: str
    name: str
    fingerprint: str  # "" only for a retired officer whose entry leaves it out
    key_file: str  # likewise
    custodian: bool = False
    retired: bool = False
    workstations: tuple[str, ...] = ()


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
        return tuple(o for o in self.officers if o.custodian and not o.retired)

    @property
    def serving(self) -> tuple[OfficerSpec, ...]:
        """The officers not retired: each needs a usable pinned key."""
        return tuple(o for o in self.officers if not o.retired)

    @property
    def retired(self) -> tuple[OfficerSpec, ...]:
        return tuple(o for o in self.officers if o.retired)

    @property
    def kept_workstations(self) -> frozenset[str]:
        """Workstations a serving officer lists: never revoked for a retired one listing them too."""
        return frozenset(name for spec in self.serving for name in spec.workstations)

    def retired_workstations(self) -> dict[str, tuple[str, ...]]:
        """Workstation name -> the retired officers listing it, for the names whose officer-onion
        client key must go: listed on a retired officer's entry and by no serving officer.
        ``cpcp-admin deploy`` (cpcp/roster.py) and ``cpcp-onion sync-workstations`` both apply it."""
        keep = self.kept_workstations
        gone: dict[str, tuple[str, ...]] = {}
        for spec in self.retired:
            for name in spec.workstations:
                if name not in keep:
                    gone[name] = (*gone.get(name, ()), spec.handle)
        return gone


def _officer(i: int, entry: Any) -> OfficerSpec:
    try:
        handle = str(entry["handle"])
        retired = entry.get("retired", False)
        if not isinstance(retired, bool):
            raise ConfigError(f"officer {handle}: retired must be true or false")
        # A retired officer's key may have expired long ago: it is no longer needed.
        optional = retired
        spec = OfficerSpec(
            handle=handle, name=str(entry["name"]),
            fingerprint=str(entry.get("fingerprint", "") if optional else entry["fingerprint"])
            .replace(" ", "").upper(),
            key_file=str(entry.get("key_file", "") if optional else entry["key_file"]),
            custodian=entry.get("custodian", False),
            retired=retired,
            workstations=tuple(entry.get("workstations", ())),
        )
    except KeyError as exc:
        raise ConfigError(f"officers[{i}] lacks {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"officers[{i}]: workstations must be a list of names") from exc
    if not _HANDLE.match(spec.handle):
        raise ConfigError(f"officer {spec.handle!r}: handle must be lower-case letters, digits, . _ -")
    if not (spec.retired and not spec.fingerprint) and not _FPR.match(spec.fingerprint):
        raise ConfigError(f"officer {spec.handle}: fingerprint must be 40 hex digits")
    if not isinstance(spec.custodian, bool):
        raise ConfigError(f"officer {spec.handle}: custodian must be true or false")
    for name in spec.workstations:
        if not isinstance(name, str) or not _WORKSTATION.match(name):
            raise ConfigError(f"officer {spec.handle}: workstation {name!r} is not a cpcp-onion client "
                              "name (1-64 letters, digits, '-' or '_')")
    return spec


def load_deployment(path: Path) -> Deployment:
    """Parse and validate; every problem is a ConfigError naming the entry."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"deployment file {path}: {exc}") from exc
    officers = [_officer(i, entry) for i, entry in enumerate(raw.get("officers", []))]
    handles = {o.handle for o in officers}
    if len(handles) != len(officers):
        raise ConfigError("officer handles must be unique")
    pinned = [o.fingerprint for o in officers if not o.retired]
    if len(set(pinned)) != len(pinned):
        raise ConfigError("two officers pin the same fingerprint: each officer needs their own key")
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


def _pinned_keys(deployment: Deployment, keys_dir: Path, oversight_key_file: str,
                 oversight_fingerprint: str) -> list[tuple[Path, str, str]]:
    keys = [(keys_dir / oversight_key_file, oversight_fingerprint, "oversight key")]
    keys += [(keys_dir / o.key_file, o.fingerprint, f"officer {o.handle}") for o in deployment.serving]
    return keys


def check_pinned_keys(deployment: Deployment, *, keys_dir: Path, oversight_key_file: str,
                      oversight_fingerprint: str, gpg_binary: str = "gpg") -> None:
    """Every pinned key (oversight, each officer not retired) in a scratch keyring: the pinned
    fingerprint, not expired or revoked, able to encrypt. A wrong key changes nothing, not even
    the server's keyring. Raises KeyProblem naming the first bad one."""
    with tempfile.TemporaryDirectory(prefix="cpcp-keycheck-") as scratch:
        ring = Keyring(Path(scratch) / "gnupg", gpg_binary=gpg_binary)
        try:
            for key_file, fingerprint, who in _pinned_keys(deployment, keys_dir, oversight_key_file,
                                                           oversight_fingerprint):
                import_pinned_key(ring, key_file, fingerprint, who=who)
        finally:
            stop_agent(ring.home)


def import_pinned_keys(deployment: Deployment, *, keys_dir: Path, oversight_key_file: str,
                       oversight_fingerprint: str, keyring: Keyring) -> None:
    """Import the pinned keys into the server's keyring (after :func:`check_pinned_keys`)."""
    for key_file, fingerprint, who in _pinned_keys(deployment, keys_dir, oversight_key_file,
                                                   oversight_fingerprint):
        import_pinned_key(keyring, key_file, fingerprint, who=who)
