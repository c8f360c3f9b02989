"""Every program stops the gpg-agent daemons it started: gpg starts one per GnuPG home and
leaves it running, so without this each run of a server, a desk or cpcp-admin leaves daemons
behind (one ``scripts/test`` run used to leave ~179). The programs run here as real processes,
use gpg (a tip, a desk decrypt), stop, and no agent for a home of theirs may be left.

tests/conftest.py stops leftover agents after every module too; these tests look before it does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyotp

from cpcp.pgp import Keyring
from cpcp.services import build_core
from journalist_app.desk.crypto import DeskCrypto

from .conftest import ROOT, Deployment, stop_gpg_agents
from .servers import AGENT, begin, desk_login_and_sync, send, start_desk, start_server
from .test_desk import code
from .test_gateway import PASSPHRASE


def agents_for(root: Path) -> dict[int, str]:
    """gpg-agent processes whose GnuPG home (``--homedir`` on the command line, or GNUPGHOME
    in the environment) lies under ``root``: pid to home."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = [os.fsdecode(a) for a in (proc / "cmdline").read_bytes().split(b"\0")]
            environ = [os.fsdecode(e) for e in (proc / "environ").read_bytes().split(b"\0")]
        except OSError:
            continue  # gone, or not ours to read
        if not args or Path(args[0]).name != "gpg-agent":
            continue
        homes = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--homedir"]
        homes += [e.split("=", 1)[1] for e in environ if e.startswith("GNUPGHOME=")]
        for home in homes:
            if Path(home).is_relative_to(root):
                found[int(proc.name)] = home
    return found


def own_officer_home(officer_gnupg: Path, where: Path) -> Path:
    """A copy of the officer's GnuPG home inside this test's folder, so that every agent for it
    belongs to this test (the session's home is shared with other tests)."""
    home = where / "officer-gnupg"
    shutil.copytree(officer_gnupg, home, ignore=shutil.ignore_patterns("S.*", "*.lock"))
    home.chmod(0o700)
    return home


async def enrol(deployment: Deployment) -> pyotp.TOTP:
    """officer-a's TOTP, with a core of this test process that is closed again (a keyring left
    open here would count as a program still using the server's homes)."""
    core = build_core(deployment.settings)
    try:
        return pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    finally:
        await core.close()


async def test_source_app_gateway_and_desk_stop_their_agents(deployment: Deployment, officer_gnupg: Path) -> None:
    totp = await enrol(deployment)
    home = own_officer_home(officer_gnupg, deployment.root)
    stop_gpg_agents(deployment.root)  # what this test process started in setting up
    assert agents_for(deployment.root) == {}
    server_homes = {str(deployment.settings.gnupg_home / "sources"), str(deployment.settings.gnupg_home / "officers")}

    source = start_server(deployment, app="source")
    gateway = start_server(deployment, app="gateway")
    desk = start_desk(deployment.root / "desk", gateway.url, home)
    try:
        async with httpx.AsyncClient(base_url=source.url, timeout=60, headers={"User-Agent": AGENT}) as src:
            await begin(src)  # a new source: its reply key is made in the source keyring
            r = await send(src, [("unit", "ps-sadar-bazar"), ("kind", "information"),
                                 ("category", "illegal_trade"), ("text", "agent check")])
            assert r.status_code == 303
        async with httpx.AsyncClient(base_url=desk.url, timeout=60) as browser:
            inbox = await desk_login_and_sync(browser, "officer-a", PASSPHRASE, code(totp))
            case = re.search(r'href="/cases/(\d+)"', inbox)
            assert case
            assert "agent check" in (await browser.get(f"/cases/{case.group(1)}")).text
        # The positive control: the programs did start agents, for the server's and the desk's homes.
        assert {str(home), *server_homes} <= set(agents_for(deployment.root).values())

        desk.stop()
        assert str(home) not in agents_for(deployment.root).values()
        # The gateway shares the server's homes with the source app, which still runs: the
        # agents stay, and a new source's key is still made.
        gateway.stop()
        assert server_homes <= set(agents_for(deployment.root).values())
        async with httpx.AsyncClient(base_url=source.url, timeout=60, headers={"User-Agent": AGENT}) as src:
            await begin(src)
    finally:
        for srv in (desk, gateway, source):
            srv.stop()
    left = agents_for(deployment.root)
    stop_gpg_agents(deployment.root)
    assert left == {}, f"gpg-agent left running: {left}"


def test_the_last_keyring_of_a_home_stops_its_agent(tmp_path: Path) -> None:
    first, second = Keyring(tmp_path / "ring"), Keyring(tmp_path / "ring")
    fpr = first.generate_key(passphrase="p" * 43, uid="agent check")  # the agent starts
    [agent] = agents_for(tmp_path)
    first.close()
    assert list(agents_for(tmp_path)) == [agent]  # still used: key generation and decryption work
    fpr2 = second.generate_key(passphrase="q" * 43, uid="agent check 2")
    assert second.decrypt_bytes(second.encrypt_bytes(b"tip", [fpr, fpr2]), passphrase="q" * 43) == b"tip"
    second.close()
    assert agents_for(tmp_path) == {}
    second.close()  # twice is harmless


def test_the_last_desk_crypto_of_a_home_stops_its_agent(officer_gnupg: Path, tmp_path: Path) -> None:
    home = own_officer_home(officer_gnupg, tmp_path)
    first, second = DeskCrypto(home), DeskCrypto(home)
    assert first.check()  # lists secret keys: the agent starts
    [agent] = agents_for(tmp_path)
    first.close()
    assert list(agents_for(tmp_path)) == [agent]
    second.close()
    assert agents_for(tmp_path) == {}


def test_cpcp_admin_stops_its_agents(deployment: Deployment) -> None:
    stop_gpg_agents(deployment.root)
    for command in (["check"], ["deploy"]):
        done = subprocess.run([sys.executable, "-m", "cpcp.admin", "--config", str(deployment.config), *command],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        left = agents_for(deployment.root)
        stop_gpg_agents(deployment.root)
        assert left == {}, f"cpcp-admin {command[0]} left gpg-agent running: {left}"


def test_cpcp_admin_demo_stops_its_agents(tmp_path: Path) -> None:
    """The demo also makes the workstation's private keys: that home's agent goes too."""
    done = subprocess.run([sys.executable, "-m", "cpcp.admin", "demo", str(tmp_path / "demo")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    left = agents_for(tmp_path)
    stop_gpg_agents(tmp_path)
    assert left == {}, f"cpcp-admin demo left gpg-agent running: {left}"
