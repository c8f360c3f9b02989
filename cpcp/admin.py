"""``cpcp-admin``: initialise a deployment, load its units and keys, check it, back it up and
restore it, make a demo."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import segno
from sqlalchemy.engine import make_url

from .alertconfig import AlertConfig, load_alert_config
from .deployment import load_deployment
from .errors import CPCPError
from .gateway_secrets import create_gateway_secrets
from .migrate import upgrade
from .models import Event
from .officers import provisioning_uri, suggest_passphrase
from .purge import Purger, due_cases
from .retention import load_retention
from .roster import WorkstationKeys, apply_deployment
from .server_secrets import create_server_secrets
from .services import ROLES, CoreServices, Role, build_core, check_keys
from .settings import Settings, load_settings
from .store import Store, ensure_mode
from .targets import describe_targets, load_targets
from .targetstore import save_targets


def _may_read(path: Path) -> bool:
    return not path.exists() or os.access(path, os.R_OK)


def default_role(settings: Settings) -> Role:
    """The role of a command run without --role: whichever app's secrets this user may read
    ("all" for one who may read both, or where neither exists yet)."""
    source, gateway = _may_read(settings.secrets_file), _may_read(settings.gateway_secrets_file)
    if source != gateway:
        return "source" if source else "gateway"
    return "all"


def _sqlite_file(settings: Settings) -> Path | None:
    """The SQLite database's file; None for PostgreSQL."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        return None
    return Path(url.database)


def init_deployment(settings: Settings, role: Role = "all") -> None:
    """Create what ``role`` owns, where missing: the data folder, the role's secrets (0600) and
    GnuPG homes (0700), the store and the schema; then load the deployment file into the
    database and the role's officers' keyring. Where the gateway's keys are made here, the
    TOTP secrets an earlier release stored in plaintext are sealed with them."""
    shared = settings.shared_data
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not shared:  # shared: the folder is root's, its mode the installer's (ansible/server.yml)
        ensure_mode(settings.data_dir, 0o700)
    if role != "gateway":
        if not settings.secrets_file.exists():
            create_server_secrets(settings.secrets_file)
        settings.gnupg_home.mkdir(mode=0o700, exist_ok=True)
        ensure_mode(settings.gnupg_home, 0o700)  # mkdir in a setgid folder inherits the bit
    made_gateway_keys = False
    if role != "source":
        if not settings.gateway_secrets_file.exists():
            create_gateway_secrets(settings.gateway_secrets_file)
            made_gateway_keys = True
        settings.gateway_gnupg_home.mkdir(mode=0o700, exist_ok=True)
        ensure_mode(settings.gateway_gnupg_home, 0o700)
    Store(settings.store_dir, shared=shared)
    settings.log_dir.mkdir(mode=0o700, exist_ok=True)
    ensure_mode(settings.log_dir, 0o2770 if shared else 0o700)
    upgrade(settings.database_url)
    database = _sqlite_file(settings)
    if shared and database is not None and database.exists():
        ensure_mode(database, 0o660)  # both apps write it; its -wal/-shm files take its mode
    if made_gateway_keys:
        sealed = asyncio.run(_with_core(settings, lambda core: core.officer_auth.seal_plaintext_totp(),
                                        role=role))
        if sealed:
            print(f"sealed {sealed} officer TOTP secret(s) with the gateway's new key")
    if settings.deployment_file is not None:
        asyncio.run(deploy(settings, role))


def _officer_workstations(settings: Settings) -> WorkstationKeys | None:
    """The officer onion's authorized client keys, which a retirement revokes; None when tor's
    folder is closed to this user.

    The folder is cpcp-onion's (``[tor] data_dir``, else the data folder: the same as
    ``OnionDeployment.from_settings``). Where tor runs as a user of its own (ansible's
    ``cpcp-tor``, folder 0700) this command, run as the apps' user, can neither read nor delete
    those keys: ``cpcp-onion sync-workstations``, as tor's user, revokes them instead.

    Imported here, in the command, not in the core: the core knows no onion. The registry is
    only read and files deleted; nothing is created when the onion does not exist yet.
    """
    from onion.deployment import OnionDeployment
    from onion.services import OFFICER

    dep = OnionDeployment.from_settings(settings)
    if not onion_folder_open(dep.data_dir):
        return None
    return dep.layout.clients(OFFICER)


