"""server.yml and workstation.yml applied to booted Debian 12 containers, then used: what an admin,
a source and an officer see."""

from __future__ import annotations

import os
import secrets

import pytest

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
