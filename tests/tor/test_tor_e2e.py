"""End to end through a private Tor network on 127.0.0.1 (onion.testnet): the real source app
and gateway behind onion services published by onion.services, reached through a client tor's
SOCKS port.

One network, one deployment (SQLite) and one source app and gateway serve the whole module
(fixtures in conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from sqlalchemy import select

from cpcp.models import Case, Document
from cpcp.services import build_core
from cpcp.settings import load_settings
from onion.cli import main as onion_main
from onion.errors import TorFailed
from onion.services import KEY_FILE, OFFICER, SOURCE, OnionLayout, OnionPublisher, cpcp_services
from onion.testnet import PrivateTorNetwork
from onion.tor import Tor, read_control_port, server_options

from ..conftest import Deployment, gpg_decrypt, write_deployment
from ..helpers import codename_of, csrf
from ..servers import Server, begin, desk_login_and_sync, send, start_desk
from ..test_desk import code
from ..test_gateway import PASSPHRASE
from .tornet import (
    ANSWER_WITHIN,
    fresh_client,
    get_with_retries,
    layout_of,
    publish,
    refused,
    through_tor,
)


async def test_source_gets_a_codename_and_submits_a_tip_with_a_file_over_tor(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, officer_gnupg: Path,
) -> None:
    onions = publish(network, tor_deployment, source_server, gateway_server)
    attachment = b"%PDF-1.4 evidence " + os.urandom(64 * 1024)
    async with through_tor(network.socks_port, onions[SOURCE], ANSWER_WITHIN) as tor_browser:
        home = await tor_browser.get("/")
        assert home.status_code == 200 and "112" in home.text
        page = (await tor_browser.get("/generate")).text
        codename = codename_of(page)
        assert len(codename.split()) >= 5
        r = await tor_browser.post("/create", data={"csrf_token": csrf(page)})
        assert r.status_code == 303 and r.headers["location"] == "/submit"
        r = await send(tor_browser, [
            ("unit", "ps-sadar-bazar"), ("kind", "information"), ("category", "illegal_trade"),
            ("text", "अवैध शराब की बिक्री, sent over Tor"),
            ("files", "evidence.pdf", attachment, "application/pdf"),
        ])
        assert r.status_code == 303 and r.headers["location"] == "/case"
        assert 'class="notice"' in (await tor_browser.get("/case")).text
    core = build_core(tor_deployment.settings)
    try:
        async with core.sessions() as db:
            assert len((await db.scalars(select(Case))).all()) == 1
            docs = (await db.scalars(select(Document).order_by(Document.id))).all()
        message = json.loads(gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name)))
        assert message["text"] == "अवैध शराब की बिक्री, sent over Tor"
        assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == attachment
    finally:
        await core.close()


async def test_officer_onion_answers_only_a_workstation_with_its_client_key(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    onions = publish(network, tor_deployment, source_server, gateway_server)
    officer = onions[OFFICER]
    api = "/api/v1/openapi.json"
    # The gateway itself answers (on loopback), so a refusal below is Tor's doing.
    async with httpx.AsyncClient(base_url=gateway_server.url) as direct:
        assert (await direct.get(api)).status_code == 200
    # No workstation is authorized yet: nobody gets in.
    assert await refused(network.socks_port, officer, api)

    # The admin authorizes a workstation on the running tor, as in production; the command
    # reads the apps' ports from the same settings (here the environment) as the apps.
    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source_server.port))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway_server.port))
    control = ["--config", str(tor_deployment.config), "--timeout", str(ANSWER_WITHIN),
               "--control-port", str(read_control_port(network.root / "service"))]
    capsys.readouterr()
    assert onion_main([*control, "add-client", "desk-1"]) == 0
    printed = capsys.readouterr().out
    auth_private = re.findall(rf"^{officer.removesuffix('.onion')}:descriptor:x25519:[A-Z2-7]{{52}}$",
                              printed, re.MULTILINE)
    assert len(auth_private) == 1 and "ClientOnionAuthDir" in printed
    auth_dir = tmp_path / "onion_auth"
    auth_dir.mkdir(mode=0o700)
    (auth_dir / "cpcp-officer.auth_private").write_text(auth_private[0] + "\n")
    (auth_dir / "cpcp-officer.auth_private").chmod(0o600)
    desk = network.start_client("desk-1", {"ClientOnionAuthDir": str(auth_dir)})
    desk_socks = desk.socks_port()
    assert desk_socks is not None

    # The workstation with the key gets the gateway's answer; the client without it still not.
    r = await get_with_retries(desk_socks, officer, api)
    assert r.status_code == 200 and "openapi" in r.json()
    assert await refused(network.socks_port, officer, api)

    # Revoked: the same workstation (key still on its disk, descriptor in its cache) is out.
    assert onion_main([*control, "revoke-client", "desk-1"]) == 0
    assert await refused(desk_socks, officer, api)
    assert onion_main([*control, "status"]) == 0
    status = capsys.readouterr().out
    assert f"officer onion: {officer}" in status and "0 workstation(s)" in status
    network.stop_tor("desk-1")


def authorize_workstation(network: PrivateTorNetwork, deployment: Deployment, name: str, *,
                          officer: str, auth_dir: Path, capsys: pytest.CaptureFixture[str]) -> int:
    """``cpcp-onion add-client`` on the running service tor, the printed key installed in a new
    workstation tor's ClientOnionAuthDir; returns that tor's SOCKS port."""
    control = ["--config", str(deployment.config), "--timeout", str(ANSWER_WITHIN),
               "--control-port", str(read_control_port(network.root / "service"))]
    capsys.readouterr()
    assert onion_main([*control, "add-client", name]) == 0
    printed = capsys.readouterr().out
    lines = re.findall(rf"^{officer.removesuffix('.onion')}:descriptor:x25519:[A-Z2-7]{{52}}$",
                       printed, re.MULTILINE)
    assert len(lines) == 1 and "ClientOnionAuthDir" in printed
    auth_dir.mkdir(mode=0o700)
    (auth_dir / "cpcp-officer.auth_private").write_text(lines[0] + "\n")
    (auth_dir / "cpcp-officer.auth_private").chmod(0o600)
    port = network.start_client(name, {"ClientOnionAuthDir": str(auth_dir)}).socks_port()
    assert port is not None
    return port


async def test_desk_syncs_decrypts_and_replies_through_the_officer_onion(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, officer_gnupg: Path, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole loop over Tor: source → source onion; desk → officer onion through its own
    tor holding the client key; the source reads the reply through the source onion."""
    onions = publish(network, tor_deployment, source_server, gateway_server)
    canary, reply_canary = f"TOR-TIP-{secrets.token_hex(6)}", f"TOR-REPLY-{secrets.token_hex(6)}"
    photo = b"\xff\xd8\xff\xe0 photo " + os.urandom(200 * 1024)
    async with through_tor(network.socks_port, onions[SOURCE], ANSWER_WITHIN) as tor_browser:
        codename = await begin(tor_browser)
        r = await send(tor_browser, [
            ("unit", "ps-sadar-bazar"), ("kind", "complaint"), ("category", "suspicious_vehicle"),
            ("text", f"संदिग्ध वाहन {canary}"), ("files", "car.jpg", photo, "image/jpeg"),
        ])
        assert r.status_code == 303 and r.headers["location"] == "/case"

    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source_server.port))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway_server.port))
    desk_socks = authorize_workstation(network, tor_deployment, "desk-loop", officer=onions[OFFICER],
                                       auth_dir=tmp_path / "onion_auth", capsys=capsys)
    core = build_core(tor_deployment.settings)
    try:
        totp = pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    finally:
        await core.close()
    # The workstation's tor learns the descriptor with its key; the desk then goes only there.
    assert (await get_with_retries(desk_socks, onions[OFFICER], "/api/v1/openapi.json")).status_code == 200
    desk_srv = start_desk(tmp_path / "desk", f"http://{onions[OFFICER]}", officer_gnupg,
                          socks_proxy=f"socks5h://127.0.0.1:{desk_socks}")
    try:
        async with httpx.AsyncClient(base_url=desk_srv.url, timeout=ANSWER_WITHIN) as desk:
            inbox = await desk_login_and_sync(desk, "officer-a", PASSPHRASE, code(totp))
            assert "संदिग्ध वाहन" in inbox, inbox
            case_ids = re.findall(r'href="/cases/(\d+)"', inbox)
            case_page = ""
            for case_id in case_ids:  # other tests of this module sent tips too
                case_page = (await desk.get(f"/cases/{case_id}")).text
                if canary in case_page:
                    break
            assert canary in case_page and "car.jpg" in case_page
            file_id = re.search(rf'href="/cases/{case_id}/files/(\d+)"', case_page)
            assert file_id
            assert (await desk.get(f"/cases/{case_id}/files/{file_id.group(1)}")).content == photo
            r = await desk.post(f"/cases/{case_id}/reply", data={
                "csrf_token": csrf(case_page), "text": f"वाहन की जाँच हो रही है. {reply_canary}"})
            assert r.status_code == 303, r.text
            r = await desk.post(f"/cases/{case_id}/update", data={
                "csrf_token": csrf(case_page), "status": "under_review", "priority": "normal",
                "assignee": "", "labels": ""})
            assert r.status_code == 303, r.text
    finally:
        desk_srv.stop()
    assert b"onion" not in desk_srv.output.read_bytes()  # the desk logs no addresses it visits

    async with through_tor(network.socks_port, onions[SOURCE], ANSWER_WITHIN) as later:
        page = (await later.get("/login")).text
        r = await later.post("/login", data={"csrf_token": csrf(page), "codename": codename})
        assert r.status_code == 303 and r.headers["location"] == "/case"
        case = (await later.get("/case")).text
        assert reply_canary in case and "वाहन की जाँच हो रही है." in case
    network.stop_tor("desk-loop")


