"""The live desk: while an officer is logged in it follows the gateway's change feed, brings new
tips in decrypted with no sync click, names unit and count in a desktop notification on the
session D-Bus, and rides out a gateway restart with backoff. Real gateway and source app
processes on loopback, a real dbus-daemon, real gpg."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyotp
import pytest
from jeepney import MessageType, new_method_return  # type: ignore[import-untyped]
from jeepney.bus_messages import message_bus  # type: ignore[import-untyped]
from jeepney.io.asyncio import open_dbus_connection  # type: ignore[import-untyped]
from quart import Quart

from cpcp.services import CoreServices
from journalist_app.desk import create_app
from journalist_app.desk.cache import Cache
from journalist_app.desk.casebook import Casebook
from journalist_app.desk.client import GatewayClient
from journalist_app.desk.crypto import DeskCrypto
from journalist_app.desk.follow import BACKOFF_CAP, Follower, backoff
from journalist_app.desk.i18n import load_translations
from journalist_app.desk.notify import DesktopNotifier, NoNotifier, message_for
from journalist_app.desk.settings import load_desk_settings

from .conftest import Deployment
from .helpers import csrf
from .servers import (
    AGENT,
    Server,
    begin,
    files_containing,
    send,
    start_server,
    wait_for_port,
    write_desk_config,
)
from .test_desk import DESK_URL, desk_login, make_tip
from .test_gateway import PASSPHRASE

# -- a private session bus with a notification service that records what it is sent -------------

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


@dataclass
class NotificationService:
    address: str
    calls: list[tuple[object, ...]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[str]:
    """``dbus-daemon --session``-like, with its own config and socket; stopped at the end."""
    config = tmp_path / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=tmp_path / "bus.sock"), encoding="utf-8")
    daemon = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert daemon.stdout is not None
        address = daemon.stdout.readline().decode().strip()
        assert address.startswith("unix:path="), address
        yield address
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        if daemon.stdout is not None:
            daemon.stdout.close()


@pytest.fixture
async def notifications(session_bus: str) -> AsyncIterator[NotificationService]:
    """Owns org.freedesktop.Notifications on the private bus and records each Notify call."""
    service = NotificationService(session_bus)
    conn = await open_dbus_connection(session_bus)
    owned = asyncio.Event()

    async def serve() -> None:
        await conn.send(message_bus.RequestName("org.freedesktop.Notifications"))
        while True:
            msg = await conn.receive()
            kind = msg.header.message_type
            if kind == MessageType.method_return and not owned.is_set():
                owned.set()
            elif kind == MessageType.method_call and msg.header.fields.get(3) == "Notify":
                service.calls.append(tuple(msg.body))
                await conn.send(new_method_return(msg, "u", (len(service.calls),)))
                service.arrived.set()

    task = asyncio.create_task(serve())
    await asyncio.wait_for(owned.wait(), 10)
    yield service
    task.cancel()
    await conn.close()


# -- servers -------------------------------------------------------------------------------


@pytest.fixture
def gateway_server(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment, app="gateway")
    yield srv
    srv.stop()


@pytest.fixture
def source(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment)
    yield srv
    srv.stop()


@pytest.fixture
async def totp(core: CoreServices) -> pyotp.TOTP:
    return pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))


async def submit_tip(source: Server, unit: str, text: str) -> None:
    async with httpx.AsyncClient(base_url=source.url, timeout=30, headers={"User-Agent": AGENT}) as client:
        await begin(client)
        r = await send(client, [("unit", unit), ("kind", "information"), ("text", text)])
        assert r.status_code == 303


async def until(check: object, timeout: float) -> float:
    """Seconds until the async ``check`` holds; fails after ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if await check():  # type: ignore[operator]
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def title(html: str) -> str:
    found = re.search(r"<title>(.*?)</title>", html, re.DOTALL)
    assert found
    return found.group(1).strip()


# -- the desk follows by itself --------------------------------------------------------------


