"""server.yml and workstation.yml applied to booted Debian 12 containers, then used: what an admin,
a source and an officer see."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from onion.clients import auth_private_line

from ..tor.tornet import say
from .conftest import Site
from .journey import (
    desk_browser,
    desk_case_with,
    desk_file,
    desk_login,
    desk_reply,
    desk_sync,
    forwarded,
    source_reads_case,
    source_sends_tip,
)
from .playbooks import apply

HERE = Path(__file__).parent
SERVER_UNITS = ("cpcp-source", "cpcp-gateway", "cpcp-onion")


def test_server_units_are_active(site: Site) -> None:
    for unit in SERVER_UNITS:
        assert site.server.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active", unit
    assert site.server.run(["systemctl", "--failed", "--no-legend"]).stdout.strip() == ""


def test_workstation_tor_and_desk_are_active(site: Site) -> None:
    ws = site.workstation
    assert ws.run(["systemctl", "is-active", "tor@default"], check=False).stdout.strip() == "active"
    desk = ws.run(["runuser", "-u", "officer", "--", "env", f"XDG_RUNTIME_DIR=/run/user/{site.officer_uid}",
                   "systemctl", "--user", "is-active", "cpcp-desk"], check=False)
    assert desk.stdout.strip() == "active", desk


def test_a_second_apply_changes_nothing(request: pytest.FixtureRequest, site: Site) -> None:
    for playbook, group, host, variables in (
            ("server.yml", "cpcp_server", site.server, site.server_vars),
            ("workstation.yml", "cpcp_workstation", site.workstation, site.workstation_vars)):
        again = apply(playbook, {group: host}, variables, site.workdir)
        say(request, f"\ndeploy: {playbook} again in {again.seconds:.0f}s, changed={again.changed()}")
        assert again.changed() == {host.name: 0}, again.changed_tasks()


async def test_source_tip_reaches_the_desk_and_the_reply_reaches_the_source(
        request: pytest.FixtureRequest, site: Site) -> None:
    """Source → deployed source onion; the deployed desk syncs through the workstation's tor and
    its client key, decrypts with the officer's key, replies; the source reads the reply."""
    canary, reply = f"DEPLOYED-TIP-{secrets.token_hex(6)}", f"DEPLOYED-REPLY-{secrets.token_hex(6)}"
    photo = b"\xff\xd8\xff\xe0 photo " + os.urandom(64 * 1024)
    socks = site.network.socks_port
    codename = await source_sends_tip(socks, site.onions["source"], f"संदिग्ध वाहन {canary}", photo)
    with forwarded(site.workstation, 8090, site.workdir / "desk.sock") as sock:
        async with desk_browser(sock) as desk:
            await desk_login(desk, site.officer)
            inbox = await desk_sync(desk)
            case_id, page = await desk_case_with(desk, inbox, canary)
            assert "car.jpg" in page
            assert await desk_file(desk, case_id, page) == photo
            await desk_reply(desk, case_id, page, f"वाहन की जाँच हो रही है. {reply}")
    case = await source_reads_case(socks, site.onions["source"], codename)
    assert reply in case
    site.story.update(codename=codename, canary=canary, reply=reply, photo=photo)


EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\S+)")


def test_each_cpcp_unit_is_sandboxed_to_ok_or_better(request: pytest.FixtureRequest, site: Site) -> None:
    """``systemd-analyze security`` on the booted server: 2.0 or lower is its "OK" band."""
    scores = {}
    for unit in (*SERVER_UNITS, "cpcp-retention"):
        found = EXPOSURE.search(site.server.run(["systemd-analyze", "security", "--no-pager", unit]).stdout)
        assert found, unit
        scores[unit] = (float(found[2]), found[3])
    say(request, "\ndeploy: exposure " + ", ".join(f"{u} {s} {band}" for u, (s, band) in scores.items()))
    assert all(score <= 2.0 for score, _ in scores.values()), scores


DATA = "/var/lib/cpcp"


