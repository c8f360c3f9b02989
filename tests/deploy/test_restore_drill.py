"""The disaster drill: back up the deployed server, lose it, restore onto a new host.

After the journey of test_in_service.py left a source with a codename, a tip with a photo and a
reply on the server: ansible/backup.yml fetches an encrypted backup to the admin's machine; a new
container gets server.yml; the admin decrypts the backup with the (offline) backup key and pipes
it into ``cpcp-admin restore -`` on the new host; server.yml again hands the onion keys to tor.
Then the source onion has its old address, the source logs in with the codename and reads the
reply, the officer's desk, its cache wiped, syncs and decrypts the old tip, and audit-verify
passes.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from ..containers import Container
from ..tor.tornet import say
from .conftest import CONFIG, TEST_KEYS, VENV, Site, wait_for_onions
from .journey import (
    desk_browser,
    desk_case_with,
    desk_file,
    desk_login,
    desk_sync,
    forwarded,
    source_reads_case,
)
from .playbooks import apply

DESK_CACHE = "/home/officer/.local/share/cpcp-desk"
DATA = "/var/lib/cpcp"


def decrypt_into(host: Container, backup: Path) -> float:
    """On the admin's machine: ``gpg --decrypt`` with the backup key, piped into ``cpcp-admin
    restore -`` on the new host as root, the data folder's owner (as ``ssh host sudo ...`` would);
    the seconds it took."""
    home = Path(tempfile.mkdtemp(prefix="cpcp-backup-key-"))
    try:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--import",
                        str(TEST_KEYS / "oversight.secret.asc")], check=True, capture_output=True)
        started = time.monotonic()
        gpg = subprocess.Popen(["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt", str(backup)],
                               stdout=subprocess.PIPE)
        restore = subprocess.run(["nsenter", "-t", str(host.pid), "-a", "--",
                                  f"{VENV}/cpcp-admin", "--config", CONFIG, "restore", "-"],
                                 stdin=gpg.stdout, capture_output=True, text=True, timeout=600, check=False)
        assert gpg.stdout is not None
        gpg.stdout.close()
        assert gpg.wait(timeout=60) == 0
        assert restore.returncode == 0, restore.stdout + restore.stderr
        assert "audit log intact" in restore.stdout, restore.stdout
        return time.monotonic() - started
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


async def test_a_backup_restores_onto_a_new_host_that_is_the_same_server(
        request: pytest.FixtureRequest, site: Site) -> None:
    story = site.story
    assert story, "the journey of test_in_service.py left nothing to restore"
    drill_started = time.monotonic()
    fetch = site.workdir / "backups"
    backed_up = apply("backup.yml", {"cpcp_server": site.server}, {"cpcp_backup_fetch_dir": str(fetch)},
                      site.workdir)
    (backup,) = fetch.glob("cpcp-*.gpg")
    assert backup.read_bytes()[:1] != b"\x1f" and b"MANIFEST" not in backup.read_bytes()  # not a plain tar
    assert not site.server.run(["sh", "-c", "ls /var/backups/cpcp"]).stdout.strip()  # moved off the server
    timings = {"backup.yml": backed_up.seconds}

    # The disaster: the old server is gone (its tor must not publish the onions any more).
    site.server.run(["systemctl", "stop", "cpcp-onion", "cpcp-source", "cpcp-gateway"])
    with Container("restored", 3, site.workdir) as new:
        applied = apply("server.yml", {"cpcp_server": new}, site.server_vars, site.workdir)
        timings["server.yml on the new host"] = applied.seconds
        new.run(["systemctl", "stop", "cpcp-onion", "cpcp-source", "cpcp-gateway"])
        timings["decrypt | restore"] = decrypt_into(new, backup)
        again = apply("server.yml", {"cpcp_server": new}, site.server_vars, site.workdir)
        timings["server.yml again (keys to tor, start)"] = again.seconds
        started = time.monotonic()
        onions = wait_for_onions(site, host=new)
        timings["onions published"] = time.monotonic() - started
        assert onions["source"] == site.onions["source"] and onions["officer"] == site.onions["officer"]

        started = time.monotonic()
        # A tor that never saw the old server's descriptors.
        fresh = site.network.start_client("after-restore")
        try:
            port = fresh.socks_port()
            assert port is not None
            case = await source_reads_case(port, onions["source"], story["codename"])
        finally:
            site.network.stop_tor("after-restore")
        assert story["reply"] in case
        timings["source reads the reply"] = time.monotonic() - started

        started = time.monotonic()
        ws = site.workstation
        user_env = ["runuser", "-u", "officer", "--", "env", f"XDG_RUNTIME_DIR=/run/user/{site.officer_uid}"]
        ws.run([*user_env, "systemctl", "--user", "stop", "cpcp-desk"])
        ws.run(["sh", "-c", f"rm -rf {DESK_CACHE}/*"])  # nothing the old server sent stays
        ws.run([*user_env, "systemctl", "--user", "start", "cpcp-desk"])
        with forwarded(ws, 8090, site.workdir / "desk-after.sock") as sock:
            async with desk_browser(sock) as desk:
                await wait_for_desk(desk)
                try:
                    await desk_login(desk, site.officer)
                except AssertionError as exc:  # seen once in CI, not reproduced: say what the gateway saw
                    raise AssertionError(f"{exc}\n{gateway_view(new)}") from None
                inbox = await desk_sync(desk)
                case_id, page = await desk_case_with(desk, inbox, story["canary"])
                assert await desk_file(desk, case_id, page) == story["photo"]
        timings["desk syncs and decrypts"] = time.monotonic() - started

        verified = site.admin("audit-verify", host=new)
        assert verified.startswith("audit log intact"), verified
    timings["whole drill"] = time.monotonic() - drill_started
    say(request, "\ndeploy: restore drill " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


def gateway_view(host: Container) -> str:
    """What tells why the restored gateway refused a login: its last audit entries (each
    failure's reason), since when it runs, and its secrets file."""
    probe = ("import sqlite3, sys; db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
             "print('\\n'.join(' '.join(map(str, r)) for r in db.execute("
             "'SELECT at, officer_id, action, details FROM audit_log ORDER BY id DESC LIMIT 8')))")
    audit = host.run(["python3", "-c", probe, f"{DATA}/cpcp.sqlite"], check=False)
    unit = host.run(["systemctl", "show", "-p", "ActiveEnterTimestamp,NRestarts,MainPID", "cpcp-gateway"],
                    check=False)
    files = host.run(["sh", "-c", f"date -u; stat -c '%n %U %a %y' {DATA}/gateway-secrets.json {DATA}/cpcp.sqlite"],
                     check=False)
    return "\n".join(r.stdout + r.stderr for r in (audit, unit, files))


async def wait_for_desk(desk: httpx.AsyncClient, within: float = 30) -> None:
    """Until the restarted desk answers."""
    deadline = time.monotonic() + within
    while True:
        try:
            await desk.get("/login")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
