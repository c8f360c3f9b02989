"""server.yml and workstation.yml applied to booted Debian 12 containers: what an admin sees."""

from __future__ import annotations

from .conftest import Site


def test_server_units_are_active(site: Site) -> None:
    for unit in ("cpcp-source", "cpcp-gateway", "cpcp-onion"):
        assert site.server.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "active", unit


def test_workstation_tor_and_desk_are_active(site: Site) -> None:
    ws = site.workstation
    assert ws.run(["systemctl", "is-active", "tor@default"], check=False).stdout.strip() == "active"
    uid = ws.run(["id", "-u", "officer"]).stdout.strip()
    desk = ws.run(["runuser", "-u", "officer", "--", "env", f"XDG_RUNTIME_DIR=/run/user/{uid}",
                   "systemctl", "--user", "is-active", "cpcp-desk"], check=False)
    assert desk.stdout.strip() == "active", desk