def onion_folder_open(folder: Path) -> bool:
    """Whether this user may read and delete the client keys under tor's ``folder``: True if
    it does not exist yet (no key to revoke); False if it, or what leads to it, is closed."""
    try:
        if not folder.exists():  # stat: EACCES when a folder on the way is closed to us
            return True
        return os.access(folder, os.R_OK | os.W_OK | os.X_OK)
    except PermissionError:
        return False


def _republish_officer_onion(settings: Settings) -> None:
    """Revoked workstation keys take effect on the running tor now, not at its next start."""
    from onion.cli import republish_officer_onion

    try:
        republish_officer_onion(settings)
    except CPCPError as exc:
        print(f"cpcp-admin: the workstation keys are removed, but the running tor did not "
              f"re-publish the officer onion ({exc}); run 'cpcp-onion revoke-client' or restart "
              "cpcp-onion", file=sys.stderr)


async def deploy(settings: Settings, role: Role = "all") -> None:
    """The deployment file into the database and into the officers' keyrings of ``role``: the
    source app's and the gateway's each get the pinned keys (run as each app's user where they
    are two; ansible/server.yml does)."""
    if settings.deployment_file is None:
        raise CPCPError("deployment_file is not set")
    deployment = load_deployment(settings.deployment_file)
    policy = load_retention(settings.deployment_file)
    # Refused before anything changes, like a bad key: a bad alert URL or target.
    alerts = load_alert_config(settings.deployment_file)
    targets = load_targets(settings.deployment_file)
    core = build_core(settings, role)
    try:
        report = await apply_deployment(
            deployment, keys_dir=settings.keys_dir, oversight_key_file=settings.oversight_key_file,
            oversight_fingerprint=settings.oversight_fingerprint, keyring=core.officer_keys,
            audit=core.audit, workstations=_officer_workstations(settings),
            more_keyrings=core.officer_keyrings[1:],
        )
        for line in report.lines:
            print(line)
        if report.left_workstations:
            print(f"the officer onion's client keys are in tor's folder, closed to this user: "
                  f"{', '.join(report.left_workstations)} to be revoked by "
                  "'cpcp-onion sync-workstations' as tor's user (ansible/server.yml runs it)")
        if report.revoked_workstations:
            await asyncio.to_thread(_republish_officer_onion, settings)
        await check_keys(core)
        print(await _custodian_line(core))
        print(policy.describe())
        if await save_targets(core.audit, targets):
            print(f"response targets set: {describe_targets(targets)}")
        print(_alerts_line(alerts))
    finally:
        await core.close()


def _alerts_line(alerts: AlertConfig) -> str:
    units = sorted(slug for slug, unit in alerts.units.items() if unit.urls)
    if not alerts.any:
        return "alerts: none configured"
    return (f"alerts: {len(units)} unit(s) ({', '.join(units) or 'none'}), oversight "
            f"{'set' if alerts.oversight else 'not set'}; restart cpcp-alerts to apply")


async def retention(settings: Settings, *, dry_run: bool, now: dt.datetime | None = None,
                    role: Role = "source") -> int:
    """Delete (or with ``dry_run`` only list) the cases due under the deployment file's
    ``[retention]`` policy at ``now``; print one line per case, counts only. The exit status:
    1 if a due case could not be deleted this time."""
    if settings.deployment_file is None:
        raise CPCPError("deployment_file is not set: it holds the [retention] policy")
    policy = load_retention(settings.deployment_file)
    when = now or dt.datetime.now(dt.UTC)
    print(policy.describe())
    # The source app's role: the purge deletes reply keys from its keyring.
    core = build_core(settings, role)
    try:
        if dry_run:
            due = await due_cases(core.sessions, policy, when)
            for case in due:
                print(f"would delete case {case.case_id} ({case.unit}): {case.rule}")
            print(f"dry run: {len(due)} case(s) due, nothing deleted")
            return 0
        purger = Purger(sessions=core.sessions, audit=core.audit, store=core.store,
                        source_keys=core.source_keys, cases=core.cases)
        report = await purger.purge(policy, when)
        for gone in report.removed:
            print(f"deleted case {gone.case_id} ({gone.unit}): {gone.rule}; {gone.submissions} "
                  f"submission(s), {gone.files} file(s), {gone.replies} reply(ies), "
                  f"{gone.objects} object(s), {gone.bytes} bytes")
        print(f"retention: {len(report.removed)} case(s) deleted"
              + (f", {report.kept_after_recheck} kept (changed meanwhile)" if report.kept_after_recheck else "")
              + f"; swept {report.swept_objects} orphan object(s), {report.swept_keys} orphan reply key(s)")
        if report.failed:
            print(f"retention: case(s) {', '.join(map(str, report.failed))} could not be deleted now "
                  "(nothing of them was); the next run tries again", file=sys.stderr)
            return 1
        return 0
    finally:
        await core.close()


