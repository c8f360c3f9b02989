"""Retiring an officer through the deployment file shuts their workstation out of the officer
onion on the running tor at once, through a private Tor network, whether cpcp-admin deploy
revokes the key itself or (tor's folder closed to it) cpcp-onion sync-workstations does;
another officer's workstation still gets in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cpcp.admin import deploy
from onion.services import OFFICER
from onion.testnet import PrivateTorNetwork
from onion.tor import CONTROL_PORT_FILE

from ..conftest import FPR, ROOT, Deployment
from ..servers import Server
from ..test_people import also_in_cyber_cell, edit_officer
from .test_tor_e2e import authorize_workstation
from .tornet import get_with_retries, layout_of, publish, refused

API = "/api/v1/openapi.json"


def two_workstations(network: PrivateTorNetwork, deployment: Deployment, source: Server, gateway: Server,
                     names: tuple[str, str], *, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> tuple[str, int, int]:
    """Both onions published, two workstations authorized on the running service tor (their
    SOCKS ports), and the service tor findable in <data_dir>/tor the way cpcp-onion run leaves
    it (cookie authentication), so cpcp-admin and cpcp-onion re-publish on it."""
    officer = publish(network, deployment, source, gateway)[OFFICER]
    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source.port))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway.port))
    first, second = (authorize_workstation(network, deployment, name, officer=officer,
                                           auth_dir=tmp_path / f"auth-{name}", capsys=capsys)
                     for name in names)
    tor_dir = deployment.settings.data_dir / "tor"
    tor_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(network.root / "service" / CONTROL_PORT_FILE, tor_dir / CONTROL_PORT_FILE)
    return officer, first, second


async def test_retiring_an_officer_revokes_their_workstation_on_the_running_tor(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    officer, desk_b, desk_a = two_workstations(
        network, tor_deployment, source_server, gateway_server, ("desk-b", "desk-a"),
        capsys=capsys, tmp_path=tmp_path, monkeypatch=monkeypatch)
    assert (await get_with_retries(desk_b, officer, API)).status_code == 200
    edit_officer(tor_deployment, "officer-a", 'workstations = ["desk-a"]')
    edit_officer(tor_deployment, "officer-b", 'workstations = ["desk-b"]', "retired = true")
    also_in_cyber_cell(tor_deployment)
    done = subprocess.run([sys.executable, "-m", "cpcp.admin", "--config", str(tor_deployment.config), "deploy"],
                          cwd=ROOT, capture_output=True, text=True, check=False, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "workstation key(s) revoked: desk-b" in done.stdout
    assert "officer onion re-published" in done.stderr
    assert layout_of(tor_deployment).clients(OFFICER).names() == ["desk-a"]

    # The retired officer's workstation (key on its disk, descriptor in its cache) is out;
    # the other officer's is not.
    assert await refused(desk_b, officer, API)
    assert (await get_with_retries(desk_a, officer, API)).status_code == 200
    network.stop_tor("desk-a")
    network.stop_tor("desk-b")


async def test_with_tors_folder_closed_to_cpcp_admin_sync_workstations_revokes_on_the_running_tor(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server as ansible deploys it: cpcp-admin (the apps' user) retires the officer but
    cannot open tor's folder; cpcp-onion sync-workstations (tor's user) then shuts the
    workstation out on the running tor. Its own officer and workstations: the deployment is
    the module's."""
    officer, desk_c, desk_d = two_workstations(
        network, tor_deployment, source_server, gateway_server, ("desk-c", "desk-d"),
        capsys=capsys, tmp_path=tmp_path, monkeypatch=monkeypatch)
    assert (await get_with_retries(desk_c, officer, API)).status_code == 200
    path = tor_deployment.root / "deployment.toml"
    path.write_text(path.read_text(encoding="utf-8") + f"""
[[officers]]
handle = "officer-c"
name = "Test officer C"
fingerprint = "{FPR['custodian']}"
key_file = "custodian.asc"
workstations = ["desk-c"]
""", encoding="utf-8")
    await deploy(tor_deployment.settings)
    edit_officer(tor_deployment, "officer-c", "retired = true")
    before = set(layout_of(tor_deployment).clients(OFFICER).names())
    assert {"desk-c", "desk-d"} <= before

    monkeypatch.setattr("cpcp.admin.onion_folder_open", lambda folder: False)
    capsys.readouterr()
    await deploy(tor_deployment.settings)
    assert "desk-c left to 'cpcp-onion sync-workstations'" in capsys.readouterr().out
    assert set(layout_of(tor_deployment).clients(OFFICER).names()) == before
    assert (await get_with_retries(desk_c, officer, API)).status_code == 200  # not yet

    sync = [sys.executable, "-m", "onion.cli", "--config", str(tor_deployment.config), "sync-workstations"]
    done = subprocess.run(sync, cwd=ROOT, capture_output=True, text=True, check=False, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "revoked workstation desk-c (officer officer-c retired)\n"
    assert "officer onion re-published" in done.stderr
    assert set(layout_of(tor_deployment).clients(OFFICER).names()) == before - {"desk-c"}
    assert await refused(desk_c, officer, API)
    assert (await get_with_retries(desk_d, officer, API)).status_code == 200
    again = subprocess.run(sync, cwd=ROOT, capture_output=True, text=True, check=False, env=dict(os.environ))
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    network.stop_tor("desk-c")
    network.stop_tor("desk-d")
