"""Retiring an officer and rotating officers' and the oversight key, through the deployment
file and the real ``cpcp-admin deploy``, against a real gateway process, real gpg and SQLite
and PostgreSQL; refusals change nothing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import func, select

from cpcp.admin import deploy as admin_deploy
from cpcp.admin import onion_folder_open
from cpcp.deployment import load_deployment
from cpcp.errors import ConfigError
from cpcp.models import AuditEntry, Case, Document, DocumentRole, Officer, Reply, Submission
from cpcp.officers import LoginFailed
from cpcp.services import CoreServices, build_core
from cpcp.settings import load_settings
from onion.cli import main as onion_main
from onion.clients import ClientRegistry
from onion.services import OFFICER, OnionLayout

from .conftest import FPR, ROOT, TEST_KEYS, Deployment
from .servers import Server, start_server
from .test_gateway import PASSPHRASE, code_at, make_case
from .test_pgp_contract import _make_key

OLD_A, NEW_A = FPR["officer-a"], FPR["officer-a-rotated"]


# -- helpers ----------------------------------------------------------------------------------


def admin(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpcp.admin", "--config", str(deployment.config), *args],
                          cwd=ROOT, capture_output=True, text=True, check=False)


def edit_file(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def edit_officer(deployment: Deployment, handle: str, *lines: str) -> None:
    """Add ``lines`` to an officer's table in deployment.toml."""
    edit_file(deployment.root / "deployment.toml", f'handle = "{handle}"\n',
              f'handle = "{handle}"\n' + "".join(f"{line}\n" for line in lines))


def also_in_cyber_cell(deployment: Deployment) -> None:
    """officer-a joins officer-b's cell, so that the cell keeps an officer when b retires."""
    edit_file(deployment.root / "deployment.toml", 'officers = ["officer-b"]', 'officers = ["officer-a", "officer-b"]')


def rotate_officer_a(deployment: Deployment, key: Path, fingerprint: str) -> None:
    shutil.copy(key, deployment.settings.keys_dir / "officer-a-new.asc")
    path = deployment.root / "deployment.toml"
    edit_file(path, f'fingerprint = "{OLD_A}"\nkey_file = "officer-a.asc"',
              f'fingerprint = "{fingerprint}"\nkey_file = "officer-a-new.asc"')


def workstations(deployment: Deployment) -> ClientRegistry:
    return OnionLayout.for_data_dir(deployment.settings.data_dir).clients(OFFICER)


def recipients(ciphertext: Path, tmp_path: Path) -> set[str]:
    """Key ids a message is encrypted to, as stock ``gpg --list-packets`` lists them (without
    any secret key, and without trying to decrypt: ``--list-only``)."""
    home = tmp_path / "list-packets-gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--list-only", "--list-packets",
                           str(ciphertext)], capture_output=True, text=True, check=False)
    ids = set(re.findall(r":pubkey enc packet: .*keyid ([0-9A-F]{16})", done.stdout))
    assert ids, done.stdout + done.stderr
    return ids


async def message_of(core: CoreServices, case_id: int) -> Path:
    async with core.sessions() as db:
        name = await db.scalar(select(Document.object_name).join(Submission)
                               .where(Submission.case_id == case_id, Document.role == DocumentRole.MESSAGE))
    assert name is not None
    return core.store.path(name)


def subkeys(core: CoreServices, fingerprint: str) -> set[str]:
    ids = core.officer_keys.encryption_key_ids(fingerprint)
    assert ids
    return ids


