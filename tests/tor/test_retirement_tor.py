"""Retiring an officer through the deployment file shuts their workstation out of the officer
onion on the running tor at once, through a private Tor network; another officer's workstation
still gets in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onion.services import OFFICER
from onion.testnet import PrivateTorNetwork
from onion.tor import CONTROL_PORT_FILE

from ..conftest import ROOT, Deployment
from ..servers import Server
from ..test_people import also_in_cyber_cell, edit_officer
from .test_tor_e2e import authorize_workstation
from .tornet import get_with_retries, layout_of, publish, refused

API = "/api/v1/openapi.json"


async def test_retiring_an_officer_revokes_their_workstation_on_the_running_tor(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    onions = publish(network, tor_deployment, source_server, gateway_server)
    officer = onions[OFFICER]
    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source_server.port))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway_server.port))
    desk_b = authorize_workstation(network, tor_deployment, "desk-b", officer=officer,
                                   auth_dir=tmp_path / "auth-b", capsys=capsys)
    desk_a = authorize_workstation(network, tor_deployment, "desk-a", officer=officer,
                                   auth_dir=tmp_path / "auth-a", capsys=capsys)
    assert (await get_with_retries(desk_b, officer, API)).status_code == 200

    # As on a server, the service tor is the deployment's own: cpcp-admin finds its control
    # port in <data_dir>/tor (cookie authentication, as cpcp-onion run sets it up).
    tor_dir = tor_deployment.settings.data_dir / "tor"
    tor_dir.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(network.root / "service" / CONTROL_PORT_FILE, tor_dir / CONTROL_PORT_FILE)
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