async def _with_core(settings: Settings, work: Any, *, role: Role | None = None) -> Any:
    core = build_core(settings, role or default_role(settings))
    try:
        return await work(core)
    finally:
        await core.close()


def enrol_officer(settings: Settings, handle: str, *, admin: bool, role: Role | None = None) -> None:
    """Set a passphrase and TOTP for an officer and show the QR code to scan, once."""
    passphrase = suggest_passphrase()
    # Needs the gateway's role (or all): the TOTP secret is sealed with its key.
    secret = asyncio.run(_with_core(
        settings, lambda core: core.officer_auth.enrol(handle, passphrase, admin=admin), role=role))
    uri = provisioning_uri(secret, handle)
    print(f"Officer {handle} enrolled{' as admin' if admin else ''}. Give them, in person:")
    print(f"  passphrase: {passphrase}")
    print("  TOTP: scan this QR code with an authenticator app (or enter the secret by hand):")
    segno.make(uri, error="m").terminal(compact=True)
    print(f"  secret: {secret}")


def verify_audit(settings: Settings, expect_head: str | None, role: Role | None = None) -> int:
    check = asyncio.run(_with_core(settings, lambda core: core.audit.verify(), role=role))
    if not check.ok:
        print(f"AUDIT LOG BROKEN at entry {check.first_bad_id}: {check.problem}")
        return 1
    if expect_head and expect_head != check.head:
        print(f"AUDIT LOG BROKEN: head is {check.head}, expected {expect_head} (newest entries removed?)")
        return 1
    print(f"audit log intact: {check.entries} entries, head {check.head}")
    return 0


async def _add_event(core: CoreServices, args: argparse.Namespace) -> int:
    async with core.audit.transaction() as db:
        event = Event(title_en=args.title_en, title_hi=args.title_hi, place=args.place,
                      starts_on=args.starts, ends_on=args.ends, open=True)
        db.add(event)
        await db.flush()
        await core.audit.record(db, officer_id=None, action="event_added", event=event.id)
        return event.id


async def _close_event(core: CoreServices, event_id: int) -> bool:
    async with core.audit.transaction() as db:
        event = await db.get(Event, event_id)
        if event is None:
            return False
        event.open = False
        await core.audit.record(db, officer_id=None, action="event_closed", event=event.id)
        return True


async def _check(settings: Settings, role: Role) -> None:
    core = build_core(settings, role)
    try:
        await check_keys(core)
        print(await _custodian_line(core))
    finally:
        await core.close()


async def _custodian_line(core: CoreServices) -> str:
    """Whether sources may leave contact details: only with a custodian to seal them to."""
    custodians = await core.cases.custodian_fingerprints()
    if not custodians:
        return ("no custodian in the deployment: the tip form does not offer contact details "
                "(mark the SP or an ASP 'custodian = true' to offer them)")
    return f"contact details are sealed to {len(custodians)} custodian key(s)"


def run_backup(settings: Settings, dest: Path, tor_keys: str | None = None) -> int:
    from .backup import make_backup

    if tor_keys not in (None, "-"):
        raise CPCPError("--tor-keys takes - (the tar stream of tor's onion folder on stdin)")
    report = asyncio.run(make_backup(settings, dest, tor_keys=sys.stdin.buffer if tor_keys else None))
    print(f"backup written: {report.path} ({report.size / 2**20:.1f} MiB, {report.rows} rows, "
          f"{report.objects} store objects) in {report.seconds:.1f}s, encrypted to "
          f"{settings.backup.fingerprint}")
    print(f"audit log at backup time: {report.audit_entries} entries, head {report.audit_head}")
    return 0