async def test_source_onion_keeps_its_address_when_the_service_tor_restarts(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server,
) -> None:
    """Runs after the other tests on the network: the module's client tor keeps the old
    descriptor, and nothing after this uses it for the source onion."""
    before = publish(network, tor_deployment, source_server, gateway_server)
    key = layout_of(tor_deployment).service_dir(SOURCE) / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    key_bytes = key.read_bytes()
    network.start_service()  # stops the service tor, starts a fresh one on the same folders
    assert network.service.hidden_services() == {}
    after = publish(network, tor_deployment, source_server, gateway_server)
    assert after == before
    assert key.read_bytes() == key_bytes
    with fresh_client(network, "after-restart") as socks:
        r = await get_with_retries(socks, after[SOURCE], "/")
    assert r.status_code == 200


def tor_children() -> list[int]:
    """tor processes whose parent is this test process."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if fields[1] == me and name == "tor":
                found.append(int(entry.name))
    return found


def offline(options: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    """The deployment's tor with its network off: these tests never leave the machine."""
    return {**options, "DisableNetwork": "1"}


def test_deployment_tor_is_owned_cookie_authenticated_and_publishes(tmp_path: Path) -> None:
    data = tmp_path / "tor"
    with Tor.launch(data_dir=data, options=offline(server_options(data, log_file=tmp_path / "tor.log")),
                    name="own") as tor:
        pid = tor.pid
        assert tor.owned and tor.socks_port() is None
        assert stat.S_IMODE((data / "control_auth_cookie").stat().st_mode) == 0o600
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        layout, services = OnionLayout(tmp_path / "onion"), cpcp_services(source_port=8080, gateway_port=8081)
        # What cpcp-onion's admin commands do: attach with the cookie, publish, let go.
        with Tor.attach_data_dir(data) as admin:
            result = OnionPublisher(tor=admin, layout=layout).publish(services, timeout=None)
        assert set(result.addresses) == {SOURCE, OFFICER}
        if tor.supports_option("HiddenServicePoWDefensesEnabled"):
            assert result.notes == []
        else:  # tor < 0.4.8: published all the same, with a note
            assert all("PoW" in note for note in result.notes)
        assert len(tor.hidden_services()) == 2  # still served after the admin let go
        # Unchanged lines are not set again (tor's echo of them matches ours): nothing to wait
        # for, although this tor, offline, could never publish a descriptor.
        again = OnionPublisher(tor=tor, layout=layout).publish(services, timeout=1)
        assert again.addresses == result.addresses and again.uploaded == []
    assert pid is not None and not Path(f"/proc/{pid}").exists()


