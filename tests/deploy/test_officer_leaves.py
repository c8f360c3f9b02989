"""An officer leaves a deployed server: the admin marks them retired in the deployment file and
applies server.yml again, as README's "Deploy" says."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..tor.tornet import say
from .conftest import CONFIG, VENV, Site
from .playbooks import apply


def retire_officer_b(files: Path) -> None:
    """officer-b retired with their workstation desk-b; the cyber cell goes to officer-a."""
    deployment = files / "deployment.toml"
    text = deployment.read_text(encoding="utf-8")
    text = text.replace('key_file = "officer-b.asc"\n',
                        'key_file = "officer-b.asc"\nretired = true\nworkstations = ["desk-b"]\n', 1)
    cyber = text.index('slug = "cell-cyber"')
    text = text[:cyber] + text[cyber:].replace('officers = ["officer-b"]', 'officers = ["officer-a"]', 1)
    text = text.replace('officers = ["officer-a", "officer-b"]', 'officers = ["officer-a"]')
    assert text.count("retired = true") == 1 and '"officer-b"]' not in text
    deployment.write_text(text, encoding="utf-8")


def test_a_retired_officers_workstation_key_goes_and_the_rest_stays(
        request: pytest.FixtureRequest, site: Site) -> None:
    site.onion_cli("add-client", "desk-b")
    assert site.onion_cli("list-clients").split() == ["desk-1", "desk-b"]
    retire_officer_b(Path(str(site.server_vars["cpcp_files_dir"])))
    applied = apply("server.yml", {"cpcp_server": site.server}, site.server_vars, site.workdir)
    say(request, f"\ndeploy: server.yml retiring officer-b in {applied.seconds:.0f}s, "
                 f"changed={applied.changed()}")
    # Revoked by cpcp-onion as tor's user: at its restart (the settings changed) or by the
    # playbook's sync-workstations task, whichever comes first.
    assert site.onion_cli("list-clients").split() == ["desk-1"]
    assert site.admin("audit-verify").startswith("audit log intact")
    # officer-b cannot be enrolled again while retired; officer-a's desk-1 still works (the
    # restore drill after this module syncs through it).
    refused = site.server.run(["runuser", "-u", "cpcp-gateway", "--", f"{VENV}/cpcp-admin", "--config", CONFIG,
                               "officer-enrol", "officer-b"], check=False)
    assert refused.returncode != 0 and "retired" in refused.stderr and "passphrase:" not in refused.stdout
    again = apply("server.yml", {"cpcp_server": site.server}, site.server_vars, site.workdir)
    assert again.changed() == {site.server.name: 0}, again.changed_tasks()