def test_tor_and_the_apps_cannot_read_each_others_secrets(site: Site) -> None:
    """tor, the source app and the gateway: three users, none reading another's secrets."""
    srv = site.server

    def denied(user: str, *command: str) -> bool:
        done = srv.run(["runuser", "-u", user, "--", *command], check=False)
        return done.returncode != 0 and "Permission denied" in done.stderr

    def readable(user: str, path: str) -> bool:
        return srv.run(["runuser", "-u", user, "--", "test", "-r", path], check=False).returncode == 0

    keys = srv.run(["sh", "-c", "ls /var/lib/cpcp-tor/onion/source/"]).stdout.split()
    assert "hs_ed25519_secret_key" in keys
    for app in ("cpcp-source", "cpcp-gateway"):
        assert denied(app, "cat", "/var/lib/cpcp-tor/onion/source/hs_ed25519_secret_key")
    # The source app's: the codename salt and CSRF key, the reply keys' secret halves.
    secret_keys = srv.run(["sh", "-c", f"ls {DATA}/gnupg/sources/private-keys-v1.d/"]).stdout.split()
    assert secret_keys, "the journey made a source, so a reply key"
    for other in ("cpcp-gateway", "cpcp-tor"):
        assert denied(other, "cat", f"{DATA}/secrets.json")
        assert denied(other, "ls", f"{DATA}/gnupg/sources/private-keys-v1.d")
        assert denied(other, "cat", f"{DATA}/gnupg/sources/private-keys-v1.d/{secret_keys[0]}")
    assert readable("cpcp-source", f"{DATA}/secrets.json")
    # The gateway's: the keys that seal TOTP secrets and key token hashes; its keyrings hold
    # public keys only.
    for other in ("cpcp-source", "cpcp-tor"):
        assert denied(other, "cat", f"{DATA}/gateway-secrets.json")
        assert denied(other, "ls", f"{DATA}/gnupg-gateway")
    assert readable("cpcp-gateway", f"{DATA}/gateway-secrets.json")
    listed = srv.run(["runuser", "-u", "cpcp-gateway", "--", "gpg", "--homedir", f"{DATA}/gnupg-gateway/sources",
                      "--list-secret-keys", "--with-colons"]).stdout
    assert "sec:" not in listed
    # tor's user reads nothing of the data folder, the database included.
    assert denied("cpcp-tor", "cat", f"{DATA}/cpcp.sqlite")
    # The source app may read the database, but the TOTP secret it finds there is sealed with
    # the gateway's key: no authenticator code comes of it.
    probe = ("import sqlite3, sys; db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
             "print('\\n'.join(r[0] for r in db.execute('SELECT totp_secret FROM officers "
             "WHERE totp_secret IS NOT NULL')))")
    stored = srv.run(["runuser", "-u", "cpcp-source", "--", "python3", "-c", probe,
                      f"{DATA}/cpcp.sqlite"]).stdout.split()
    assert stored and all(s.startswith("v1:") for s in stored), stored
    assert site.officer.totp_secret not in "".join(stored)
    # Each app's unit runs as its own user, and both serve (the journey went through both).
    for unit, user in (("cpcp-source", "cpcp-source"), ("cpcp-gateway", "cpcp-gateway")):
        shown = srv.run(["systemctl", "show", "-p", "User", "-p", "ActiveState", unit]).stdout
        assert f"User={user}" in shown and "ActiveState=active" in shown, shown


def connects(timeout: float, host: str, port: int) -> str:
    """"connected", "refused" (a RST: nothing listens, no firewall) or "dropped" (silence)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "connected"
    except ConnectionRefusedError:
        return "refused"
    except (TimeoutError, OSError):
        return "dropped"


def test_the_server_accepts_no_inbound_connection(site: Site) -> None:
    for port in (22, 8080, 8081, 9):
        assert connects(3, site.server.address, port) == "dropped", port
    # Control: the workstation has no firewall, so a closed port there answers with a reset.
    assert connects(3, site.workstation.address, 9) == "refused"


def test_only_tors_user_and_apt_connect_out(site: Site) -> None:
    """From inside the server, to the private Tor network's directory port: tor's user gets
    through, the apps' user and root do not."""
    line = site.network.dir_authority_options()["DirAuthority"][0]
    host, port = re.search(r" (\d+\.\d+\.\d+\.\d+):(\d+) ", line).groups()  # type: ignore[union-attr]
    probe = (f"import socket; socket.create_connection(('{host}', {port}), timeout=3).close(); "
             "print('connected')")
    for user, expected in (("cpcp-tor", True), ("_apt", True), ("cpcp-source", False),
                           ("cpcp-gateway", False), ("root", False)):
        done = site.server.run(["runuser", "-u", user, "--", "python3", "-c", probe], check=False)
        assert ("connected" in done.stdout) is expected, (user, done.stderr)
    ruleset = site.server.run(["nft", "list", "ruleset"]).stdout
    assert "_apt" in ruleset or "skuid" in ruleset


def test_unattended_security_upgrades_are_on(site: Site) -> None:
    config = site.server.run(["apt-config", "dump"]).stdout
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert "Debian-Security" in config or "origin=Debian,codename=${distro_codename}-security" in config
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        assert site.server.run(["systemctl", "is-enabled", timer]).stdout.strip() == "enabled"


def test_admin_ssh_only_through_its_onion_with_client_authorization(site: Site) -> None:
    settings = site.server.run(["sshd", "-T"]).stdout
    assert "listenaddress 127.0.0.1:22" in settings and "passwordauthentication no" in settings
    onion = site.onions["ssh"]
    auth_dir = site.workdir / "admin-onion-auth"
    auth_dir.mkdir(mode=0o700, exist_ok=True)
    (auth_dir / "admin.auth_private").write_text(auth_private_line(onion, site.admin_keys.onion.private) + "\n")
    (auth_dir / "admin.auth_private").chmod(0o600)

    def ssh(socks_port: int) -> subprocess.CompletedProcess[str]:
        proxy = f"{sys.executable} {HERE / 'socks_connect.py'} {socks_port} %h %p"
        return subprocess.run(
            ["ssh", "-i", str(site.admin_keys.ssh_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
             "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={site.workdir / 'known_hosts'}",
             "-o", "ConnectTimeout=90", "-o", f"ProxyCommand={proxy}", f"root@{onion}", "hostname"],
            capture_output=True, text=True, timeout=240, check=False)

    with_key = site.network.start_client("admin-ssh", {"ClientOnionAuthDir": str(auth_dir)})
    try:
        port = with_key.socks_port()
        assert port is not None
        done = ssh(port)
        for _ in range(3):  # the descriptor may still be on its way to the HSDirs
            if done.returncode == 0:
                break
            done = ssh(port)
        assert done.returncode == 0 and done.stdout.strip() == "cpcp-server", done.stderr
    finally:
        site.network.stop_tor("admin-ssh")
    # The same onion, from a tor without the admin's client key: not even a connection.
    without = ssh(site.network.socks_port)
    assert without.returncode != 0 and "socks" in without.stderr, without.stderr
