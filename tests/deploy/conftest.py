"""The deployment tests: both playbooks applied for real to booted Debian 12 containers.

A package-wide private Tor network listens on the containers' side of the host (TOR_ADDRESS);
the server container gets server.yml with the network's authorities as ``[tor] torrc_include``,
the workstation container gets workstation.yml with the same lines for its own tor. Applied once
for the whole package (about 8 minutes on 2 cores with warm caches, mostly apt and pip inside
the containers; a cold base root adds about 70 s).

Needs root, debootstrap, systemd-nspawn, nsenter, nft, ip and ansible-playbook (scripts/setup
--dev installs them); without them the package is skipped, unless CPCP_TEST_REQUIRE_DEPLOY=1,
when it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from onion.clients import ClientKeyPair, auth_line, generate_key_pair
from onion.testnet import PrivateTorNetwork

from ..conftest import FPR, write_deployment
from ..containers import TOR_ADDRESS, Container, HostNetwork, base_root, missing_tools
from ..tor.tornet import say
from .journey import Officer
from .playbooks import AUTH_LINE, ONION, Applied, apply, torrc_lines

MISSING = missing_tools() + ([] if os.geteuid() == 0 else ["root"])
if MISSING and os.environ.get("CPCP_TEST_REQUIRE_DEPLOY") == "1":
    raise RuntimeError(f"CPCP_TEST_REQUIRE_DEPLOY=1 but this machine lacks: {', '.join(MISSING)}")

HERE = Path(__file__).parent
TEST_KEYS = HERE.parent.parent / "keys" / "test"
OFFICER = "officer-a"
WORKSTATION_USER = "officer"
CONFIG = "/etc/cpcp/cpcp.toml"
VENV = "/opt/cpcp/current/.venv/bin"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
            if MISSING:
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(MISSING)} (scripts/setup --dev)"))
            item.add_marker(pytest.mark.filterwarnings(r"ignore:setDaemon\(\) is deprecated:DeprecationWarning"))


@dataclass(frozen=True)
class AdminKeys:
    """The admin's SSH key and their client key for the SSH onion, made on their machine."""

    ssh_key: Path
    ssh_public: str
    onion: ClientKeyPair

    @classmethod
    def make(cls, workdir: Path) -> AdminKeys:
        key = workdir / "admin_ssh_ed25519"
        key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admin@test", "-f", str(key)],
                       check=True, capture_output=True)
        return cls(key, key.with_suffix(".pub").read_text().strip(), generate_key_pair("admin"))


@dataclass
class Site:
    """A deployed server and workstation, and what the admin learnt while deploying them."""

    server: Container
    workstation: Container
    workdir: Path
    network: PrivateTorNetwork
    server_vars: dict[str, object]
    workstation_vars: dict[str, object]
    admin_keys: AdminKeys
    onions: dict[str, str] = field(default_factory=dict)
    officer: Officer = field(default_factory=lambda: Officer(OFFICER, "", ""))
    officer_uid: str = ""
    applies: list[Applied] = field(default_factory=list)
    #: What the journey left for the restore drill to find again (codename, canaries).
    story: dict[str, Any] = field(default_factory=dict)

    def admin(self, *args: str, host: Container | None = None, check: bool = True,
              user: str = "cpcp-gateway") -> str:
        """``cpcp-admin`` on the server as an app's user (the gateway's: officers' enrolment
        and the audit log), as the README tells the admin."""
        target = host or self.server
        return target.run(["runuser", "-u", user, "--", f"{VENV}/cpcp-admin", "--config", CONFIG, *args],
                          check=check).stdout

    def onion_cli(self, *args: str, host: Container | None = None, check: bool = True) -> str:
        target = host or self.server
        return target.run(["runuser", "-u", "cpcp-tor", "--", f"{VENV}/cpcp-onion", "--config", CONFIG,
                           *args], check=check).stdout


def server_files(workdir: Path) -> Path:
    """ansible/files/ as the admin fills it: deployment.toml and the public keys."""
    files = workdir / "files"
    write_deployment(files, "sqlite+aiosqlite:///unused")
    (files / "cpcp.toml").unlink()  # the playbook writes the server's own
    return files