async def snapshot(deployment: Deployment) -> dict[str, Any]:
    """What a refused deploy must leave exactly as it was."""
    core = build_core(deployment.settings)
    try:
        async with core.sessions() as db:
            officers = sorted(
                (o.handle, o.active, o.fingerprint, o.passphrase_hash is not None, tuple(sorted(u.slug for u in o.units)))
                for o in (await db.scalars(select(Officer))).all())
            audit = await db.scalar(select(func.count()).select_from(AuditEntry))
    finally:
        await core.close()
    listing = subprocess.run(["gpg", "--homedir", str(deployment.settings.gnupg_home / "officers"),
                              "--with-colons", "--list-keys"], capture_output=True, text=True, check=True).stdout
    keys = sorted(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    return {"officers": officers, "audit": audit, "keys": keys, "workstations": workstations(deployment).names()}


@pytest.fixture
def gateway_server(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment, app="gateway")
    yield srv
    srv.stop()


async def enrol(core: CoreServices, handle: str, *, admin: bool | None = None) -> pyotp.TOTP:
    return pyotp.TOTP(await core.officer_auth.enrol(handle, PASSPHRASE, admin=admin))


async def login(http: httpx.AsyncClient, handle: str, totp: pyotp.TOTP, steps_ago: int = 0) -> httpx.Response:
    return await http.post("/api/v1/token", json={"handle": handle, "passphrase": PASSPHRASE,
                                                  "code": code_at(totp, steps_ago)})


# -- the deployment file ----------------------------------------------------------------------


def test_a_retired_entry_needs_no_key_and_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "deployment.toml"
    unit = '[[units]]\nslug = "ps-a"\nkind = "police_station"\nname_en = "A"\nname_hi = "ए"\nofficers = ["old"]\n'
    path.write_text('[[officers]]\nhandle = "old"\nname = "Old SI"\nretired = true\n'
                    'workstations = ["desk-3"]\n' + unit, encoding="utf-8")
    spec = load_deployment(path).officers[0]
    assert spec.retired and spec.fingerprint == "" and spec.workstations == ("desk-3",)
    path.write_text('[[officers]]\nhandle = "old"\nname = "Old SI"\nretired = "yes"\n' + unit, encoding="utf-8")
    with pytest.raises(ConfigError, match="officer old: retired must be true or false"):
        load_deployment(path)
    path.write_text('[[officers]]\nhandle = "old"\nname = "Old SI"\n' + unit, encoding="utf-8")
    with pytest.raises(ConfigError, match="lacks 'fingerprint'"):  # only a retired officer may
        load_deployment(path)
    path.write_text('[[officers]]\nhandle = "old"\nname = "Old SI"\nretired = true\n'
                    'workstations = ["../etc"]\n' + unit, encoding="utf-8")
    with pytest.raises(ConfigError, match="workstation '../etc' is not a cpcp-onion client name"):
        load_deployment(path)


# -- retiring ---------------------------------------------------------------------------------


async def test_a_retired_officer_is_cut_off_at_once_and_history_stays(
    deployment: Deployment, core: CoreServices, gateway_server: Server, tmp_path: Path
) -> None:
    registry = workstations(deployment)
    registry.ensure()
    desk_a, desk_b = registry.add("desk-a"), registry.add("desk-b")
    edit_officer(deployment, "officer-a", 'workstations = ["desk-a"]')
    edit_officer(deployment, "officer-b", 'workstations = ["desk-b"]')
    also_in_cyber_cell(deployment)
    assert admin(deployment, "deploy").returncode == 0
    old_case = await make_case(core, "cell-cyber")
    totp_b = await enrol(core, "officer-b")
    async with httpx.AsyncClient(base_url=gateway_server.url, timeout=30) as http:
        r = await login(http, "officer-b", totp_b, steps_ago=1)
        assert r.status_code == 200, r.text
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        assert (await http.get("/api/v1/me", headers=token)).status_code == 200

        edit_officer(deployment, "officer-b", "retired = true")
        done = admin(deployment, "deploy")
        assert done.returncode == 0, done.stderr
        assert ("officer officer-b: retired; left cell-cyber, control-room; 1 token(s) revoked; "
                "workstation key(s) revoked: desk-b") in done.stdout

        # The running gateway refuses the token on the very next request, and the login.
        assert (await http.get("/api/v1/me", headers=token)).status_code == 401
        assert (await http.get("/api/v1/cases", headers=token)).status_code == 401
        assert (await login(http, "officer-b", totp_b)).status_code == 401
    with pytest.raises(LoginFailed, match="retired"):
        await core.officer_auth.enrol("officer-b", PASSPHRASE)

    # New tips are no longer encrypted to the retired key; the old one still is (the control).
    new_case = await make_case(core, "cell-cyber")
    b_ids, a_ids = subkeys(core, FPR["officer-b"]), subkeys(core, OLD_A)
    assert b_ids <= recipients(await message_of(core, old_case), tmp_path)
    new_to = recipients(await message_of(core, new_case), tmp_path)
    assert not b_ids & new_to and a_ids <= new_to
    control = recipients(await message_of(core, await make_case(core, "control-room")), tmp_path)
    assert not b_ids & control and a_ids <= control

    # The officer onion no longer lets their workstation in; the other one still.
    assert registry.names() == ["desk-a"]
    keys = set(registry.public_keys().values())
    assert desk_b.public not in keys and desk_a.public in keys

    # Audited, the chain verifies, and history keeps naming them.
    async with core.sessions() as db:
        officer_b = await db.scalar(select(Officer).where(Officer.handle == "officer-b"))
        assert officer_b is not None and not officer_b.active and officer_b.units == []
        assert officer_b.passphrase_hash is None and officer_b.totp_secret is None
        retired = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "officer_retired"))).all()
        assert len(retired) == 1 and f'"officer":{officer_b.id}' in retired[0].details
        assert '"workstations_revoked":["desk-b"]' in retired[0].details
        own = await db.scalar(select(func.count()).select_from(AuditEntry).where(AuditEntry.officer_id == officer_b.id))
        assert own and own >= 1  # their login, still in the log
        assert (await db.get(Case, old_case)) is not None
    verified = admin(deployment, "audit-verify")
    assert verified.returncode == 0 and "audit log intact" in verified.stdout

    # Deploying the same file again changes nothing more.
    again = admin(deployment, "deploy")
    assert again.returncode == 0 and "retired" not in again.stdout
    async with core.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(AuditEntry)
                               .where(AuditEntry.action == "officer_retired")) == 1