def test_add_client_on_a_tor_that_is_not_bootstrapped_answers_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The key is saved and tor has it; waiting for an upload tor cannot make yet would only
    end in an error after --timeout (the admin would think nothing happened)."""
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    settings = load_settings(config, env={})
    layout = OnionLayout.for_data_dir(settings.data_dir)
    data = tmp_path / "tor"
    with Tor.launch(data_dir=data, options=offline(server_options(data)), name="offline") as tor:
        services = cpcp_services(source_port=settings.source.port, gateway_port=settings.gateway.port)
        officer = str(OnionPublisher(tor=tor, layout=layout).publish(services, timeout=None).addresses[OFFICER])
        capsys.readouterr()
        started = time.monotonic()
        assert onion_main(["--config", str(config), "--control-port", str(read_control_port(data)),
                           "--timeout", "300", "add-client", "desk-9"]) == 0
        assert time.monotonic() - started < 30
        out, err = capsys.readouterr()
        assert out.startswith("# Officer workstation 'desk-9'") and officer.removesuffix(".onion") in out
        assert "publishes the officer onion once it is up" in err
        assert layout.clients(OFFICER).names() == ["desk-9"]
        assert len(tor.hidden_services()) == 2  # both onions still configured on that tor


def test_a_control_port_without_authentication_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "tor"
    options = offline({**server_options(data), "CookieAuthentication": "0"})
    before = set(tor_children())  # the module's network may be running
    with pytest.raises(TorFailed, match="no authentication"):
        Tor.launch(data_dir=data, options=options, name="open")
    assert set(tor_children()) <= before


def test_stopping_the_network_leaves_no_tor_process(network: PrivateTorNetwork) -> None:
    """Runs last: stops the module's network and looks for survivors."""
    pids = network.pids
    assert len(pids) >= 7
    network.stop()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert tor_children() == []