async def test_a_tip_reaches_the_inbox_decrypted_with_no_sync_and_a_notification_names_unit_and_count(
    tmp_path: Path, gateway_server: Server, source: Server, totp: pyotp.TOTP, officer_gnupg: Path,
    notifications: NotificationService,
) -> None:
    config = write_desk_config(tmp_path / "desk", gateway_server.url, officer_gnupg)
    settings = load_desk_settings(config, env={"DBUS_SESSION_BUS_ADDRESS": notifications.address,
                                               "CPCP_DESK_FOLLOW_WAIT": "5"})
    app = create_app(settings)
    async with app.test_app():
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=DESK_URL, timeout=60) as browser:
            await desk_login(browser, totp)
            follower = app.extensions["cpcp_desk"].follower
            await until(lambda: _true(follower.last_heard is not None and follower.synced.is_set()), 20)
            inbox = (await browser.get("/inbox")).text
            assert title(inbox).startswith("Inbox") and "Last heard from the gateway at" in inbox
            # No page reloads itself (WCAG 2.2.1): the inbox runs the desk's own script, bound
            # to this one answer by a nonce; every other page runs none.
            assert 'http-equiv="refresh"' not in inbox
            answer = await browser.get("/inbox")
            nonce = re.search(r'<script nonce="([^"]+)" src="/static/inbox-live.js"', answer.text)
            assert nonce and f"script-src 'nonce-{nonce.group(1)}'" in answer.headers["content-security-policy"]
            assert nonce.group(1) not in (await browser.get("/inbox")).text  # fresh each time

            secret = f"kachchi sharab near the old well {time.time_ns()}"
            await submit_tip(source, "cell-cyber", "another unit's tip")
            await submit_tip(source, "ps-sadar-bazar", secret)
            answered = time.monotonic()

            async def shown() -> bool:
                return secret in (await browser.get("/inbox")).text

            await until(shown, 15)
            assert time.monotonic() - answered < 10  # no sync pressed; the aim on loopback too
            page = (await browser.get("/inbox")).text
            assert "another unit" not in page
            assert title(page).startswith("(1) Inbox")

            await asyncio.wait_for(notifications.arrived.wait(), 10)
            assert len(notifications.calls) == 1  # not for the Cyber Cell's tip
            app_name, _, _, summary, body, *_ = notifications.calls[0]
            assert app_name == "CPCP desk"
            assert summary == "CPCP: 1 new tip for Sadar Bazar Police Station"
            assert body == "Open the desk's inbox to read."
            assert "sharab" not in f"{notifications.calls}"
            # Fetched and decrypted in the background, and still nothing readable on disk.
            assert files_containing([settings.data_dir], [secret.encode()]) == []

            # Opened: no longer counted. A page where the officer writes never reloads itself.
            case_id = max(c.id for c in app.extensions["cpcp_desk"].cache.cases())
            case_page = (await browser.get(f"/cases/{case_id}")).text
            assert secret in case_page and 'http-equiv="refresh"' not in case_page and "<script" not in case_page
            case_answer = await browser.get(f"/cases/{case_id}")
            assert "script-src" not in case_answer.headers["content-security-policy"]
            assert not title(case_page).startswith("(")
            assert title((await browser.get("/inbox")).text).startswith("Inbox")

            r = await browser.post("/logout", data={"csrf_token": csrf(page)})
            assert r.status_code == 303 and not follower.running
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "cpcp-desk-follow"]


async def _true(value: bool) -> bool:
    return value