async def test_a_workstation_shared_with_an_active_officer_stays(deployment: Deployment, core: CoreServices) -> None:
    registry = workstations(deployment)
    registry.ensure()
    registry.add("shift-desk")
    edit_officer(deployment, "officer-a", 'workstations = ["shift-desk"]')
    edit_officer(deployment, "officer-b", 'workstations = ["shift-desk"]', "retired = true")
    also_in_cyber_cell(deployment)
    done = admin(deployment, "deploy")
    assert done.returncode == 0, done.stderr
    assert "workstation key(s) revoked: none" in done.stdout and registry.names() == ["shift-desk"]


async def test_with_tors_folder_closed_deploy_retires_and_leaves_the_keys_to_cpcp_onion(
    deployment: Deployment, core: CoreServices, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The split-user server: cpcp-admin (as cpcp) cannot open tor's folder. The officer is
    still retired in the database, and what is left is said, then done by cpcp-onion."""
    registry = workstations(deployment)
    registry.ensure()
    registry.add("desk-a")
    registry.add("desk-b")
    totp_b = await enrol(core, "officer-b")
    identity = await core.officer_auth.login("officer-b", PASSPHRASE, code_at(totp_b, 1))
    token, _ = await core.officer_auth.issue_token(identity)
    edit_officer(deployment, "officer-a", 'workstations = ["desk-a"]')
    edit_officer(deployment, "officer-b", 'workstations = ["desk-b"]', "retired = true")
    also_in_cyber_cell(deployment)
    asked: list[Path] = []

    def closed(folder: Path) -> bool:
        asked.append(folder)
        return False

    monkeypatch.setattr("cpcp.admin.onion_folder_open", closed)
    await admin_deploy(deployment.settings)
    out = capsys.readouterr().out
    assert asked == [deployment.settings.data_dir.resolve()]  # cpcp-onion's folder ([tor] data_dir unset)
    assert ("officer officer-b: retired; left cell-cyber, control-room; 1 token(s) revoked; "
            "workstation key(s) desk-b left to 'cpcp-onion sync-workstations' (run as tor's user)") in out
    assert "desk-b to be revoked by 'cpcp-onion sync-workstations' as tor's user" in out
    assert await core.officer_auth.authenticate(token) is None
    async with core.sessions() as db:
        officer_b = await db.scalar(select(Officer).where(Officer.handle == "officer-b"))
        assert officer_b is not None and not officer_b.active and officer_b.units == []
        (entry,) = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "officer_retired"))).all()
    assert '"workstations_revoked":[]' in entry.details
    assert '"workstations_left_to_sync":["desk-b"]' in entry.details
    assert registry.names() == ["desk-a", "desk-b"]  # not pretended: still there

    # What the playbook then runs as tor's user.
    assert onion_main(["--config", str(deployment.config), "sync-workstations"]) == 0
    assert capsys.readouterr().out == "revoked workstation desk-b (officer officer-b retired)\n"
    assert registry.names() == ["desk-a"]
    await admin_deploy(deployment.settings)  # again: nothing more to say or record
    assert "officer-b" not in capsys.readouterr().out
    verified = admin(deployment, "audit-verify")
    assert verified.returncode == 0, verified.stdout


def _open_as_nobody(*folders: Path) -> list[bool]:
    code = ("import sys; from pathlib import Path; from cpcp.admin import onion_folder_open; "
            "print(*(onion_folder_open(Path(p)) for p in sys.argv[1:]))")
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           sys.executable, "-c", code, *map(str, folders)],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [word == "True" for word in done.stdout.split()]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to check as another user")
def test_tors_folder_is_seen_closed_by_another_user() -> None:
    top = Path(tempfile.mkdtemp(prefix="cpcp-tor-folder-"))
    try:
        top.chmod(0o755)
        (top / "cpcp-tor").mkdir(mode=0o700)  # as ansible makes it, for another user
        (top / "cpcp-tor" / "onion").mkdir(mode=0o700)
        (top / "mine").mkdir(mode=0o700)
        os.chown(top / "mine", 65534, 65534)
        assert _open_as_nobody(top / "cpcp-tor", top / "cpcp-tor" / "onion", top / "mine",
                               top / "not-yet") == [False, False, True, True]
        assert onion_folder_open(top / "cpcp-tor")  # its owner (here root) may
    finally:
        shutil.rmtree(top)


async def test_an_unretired_officer_comes_back_only_through_a_fresh_enrolment(
    deployment: Deployment, core: CoreServices
) -> None:
    also_in_cyber_cell(deployment)
    totp = await enrol(core, "officer-b")
    identity = await core.officer_auth.login("officer-b", PASSPHRASE, code_at(totp, 1))
    token, _ = await core.officer_auth.issue_token(identity)
    path = deployment.root / "deployment.toml"
    original = path.read_text(encoding="utf-8")
    edit_officer(deployment, "officer-b", "retired = true")
    assert admin(deployment, "deploy").returncode == 0
    path.write_text(original, encoding="utf-8")
    done = admin(deployment, "deploy")
    assert done.returncode == 0 and "officer officer-b: reinstated (enrol them again to log in)" in done.stdout
    # Back in their units, but the old token and the old passphrase and TOTP are gone for good.
    assert await core.officer_auth.authenticate(token) is None
    with pytest.raises(LoginFailed):
        await core.officer_auth.login("officer-b", PASSPHRASE, code_at(totp))
    again = await enrol(core, "officer-b")
    identity = await core.officer_auth.login("officer-b", PASSPHRASE, code_at(again))
    unit_of = {u.slug: u.officer_fingerprints for u in await core.cases.active_units()}
    assert FPR["officer-b"] in unit_of["cell-cyber"] and len(identity.unit_ids) == 2
    async with core.sessions() as db:
        actions = (await db.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert actions.count("officer_retired") == 1 and actions.count("officer_reinstated") == 1


# -- refusals ---------------------------------------------------------------------------------


def _revoked_key(tmp_path: Path) -> tuple[str, str]:
    home = tmp_path / "rev"
    fpr, _ = _make_key(home, "encr")
    rev_cert = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text().replace(":-----BEGIN", "-----BEGIN")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import"], input=rev_cert.encode(),
                   capture_output=True, check=True)
    armored = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr],
                             capture_output=True, text=True, check=True).stdout
    return fpr, armored


async def test_unsafe_deployments_are_refused_and_change_nothing(
    deployment: Deployment, core: CoreServices, tmp_path: Path
) -> None:
    await enrol(core, "officer-b", admin=True)
    before = await snapshot(deployment)
    path = deployment.root / "deployment.toml"
    original = path.read_text(encoding="utf-8")

    def refused(expect: str) -> None:
        done = admin(deployment, "deploy")
        assert done.returncode == 2 and expect in done.stderr, (done.stdout, done.stderr)
        path.write_text(original, encoding="utf-8")

    # A unit left without any officer: officer-a is ps-sadar-bazar's only one.
    edit_officer(deployment, "officer-a", "retired = true")
    refused("unit ps-sadar-bazar would have no officer left to encrypt its tips to (retiring officer-a)")
    # The last admin.
    also_in_cyber_cell(deployment)
    edit_officer(deployment, "officer-b", "retired = true")
    refused("retiring officer-b would leave no admin")
    # A new key whose fingerprint is not the pinned one.
    rotate_officer_a(deployment, TEST_KEYS / "officer-a-rotated.pub.asc", FPR["officer-b"][:-4] + "0000")
    refused(f"officer officer-a: officer-a-new.asc holds {NEW_A}, not the pinned")
    # An expired new key, and a revoked one.
    expired, armored = _make_key(tmp_path / "old", "encr", expire="1d", past=True)
    (tmp_path / "expired.asc").write_text(armored)
    rotate_officer_a(deployment, tmp_path / "expired.asc", expired)
    refused(f"officer officer-a: key {expired} has expired")
    revoked, armored = _revoked_key(tmp_path)
    (tmp_path / "revoked.asc").write_text(armored)
    rotate_officer_a(deployment, tmp_path / "revoked.asc", revoked)
    refused(f"officer officer-a: key {revoked} is revoked")
    # The new oversight key not matching its pin.
    shutil.copy(TEST_KEYS / "oversight-rotated.pub.asc", deployment.settings.keys_dir / "oversight-new.asc")
    config = deployment.config.read_text(encoding="utf-8")
    edit_file(deployment.config, 'oversight_key_file = "oversight.asc"', 'oversight_key_file = "oversight-new.asc"')
    done = admin(deployment, "deploy")
    assert done.returncode == 2 and f"oversight key: oversight-new.asc holds {FPR['oversight-rotated']}" in done.stderr
    deployment.config.write_text(config, encoding="utf-8")

    assert await snapshot(deployment) == before
    assert admin(deployment, "audit-verify").returncode == 0


# -- rotating ---------------------------------------------------------------------------------


@pytest.fixture
def two_key_gnupg(tmp_path: Path) -> Path:
    """officer-a's workstation after the rotation: the old and the new private key."""
    home = tmp_path / "officer-a-gnupg"
    home.mkdir(mode=0o700)
    for who in ("officer-a", "officer-a-rotated"):
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(TEST_KEYS / f"{who}.secret.asc")],
                       check=True, capture_output=True)
    return home