def wait_for_onions(site: Site, host: Container | None = None, timeout: float = 240) -> dict[str, str]:
    """The three onion addresses (source, officer, admin SSH), once ``cpcp-onion status`` says
    all are published."""
    deadline = time.monotonic() + timeout
    while True:
        status = site.onion_cli("status", host=host, check=False)
        found = dict(ONION.findall(status))
        if len(found) == 3 and "NOT" not in status:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"onions not published after {timeout:.0f}s:\n{status}")
        time.sleep(3)


@pytest.fixture(scope="package")
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = Path(os.environ.get("CPCP_TEST_DEPLOY_DIR") or tmp_path_factory.mktemp("deploy"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base_root()
    say(request, f"\ndeploy: base root ready in {time.monotonic() - started:.1f}s")
    shutil.rmtree(workdir / "tornet", ignore_errors=True)
    with HostNetwork(), PrivateTorNetwork(workdir / "tornet", address=TOR_ADDRESS) as network, \
            Container("server", 1, workdir) as server, Container("desk", 2, workdir) as workstation:
        say(request, f"deploy: private Tor network in {network.bootstrap_seconds:.1f}s; containers booted")
        include = torrc_lines(network.dir_authority_options())
        admin = AdminKeys.make(workdir)
        server_vars: dict[str, object] = {
            "cpcp_oversight_fingerprint": FPR["oversight"], "cpcp_files_dir": str(server_files(workdir)),
            "cpcp_torrc_include_lines": include, "cpcp_admin_ssh_keys": [admin.ssh_public],
            # The throwaway oversight key doubles as the backup key here; a district makes one
            # for backups alone (README, "Deploy").
            "cpcp_backup_fingerprint": FPR["oversight"], "cpcp_backup_key_file": "oversight.asc",
            "cpcp_admin_onion_clients": {"admin": auth_line(admin.onion.public)}}
        site = Site(server, workstation, workdir, network, server_vars, {}, admin)
        applied = apply("server.yml", {"cpcp_server": server}, server_vars, workdir)
        site.applies.append(applied)
        say(request, f"deploy: server.yml applied in {applied.seconds:.0f}s, changed={applied.changed()}")
        site.onions = wait_for_onions(site)
        enrolled = site.admin("officer-enrol", OFFICER)
        passphrase, secret = re.search(r"passphrase: (.+)", enrolled), re.search(r"secret: ([A-Z2-7]+)", enrolled)
        assert passphrase and secret, enrolled
        site.officer = Officer(OFFICER, passphrase[1].strip(), secret[1])
        client = site.onion_cli("add-client", "desk-1")
        auth = AUTH_LINE.search(client)
        assert auth, client
        prepare_workstation(workstation)
        site.workstation_vars = {"cpcp_officer_auth_private": auth[0], "cpcp_officer_user": WORKSTATION_USER,
                                 "cpcp_workstation_torrc_lines": include}
        applied = apply("workstation.yml", {"cpcp_workstation": workstation}, site.workstation_vars, workdir)
        site.applies.append(applied)
        site.officer_uid = officer_logs_in(workstation)
        say(request, f"deploy: workstation.yml applied in {applied.seconds:.0f}s, changed={applied.changed()}")
        yield site
        shutil.rmtree(workdir / "ansible-local", ignore_errors=True)


def prepare_workstation(host: Container) -> None:
    """What the officer's workstation has before the admin arrives: the officer's account, logged
    in later (``officer_logs_in``)."""
    host.run(["useradd", "--create-home", "--shell", "/bin/bash", WORKSTATION_USER])


def officer_logs_in(host: Container) -> str:
    """The officer's own key into their GnuPG home (on a real desk: theirs, or a smartcard),
    then their login: systemd starts their user manager, which starts the desk."""
    secret = (TEST_KEYS / f"{OFFICER}.secret.asc").read_bytes()
    host.run(["gpg", "--batch", "--import"], input=secret, user=WORKSTATION_USER)
    uid = host.run(["id", "-u", WORKSTATION_USER]).stdout.strip()
    host.run(["systemctl", "start", f"user@{uid}.service"])
    return uid
