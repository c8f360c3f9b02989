"""A deployment file applied to the database: officers added, keys rotated, officers retired
(and un-retired), units and their officers; every change to a person is audited.

All or nothing: the keys are checked in a scratch keyring, and the roster checks run inside
the write transaction before anything is changed, so a refusal leaves the database, the
server's keyring and the officer onion's client keys as they were.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .audit import AuditLog
from .deployment import Deployment, OfficerSpec, check_pinned_keys, import_pinned_keys
from .errors import ConfigError
from .models import ApiToken, AuditEntry, Officer, Unit
from .pgp import Keyring

OVERSIGHT_ACTION = "oversight_key_set"
#: What applying the deployment file writes to the audit log: bookkeeping a fresh host has
#: before anything else happens (restore replaces it with the backup's chain).
DEPLOYMENT_ACTIONS = frozenset({"officer_added", "officer_key_rotated", "officer_reinstated",
                                "officer_retired", "workstations_revoked", OVERSIGHT_ACTION,
                                "targets_set"})


class RosterRefused(ConfigError):
    """The deployment would leave a unit without an officer or the deployment without an
    admin, or re-use a pinned key; nothing was changed."""


class WorkstationKeys(Protocol):
    """The officer onion's authorized clients (onion.clients.ClientRegistry is one).

    None instead, where tor's folder is closed to the caller (tor as a user of its own, as
    ansible deploys it): the keys are then revoked by ``cpcp-onion sync-workstations``, run as
    tor's user, from the same deployment file (``Deployment.retired_workstations``).
    """

    def names(self) -> list[str]: ...

    def revoke(self, name: str) -> None: ...


@dataclass
class DeployReport:
    """What changed, one line each, for the admin; which workstation keys went, and which
    were left to ``cpcp-onion sync-workstations`` (no registry given)."""

    lines: list[str] = field(default_factory=list)
    revoked_workstations: list[str] = field(default_factory=list)
    left_workstations: list[str] = field(default_factory=list)


def _refuse_unsafe(deployment: Deployment, officers: dict[str, Officer], units: dict[str, Unit]) -> None:
    """Raise RosterRefused before any change if the result would be unsafe."""
    retired = {o.handle for o in deployment.retired}
    retiring = sorted(h for h in retired if h in officers and officers[h].active)
    admins = {h for h, o in officers.items() if o.active and o.is_admin}
    if admins and not admins - retired:
        raise RosterRefused(
            f"retiring {', '.join(sorted(admins & retired))} would leave no admin: make another "
            "officer an admin first (cpcp-admin officer-enrol HANDLE --admin); nothing was changed")
    for uspec in deployment.units:
        unit = units.get(uspec.slug)
        before = [o.handle for o in unit.officers if o.active] if unit is not None else []
        lost = sorted((set(uspec.officers) | set(before)) & retired)
        if lost and not [h for h in uspec.officers if h not in retired]:
            raise RosterRefused(
                f"unit {uspec.slug} would have no officer left to encrypt its tips to (retiring "
                f"{', '.join(lost)}): add another officer to it first; nothing was changed")
    listed = {u.slug for u in deployment.units}
    for slug, unit in units.items():
        members = [o.handle for o in unit.officers if o.active]
        if unit.active and slug not in listed and members and not set(members) - set(retiring):
            raise RosterRefused(
                f"unit {slug} (not in the deployment file) would have no officer left (retiring "
                f"{', '.join(members)}): give it another officer first; nothing was changed")
    by_fpr = {o.fingerprint: h for h, o in officers.items()}
    for spec in deployment.serving:
        other = by_fpr.get(spec.fingerprint)
        if other is not None and other != spec.handle:
            raise RosterRefused(
                f"officer {spec.handle}: key {spec.fingerprint} is already pinned for officer "
                f"{other}; each officer needs their own key; nothing was changed")


async def _last_oversight_fingerprint(db: AsyncSession) -> str | None:
    entry = await db.scalar(select(AuditEntry).where(AuditEntry.action == OVERSIGHT_ACTION)
                            .order_by(AuditEntry.id.desc()).limit(1))
    if entry is None:
        return None
    value = json.loads(entry.details).get("fingerprint")
    return str(value) if value else None


class _Apply:
    def __init__(self, db: AsyncSession, audit: AuditLog, report: DeployReport,
                 workstations: WorkstationKeys | None) -> None:
        self.db, self.audit, self.report, self.workstations = db, audit, report, workstations

    async def serving(self, spec: OfficerSpec, officer: Officer | None) -> Officer:
        db, audit = self.db, self.audit
        if officer is None:
            officer = Officer(handle=spec.handle, display_name=spec.name, fingerprint=spec.fingerprint,
                              active=True)
            db.add(officer)
            await db.flush()
            await audit.record(db, officer_id=None, action="officer_added", officer=officer.id,
                               fingerprint=spec.fingerprint)
        elif officer.fingerprint != spec.fingerprint:
            old = officer.fingerprint
            officer.fingerprint = spec.fingerprint
            await db.flush()
            await audit.record(db, officer_id=None, action="officer_key_rotated", officer=officer.id,
                               old_fingerprint=old, fingerprint=spec.fingerprint)
            self.report.lines.append(f"officer {spec.handle}: key rotated {old} -> {spec.fingerprint}")
        if not officer.active:
            await audit.record(db, officer_id=None, action="officer_reinstated", officer=officer.id)
            self.report.lines.append(f"officer {spec.handle}: reinstated (enrol them again to log in)")
        officer.display_name = spec.name
        officer.is_custodian = spec.custodian
        officer.active = True
        return officer

    def revoke_workstations(self, spec: OfficerSpec, keep: set[str]) -> list[str]:
        if self.workstations is None:
            return []
        present = set(self.workstations.names())
        gone = [n for n in spec.workstations if n in present and n not in keep]
        for name in gone:
            self.workstations.revoke(name)
        self.report.revoked_workstations += gone
        return gone

    def left_to_sync(self, spec: OfficerSpec, keep: set[str]) -> list[str]:
        """Without a registry: the listed keys that ``cpcp-onion sync-workstations`` revokes."""
        if self.workstations is not None:
            return []
        left = [n for n in spec.workstations if n not in keep]
        self.report.left_workstations += left
        return left

    async def retire(self, spec: OfficerSpec, officer: Officer | None, keep: set[str],
                     units_left: list[str]) -> None:
        """Tokens, passphrase, TOTP, units and workstations go; the row (history) stays."""
        db, audit = self.db, self.audit
        if officer is None or not officer.active:
            # Retired before (or never deployed): only workstation keys added since go.
            gone = self.revoke_workstations(spec, keep)
            if gone:
                await audit.record(db, officer_id=None, action="workstations_revoked",
                                   officer=officer.id if officer else None, handle=spec.handle,
                                   workstations=gone)
                self.report.lines.append(f"officer {spec.handle}: workstation key(s) {', '.join(gone)} revoked")
            return
        tokens = await db.scalar(select(func.count()).select_from(ApiToken)
                                 .where(ApiToken.officer_id == officer.id)) or 0
        await db.execute(delete(ApiToken).where(ApiToken.officer_id == officer.id))
        officer.active = False
        officer.passphrase_hash = None
        officer.totp_secret = None
        officer.totp_last_step = None
        officer.units = []
        gone = self.revoke_workstations(spec, keep)
        left = self.left_to_sync(spec, keep)
        await db.flush()
        # Only what was done is recorded as done: keys in tor's folder, closed to this user,
        # are recorded as left to cpcp-onion (which cannot write the audit chain).
        extra = {"workstations_left_to_sync": left} if self.workstations is None else {}
        await audit.record(db, officer_id=None, action="officer_retired", officer=officer.id,
                           fingerprint=officer.fingerprint, units_left=units_left,
                           tokens_revoked=tokens, workstations_revoked=gone, **extra)
        if self.workstations is None:
            keys = (f"workstation key(s) {', '.join(left)} left to 'cpcp-onion sync-workstations' "
                    "(run as tor's user)" if left else "no workstation key listed")
        else:
            keys = f"workstation key(s) revoked: {', '.join(gone) or 'none'}"
        self.report.lines.append(
            f"officer {spec.handle}: retired; left {', '.join(units_left) or 'no unit'}; "
            f"{tokens} token(s) revoked; {keys}")


async def apply_deployment(
    deployment: Deployment,
    *,
    keys_dir: Path,
    oversight_key_file: str,
    oversight_fingerprint: str,
    keyring: Keyring,
    audit: AuditLog,
    workstations: WorkstationKeys | None = None,
    more_keyrings: Sequence[Keyring] = (),
) -> DeployReport:
    """Import the pinned keys and upsert officers and units; retire the officers marked
    ``retired``. Nothing unlisted is touched (a shortened file must not lock officers out or
    hide cases), except that a retired officer leaves unlisted units too."""
    await asyncio.to_thread(check_pinned_keys, deployment, keys_dir=keys_dir,
                            oversight_key_file=oversight_key_file,
                            oversight_fingerprint=oversight_fingerprint, gpg_binary=keyring.gpg_binary)
    report = DeployReport()
    async with audit.transaction() as db:
        by_handle = {o.handle: o for o in (await db.scalars(select(Officer))).all()}
        by_slug = {u.slug: u for u in (await db.scalars(select(Unit))).all()}
        _refuse_unsafe(deployment, by_handle, by_slug)
        # Each app that encrypts to officers has a keyring of its own (``more_keyrings``: the
        # gateway's, where one user runs everything): each gets the same pinned keys.
        for ring in (keyring, *more_keyrings):
            await asyncio.to_thread(import_pinned_keys, deployment, keys_dir=keys_dir,
                                    oversight_key_file=oversight_key_file,
                                    oversight_fingerprint=oversight_fingerprint, keyring=ring)
        step = _Apply(db, audit, report, workstations)
        units_of = {h: sorted(u.slug for u in o.units) for h, o in by_handle.items()}
        for spec in deployment.serving:
            by_handle[spec.handle] = await step.serving(spec, by_handle.get(spec.handle))
        retired = {o.handle for o in deployment.retired}
        for uspec in deployment.units:
            unit = by_slug.get(uspec.slug)
            if unit is None:
                unit = Unit(slug=uspec.slug)
                db.add(unit)
                by_slug[uspec.slug] = unit
            unit.kind = uspec.kind
            unit.name_en = uspec.name_en
            unit.name_hi = uspec.name_hi
            unit.active = True
            unit.officers = [by_handle[h] for h in uspec.officers if h not in retired]
        keep = set(deployment.kept_workstations)
        for spec in deployment.retired:
            await step.retire(spec, by_handle.get(spec.handle), keep, units_of.get(spec.handle, []))
        await _record_oversight(db, audit, report, oversight_fingerprint)
    return report


async def _record_oversight(db: AsyncSession, audit: AuditLog, report: DeployReport, fingerprint: str) -> None:
    previous = await _last_oversight_fingerprint(db)
    if previous == fingerprint:
        return
    await audit.record(db, officer_id=None, action=OVERSIGHT_ACTION, fingerprint=fingerprint,
                       old_fingerprint=previous)
    if previous is not None:
        report.lines.append(f"oversight key rotated {previous} -> {fingerprint} "
                            "(restart the source app so new tips use it)")