def run_restore(settings: Settings, source: str, *, drill: bool = False) -> int:
    from . import restore as restoring

    work = restoring.drill if drill else restoring.restore
    if source == "-":
        report = asyncio.run(work(settings, sys.stdin.buffer))
    else:
        try:
            with open(source, "rb") as fh:
                report = asyncio.run(work(settings, fh))
        except FileNotFoundError as exc:
            raise CPCPError(f"{source} does not exist") from exc
    if drill:
        print(f"restore drill passed: the backup of {report.created_at} restored ({report.rows} rows, "
              f"{report.objects} store objects), its audit log and reply keys checked; "
              "the trial deployment is deleted")
    else:
        print(f"restored the backup of {report.created_at}: {report.rows} rows, {report.objects} store objects")
        print(f"audit log intact: {report.audit_entries} entries (the restore is the last), "
              f"head {report.audit_head}")
    if report.key_problem:
        print(f"warning: {report.key_problem}; fix the keys, then 'cpcp-admin deploy'")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcp-admin", description=__doc__)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    parser.add_argument("--role", choices=ROLES, help="whose secrets and keyrings to use: the "
                        "source app's, the gateway's, or all (default: whichever this user may read; "
                        "retention: source)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create data folder, secrets, database; load the deployment")
    sub.add_parser("deploy", help="(re)load units, officers and pinned keys from the deployment file")
    sub.add_parser("check", help="check that every unit's keys are usable")
    demo = sub.add_parser("demo", help="make a complete demo deployment with throwaway keys")
    demo.add_argument("folder", type=Path)
    enrol = sub.add_parser("officer-enrol", help="give an officer a passphrase and TOTP (shows a QR code)")
    enrol.add_argument("handle")
    enrol.add_argument("--admin", action="store_true", help="make the officer an admin")
    verify = sub.add_parser("audit-verify", help="check the audit log's hash chain")
    verify.add_argument("--expect-head", help="the head hash recorded at the last check")
    keep = sub.add_parser("retention", help="delete the cases due under the [retention] policy")
    keep.add_argument("--dry-run", action="store_true", help="list what is due, delete nothing")
    event = sub.add_parser("event-add", help="offer an event for feedback on the source side")
    event.add_argument("--title-en", required=True)
    event.add_argument("--title-hi", required=True)
    event.add_argument("--place", default="")
    event.add_argument("--starts", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD")
    event.add_argument("--ends", required=True, type=dt.date.fromisoformat, help="YYYY-MM-DD")
    close = sub.add_parser("event-close", help="stop offering an event for feedback")
    close.add_argument("event_id", type=int)
    backup = sub.add_parser("backup", help="write the whole server to one file encrypted to the backup key")
    backup.add_argument("file", type=Path, help="a new file, e.g. /var/backups/cpcp/cpcp-2026-12-02.gpg")
    backup.add_argument("--tor-keys", metavar="-", help="where tor runs as its own user: read its onion "
                        "folder as a tar stream on stdin (tar -C /var/lib/cpcp-tor -cf - onion | ...)")
    restore = sub.add_parser("restore", help="restore a decrypted backup into a fresh deployment")
    restore.add_argument("file", help="the decrypted archive, or - to read it from stdin "
                         "(gpg --decrypt FILE | cpcp-admin restore -)")
    drill = sub.add_parser("restore-drill", help="restore a decrypted backup into a throwaway "
                           "deployment, check it, delete it (the live one is untouched)")
    drill.add_argument("file", help="the decrypted archive, or - for stdin")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import make_demo

            config = make_demo(args.folder)
            print(f"demo deployment ready: {config}")
            return 0
        settings = load_settings(args.config)
        role: Role = args.role or default_role(settings)
        if args.command == "init":
            init_deployment(settings, role)
            print(f"initialised {settings.data_dir}" + ("" if role == "all" else f" for the {role}"))
        elif args.command == "deploy":
            asyncio.run(deploy(settings, role))
            print("deployment loaded; all keys usable")
        elif args.command == "check":
            asyncio.run(_check(settings, role))
            print("ok: every active unit's keys and the oversight key are usable")
        elif args.command == "officer-enrol":
            enrol_officer(settings, args.handle, admin=args.admin, role=role)
        elif args.command == "audit-verify":
            return verify_audit(settings, args.expect_head, role)
        elif args.command == "retention":
            return asyncio.run(retention(settings, dry_run=args.dry_run, role=args.role or "source"))
        elif args.command == "event-add":
            if args.ends < args.starts:
                raise CPCPError("--ends is before --starts")
            event_id = asyncio.run(_with_core(settings, lambda core: _add_event(core, args), role=role))
            print(f"event {event_id} added and open for feedback")
        elif args.command == "backup":
            return run_backup(settings, args.file, args.tor_keys)
        elif args.command == "restore":
            return run_restore(settings, args.file)
        elif args.command == "restore-drill":
            return run_restore(settings, args.file, drill=True)
        elif args.command == "event-close":
            if not asyncio.run(_with_core(settings, lambda core: _close_event(core, args.event_id), role=role)):
                raise CPCPError(f"no event {args.event_id}")
            print(f"event {args.event_id} closed")
    except CPCPError as exc:
        print(f"cpcp-admin: {exc}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
