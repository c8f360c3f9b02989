"""Custodians in the deployment file: validated like officers' pinned keys, and the admin
commands say plainly whether the deployment offers contact details at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cpcp.deployment import load_deployment
from cpcp.errors import ConfigError

from .conftest import FPR, ROOT, Deployment


def admin(deployment: Deployment, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpcp.admin", "--config", str(deployment.config), command],
                          cwd=ROOT, capture_output=True, text=True, check=False)


def test_custodian_flag_must_be_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "deployment.toml"
    path.write_text(f'''
[[officers]]
handle = "sp"
name = "SP"
fingerprint = "{FPR['custodian']}"
key_file = "custodian.asc"
custodian = "yes"

[[units]]
slug = "ps-a"
kind = "police_station"
name_en = "A"
name_hi = "ए"
''', encoding="utf-8")
    with pytest.raises(ConfigError, match="officer sp: custodian must be true or false"):
        load_deployment(path)
    path.write_text(path.read_text().replace('"yes"', "true"), encoding="utf-8")
    assert [o.handle for o in load_deployment(path).custodians] == ["sp"]


def test_check_says_contact_details_are_not_offered_without_a_custodian(deployment: Deployment) -> None:
    done = admin(deployment, "check")
    assert done.returncode == 0, done.stderr
    assert "no custodian in the deployment: the tip form does not offer contact details" in done.stdout


@pytest.mark.custodian
def test_check_counts_custodian_keys_and_refuses_a_mismatched_one(deployment: Deployment) -> None:
    done = admin(deployment, "check")
    assert done.returncode == 0 and "contact details are sealed to 1 custodian key(s)" in done.stdout
    # The custodian's key file swapped for another key: deploy names the custodian and stops.
    keys = deployment.settings.keys_dir
    (keys / "custodian.asc").write_text((keys / "officer-b.asc").read_text())
    done = admin(deployment, "deploy")
    assert done.returncode == 2 and "officer sp" in done.stderr and FPR["custodian"] in done.stderr