async def test_a_rotated_officer_key_takes_new_tips_and_replies_and_the_desk_reads_both(
    deployment: Deployment, core: CoreServices, gateway_server: Server, two_key_gnupg: Path, tmp_path: Path
) -> None:
    from journalist_app.desk import create_app
    from journalist_app.desk.settings import load_desk_settings

    from .helpers import csrf
    from .servers import write_desk_config
    from .test_desk import DESK_URL, make_tip

    totp = await enrol(core, "officer-a")
    before = await make_tip(core, "ps-sadar-bazar", "BEFORE-ROTATION tip")
    rotate_officer_a(deployment, TEST_KEYS / "officer-a-rotated.pub.asc", NEW_A)
    done = admin(deployment, "deploy")
    assert done.returncode == 0, done.stderr
    assert f"officer officer-a: key rotated {OLD_A} -> {NEW_A}" in done.stdout
    after = await make_tip(core, "ps-sadar-bazar", "AFTER-ROTATION tip")
    old_ids, new_ids = subkeys(core, OLD_A), subkeys(core, NEW_A)
    assert old_ids <= recipients(await message_of(core, before), tmp_path)
    to = recipients(await message_of(core, after), tmp_path)
    assert new_ids <= to and not old_ids & to

    desk = create_app(load_desk_settings(write_desk_config(tmp_path / "desk", gateway_server.url, two_key_gnupg),
                                         env={}))
    async with desk.test_app():
        transport = httpx.ASGITransport(app=desk)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=DESK_URL, timeout=60) as browser:
            page = (await browser.get("/login")).text
            r = await browser.post("/login", data={"csrf_token": csrf(page), "handle": "officer-a",
                                                   "passphrase": PASSPHRASE, "code": code_at(totp)})
            assert r.status_code == 303, r.text
            r = await browser.post("/sync", data={"csrf_token": csrf((await browser.get("/inbox")).text)})
            assert r.status_code == 303
            assert "BEFORE-ROTATION tip" in (await browser.get(f"/cases/{before}")).text
            page = (await browser.get(f"/cases/{after}")).text
            assert "AFTER-ROTATION tip" in page
            r = await browser.post(f"/cases/{after}/reply", data={"csrf_token": csrf(page), "text": "seen"})
            assert r.status_code == 303, r.text
    async with core.sessions() as db:
        reply = (await db.scalars(select(Reply).where(Reply.case_id == after))).one()
        assert reply.object_name is not None
        to = recipients(core.store.path(reply.object_name), tmp_path)
    assert new_ids <= to and not old_ids & to  # the desk took the rotated key from the gateway
    async with core.sessions() as db:
        entry = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "officer_key_rotated"))).one()
        assert OLD_A in entry.details and NEW_A in entry.details
    assert admin(deployment, "audit-verify").returncode == 0


