"""End to end through a private Tor network on 127.0.0.1 (onion.testnet): the real source app
and gateway behind onion services published by onion.services, reached through a client tor's
SOCKS port.

One network, one deployment (SQLite) and one source app and gateway serve the whole module.
Needs the ``tor`` and ``tor-gencert`` binaries (Debian's ``tor``; scripts/setup installs it);
without them the module is skipped, unless ``CPCP_TEST_REQUIRE_TOR=1``, when it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from httpx_socks import AsyncProxyTransport
from python_socks import ProxyError, ProxyType
from sqlalchemy import select

from cpcp.admin import init_deployment
from cpcp.models import Case, Document
from cpcp.services import build_core
from cpcp.settings import load_settings
from onion.cli import main as onion_main
from onion.errors import TorFailed
from onion.services import KEY_FILE, OFFICER, SOURCE, OnionLayout, OnionPublisher, cpcp_services
from onion.testnet import PrivateTorNetwork
from onion.tor import Tor, read_control_port, server_options

from .conftest import Deployment, gpg_decrypt, write_deployment
from .helpers import codename_of, csrf
from .servers import Server, send, start_server

if not (shutil.which("tor") and shutil.which("tor-gencert")):
    if os.environ.get("CPCP_TEST_REQUIRE_TOR") == "1":
        raise RuntimeError("CPCP_TEST_REQUIRE_TOR=1 but tor or tor-gencert is not installed")
    pytest.skip("tor is not installed (scripts/setup installs it)", allow_module_level=True)

pytestmark = [
    pytest.mark.slow,
    # stem 1.8.2 starts its threads with Thread.setDaemon(), deprecated since Python 3.10.
    pytest.mark.filterwarnings(r"ignore:setDaemon\(\) is deprecated:DeprecationWarning"),
]

#: A request that should fail fails within this; one that should work gets this long.
REFUSED_WITHIN = 30.0
ANSWER_WITHIN = 60.0


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even when output is captured (timings for the reviewer)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="module")
def tor_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """SQLite only: what is tested here is Tor, not the database."""
    root = tmp_path_factory.mktemp("tor-deployment")
    config = write_deployment(root, f"sqlite+aiosqlite:///{root / 'data' / 'cpcp.sqlite'}")
    settings = load_settings(config, env={})
    init_deployment(settings)
    return Deployment(root=root, config=config, settings=settings)


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateTorNetwork]:
    net = PrivateTorNetwork(tmp_path_factory.mktemp("tornet"))
    with net:
        say(request, f"\nprivate Tor network (tor {net.service.version}): bootstrapped in "
                     f"{net.bootstrap_seconds:.1f}s")
        started = time.monotonic()
        yield net
        say(request, f"\nTor E2E tests on the network: {time.monotonic() - started:.1f}s")
    # __exit__ raised if any tor had survived; check again from the outside.
    assert not [pid for pid in net.pids if Path(f"/proc/{pid}").exists()]


@pytest.fixture(scope="module")
def source_server(tor_deployment: Deployment) -> Iterator[Server]:
    server = start_server(tor_deployment)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_server(tor_deployment: Deployment) -> Iterator[Server]:
    server = start_server(tor_deployment, app="gateway")
    yield server
    server.stop()


def layout_of(deployment: Deployment) -> OnionLayout:
    return OnionLayout.for_data_dir(deployment.settings.data_dir)


def publish(network: PrivateTorNetwork, deployment: Deployment, source: Server,
            gateway: Server) -> dict[str, str]:
    """Both onions on the network's service tor, as ``cpcp-onion run`` publishes them."""
    publisher = OnionPublisher(tor=network.service, layout=layout_of(deployment))
    services = cpcp_services(source_port=source.port, gateway_port=gateway.port)
    return {k: str(v) for k, v in publisher.publish(services, timeout=ANSWER_WITHIN).addresses.items()}


@asynccontextmanager
async def through_tor(socks_port: int, onion: str, timeout: float) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``http://onion/`` through a SOCKS port; names resolve inside tor."""
    transport = AsyncProxyTransport(proxy_type=ProxyType.SOCKS5, proxy_host="127.0.0.1",
                                    proxy_port=socks_port, rdns=True)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{onion}", timeout=timeout,
                                 follow_redirects=False) as client:
        yield client


async def get_with_retries(socks_port: int, onion: str, path: str) -> httpx.Response:
    """GET, retrying while tor still learns the (re)published descriptor."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        try:
            async with through_tor(socks_port, onion, ANSWER_WITHIN) as client:
                return await client.get(path)
        except (ProxyError, httpx.TransportError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def refused(socks_port: int, onion: str, path: str) -> bool:
    """True when the onion cannot be reached (tor answers a SOCKS failure, or nothing in time)."""
    try:
        async with through_tor(socks_port, onion, REFUSED_WITHIN) as client:
            await asyncio.wait_for(client.get(path), REFUSED_WITHIN)
    except (ProxyError, httpx.TransportError, TimeoutError):
        return True
    return False


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


async def test_source_onion_keeps_its_address_when_the_service_tor_restarts(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server,
) -> None:
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
    r = await get_with_retries(network.socks_port, after[SOURCE], "/")
    assert r.status_code == 200


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