async def test_the_inbox_live_update_does_not_keep_an_idle_session_alive(
    tmp_path: Path, gateway_server: Server, totp: pyotp.TOTP, officer_gnupg: Path,
) -> None:
    """The inbox's script asks every few seconds with X-CPCP-Passive: those requests see the
    session but do not renew it, so an officer who walked away is still logged out."""
    config = write_desk_config(tmp_path / "desk", gateway_server.url, officer_gnupg)
    settings = load_desk_settings(config, env={"CPCP_DESK_FOLLOW": "false"})
    app = create_app(settings)
    now = [1000.0]
    app.session_interface.clock = lambda: now[0]  # type: ignore[attr-defined]
    idle = settings.session_idle_timeout
    async with app.test_app():
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url=DESK_URL, timeout=60) as browser:
            await desk_login(browser, totp)
            for _ in range(2):  # the officer's own requests renew the session
                now[0] += idle * 0.75
                assert (await browser.get("/inbox")).status_code == 200
            passive = {"X-CPCP-Passive": "1"}
            for _ in range(3):  # polls spread over most of the idle time: all still answered
                now[0] += idle / 4
                assert (await browser.get("/inbox", headers=passive)).status_code == 200
            now[0] += idle / 2  # 1.25 idle periods since the officer last did anything
            gone = await browser.get("/inbox", headers=passive)
            assert gone.status_code in (302, 303) and "/login" in gone.headers["location"]


async def test_the_follower_rides_out_a_gateway_restart_with_backoff(
    tmp_path: Path, deployment: Deployment, gateway_server: Server, totp: pyotp.TOTP, core: CoreServices,
    officer_gnupg: Path,
) -> None:
    from .test_desk import code

    delays: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff, recorded and shortened
        delays.append(seconds)
        await asyncio.sleep(0.2)

    now = [dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)]
    cache = Cache(tmp_path / "cache")
    await cache.open()
    crypto = DeskCrypto(officer_gnupg)
    http = httpx.AsyncClient(base_url=gateway_server.url, timeout=10)
    client = GatewayClient(http=http)
    token = (await client.login("officer-a", PASSPHRASE, code(totp))).token
    follower = Follower(cache=cache, casebook=Casebook(cache=cache, crypto=crypto), notifier=NoNotifier(),
                        wait=2, clock=lambda: now[0], sleep=sleep, jitter=lambda: 0.5)
    restarted: Server | None = None
    try:
        follower.start(client.with_token(token))
        await until(lambda: _true(follower.synced.is_set()), 20)
        assert follower.last_heard == now[0] and follower.state == "following"

        gateway_server.stop()  # a poll in flight may still be answered while it shuts down
        await until(lambda: _true(len(delays) >= 1), 30)
        now[0] += dt.timedelta(seconds=40)
        await until(lambda: _true(len(delays) >= 4), 30)
        assert follower.state == "retrying" and "trying again" in (follower.problem or "")
        assert follower.heard_ago() == 40  # the inbox says how long the gateway has been silent
        assert delays[:4] == [0.75, 1.5, 3.0, 6.0]  # doubling from 1 s, jitter 0.5 -> x0.75

        case_id = await make_tip(core, "ps-sadar-bazar", "while the gateway was down")
        restarted = wait_for_port(*_restart(deployment, gateway_server))
        follower.synced.clear()
        await until(lambda: _true(case_id in follower.unseen), 30)  # a new case, not opened yet
        assert cache.case(case_id) is not None
        assert follower.state == "following" and follower.failures == 0
        assert follower.last_heard == now[0] and follower.heard_ago() == 0
    finally:
        await follower.stop()
        assert not follower.running
        await http.aclose()
        await asyncio.to_thread(crypto.close)
        if restarted is not None:
            restarted.stop()


def _restart(deployment: Deployment, old: Server) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """The gateway again on the same port (a restart, as systemd would do it)."""
    import os
    import sys

    from .conftest import ROOT

    output = deployment.root / "gateway-restarted.out"
    env = {**os.environ, "CPCP_GATEWAY__PORT": str(old.port), "TMPDIR": str(old.tmpdir)}
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "journalist_app.gateway.serve", "--config",
                                 str(deployment.config)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, old.port, output, old.tmpdir


# -- small parts -----------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_to_a_minute_with_jitter() -> None:
    assert [backoff(n, 0.999999) for n in (1, 2, 3, 4)] == pytest.approx([1, 2, 4, 8], rel=1e-5)
    assert backoff(30, 0.999999) == pytest.approx(BACKOFF_CAP, rel=1e-5)
    assert backoff(1, 0.0) == 0.5 and backoff(30, 0.0) == BACKOFF_CAP / 2