async def test_a_rotated_oversight_key_takes_new_tips(deployment: Deployment, core: CoreServices, tmp_path: Path) -> None:
    before = await make_case(core, "ps-sadar-bazar")
    shutil.copy(TEST_KEYS / "oversight-rotated.pub.asc", deployment.settings.keys_dir / "oversight-new.asc")
    edit_file(deployment.config, 'oversight_key_file = "oversight.asc"', 'oversight_key_file = "oversight-new.asc"')
    edit_file(deployment.config, f'oversight_fingerprint = "{FPR["oversight"]}"',
              f'oversight_fingerprint = "{FPR["oversight-rotated"]}"')
    done = admin(deployment, "deploy")
    assert done.returncode == 0, done.stderr
    assert f"oversight key rotated {FPR['oversight']} -> {FPR['oversight-rotated']}" in done.stdout
    restarted = build_core(load_settings(deployment.config, env={}))  # the source app, restarted
    try:
        after = await make_case(restarted, "ps-sadar-bazar")
        old_ids, new_ids = subkeys(restarted, FPR["oversight"]), subkeys(restarted, FPR["oversight-rotated"])
        assert old_ids <= recipients(await message_of(restarted, before), tmp_path)
        to = recipients(await message_of(restarted, after), tmp_path)
        assert new_ids <= to and not old_ids & to
        async with restarted.sessions() as db:
            actions = (await db.scalars(select(AuditEntry.details).where(AuditEntry.action == "oversight_key_set")
                                        .order_by(AuditEntry.id))).all()
        assert len(actions) == 2 and FPR["oversight"] in actions[1] and FPR["oversight-rotated"] in actions[1]
    finally:
        await restarted.close()