def test_a_notification_names_only_unit_and_count() -> None:
    assert message_for("Cyber Cell", 2) == ("CPCP: 2 new tips for Cyber Cell", "Open the desk's inbox to read.")
    assert message_for("Cyber Cell", 1)[0] == "CPCP: 1 new tip for Cyber Cell"
    hindi = load_translations()["hi"]
    assert message_for("साइबर सेल", 1, hindi)[0] == "CPCP: साइबर सेल के लिए 1 नई सूचना"
    assert message_for("साइबर सेल", 3, hindi) == ("CPCP: साइबर सेल के लिए 3 नई सूचनाएँ",
                                                   "पढ़ने के लिए डेस्क का इनबॉक्स खोलें।")


async def test_no_bus_is_logged_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for notifier in (DesktopNotifier(None), DesktopNotifier(f"unix:path={tmp_path / 'nobody-here'}")):
        await notifier.notify("Cyber Cell", 1)
        await notifier.notify("Cyber Cell", 1)
        assert notifier.sent == 0
    warnings = [r for r in caplog.records if "desktop notifications unavailable" in r.getMessage()]
    assert len(warnings) == 2


def test_notifications_can_be_switched_off(tmp_path: Path, officer_gnupg: Path) -> None:
    config = write_desk_config(tmp_path, "http://127.0.0.1:8081", officer_gnupg)
    on = load_desk_settings(config, env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"})
    assert on.desktop_notifications and on.session_bus == "unix:path=/run/user/1000/bus"
    off = load_desk_settings(config, env={"CPCP_DESK_DESKTOP_NOTIFICATIONS": "false"})
    assert not off.desktop_notifications
    app: Quart = create_app(off)
    assert isinstance(app.extensions["cpcp_desk"].follower._notifier, NoNotifier)


async def test_what_the_feed_does_not_carry_comes_with_the_periodic_full_sync(
    tmp_path: Path, gateway_server: Server, totp: pyotp.TOTP, core: CoreServices, officer_gnupg: Path,
) -> None:
    """A colleague's status change moves no cursor: the follower's full sync every
    RESYNC_EVERY seconds (clock injected) brings it in."""
    from cpcp.casework import CaseChanges
    from cpcp.models import CaseStatus

    from .test_desk import code

    case_id = await make_tip(core, "control-room", "shared by both officers")
    clock = [1000.0]
    cache = Cache(tmp_path / "cache")
    await cache.open()
    crypto = DeskCrypto(officer_gnupg)
    http = httpx.AsyncClient(base_url=gateway_server.url, timeout=10)
    client = GatewayClient(http=http)
    token = (await client.login("officer-a", PASSPHRASE, code(totp))).token
    follower = Follower(cache=cache, casebook=Casebook(cache=cache, crypto=crypto), notifier=NoNotifier(),
                        wait=1, resync_every=300, monotonic=lambda: clock[0])
    try:
        follower.start(client.with_token(token))
        await until(lambda: _true(follower.synced.is_set()), 20)
        case = cache.case(case_id)
        assert case is not None and case.status == "received"
        await core.officer_auth.enrol("officer-b", PASSPHRASE)
        colleague = await core.officer_auth.identity("officer-b")
        assert colleague is not None
        await core.casework.update_case(colleague, case_id, CaseChanges(status=CaseStatus.UNDER_REVIEW))
        follower.synced.clear()
        await asyncio.sleep(2.5)  # polls answered empty; not yet time for a full sync
        assert not follower.synced.is_set() and cache.case(case_id).status == "received"  # type: ignore[union-attr]
        clock[0] += 301
        await until(lambda: _true(follower.synced.is_set()), 10)
        assert cache.case(case_id).status == "under_review"  # type: ignore[union-attr]
    finally:
        await follower.stop()
        await http.aclose()
        await asyncio.to_thread(crypto.close)
