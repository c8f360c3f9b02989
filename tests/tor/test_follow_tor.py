"""The live desk through Tor: a desk following the change feed through the officer onion (with
its client key) shows a tip sent through the source onion, decrypted, with no sync pressed.
bench/latency.py measures the same path N times."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import httpx
import pyotp
import pytest

from cpcp.services import build_core
from onion.services import OFFICER, SOURCE
from onion.testnet import PrivateTorNetwork

from ..conftest import Deployment
from ..helpers import csrf
from ..servers import Server, begin, send, start_desk
from ..test_desk import code
from ..test_gateway import PASSPHRASE
from .test_tor_e2e import authorize_workstation
from .tornet import ANSWER_WITHIN, get_with_retries, publish, say, through_tor


async def test_the_desk_follows_through_the_officer_onion_and_shows_a_new_tip_by_itself(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, officer_gnupg: Path, capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    onions = publish(network, tor_deployment, source_server, gateway_server)
    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source_server.port))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway_server.port))
    monkeypatch.setenv("CPCP_DESK_DESKTOP_NOTIFICATIONS", "false")
    desk_socks = authorize_workstation(network, tor_deployment, "desk-follow", officer=onions[OFFICER],
                                       auth_dir=tmp_path / "onion_auth", capsys=capsys)
    core = build_core(tor_deployment.settings)
    try:
        totp = pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    finally:
        await core.close()
    assert (await get_with_retries(desk_socks, onions[OFFICER], "/api/v1/openapi.json")).status_code == 200
    desk_srv = start_desk(tmp_path / "desk", f"http://{onions[OFFICER]}", officer_gnupg,
                          socks_proxy=f"socks5h://127.0.0.1:{desk_socks}")
    canary = f"TOR-LIVE-{secrets.token_hex(6)}"
    try:
        async with httpx.AsyncClient(base_url=desk_srv.url, timeout=ANSWER_WITHIN) as desk:
            page = (await desk.get("/login")).text
            r = await desk.post("/login", data={"csrf_token": csrf(page), "handle": "officer-a",
                                                "passphrase": PASSPHRASE, "code": code(totp)})
            assert r.status_code == 303
            deadline = time.monotonic() + ANSWER_WITHIN
            while "Last heard from the gateway at" not in (await desk.get("/inbox")).text:
                assert time.monotonic() < deadline, "the desk never heard from the gateway"
                await asyncio.sleep(0.5)

            async with through_tor(network.socks_port, onions[SOURCE], ANSWER_WITHIN) as tor_browser:
                await begin(tor_browser)
                r = await send(tor_browser, [("unit", "ps-sadar-bazar"), ("kind", "information"),
                                             ("text", f"live tip {canary}")])
                assert r.status_code == 303
            answered = time.monotonic()
            while canary not in (inbox := (await desk.get("/inbox")).text):
                assert time.monotonic() - answered < ANSWER_WITHIN, "the tip never reached the inbox"
                await asyncio.sleep(0.2)
            say(request, f"\ntip in the following desk's inbox {time.monotonic() - answered:.1f}s "
                         "after the source's answer, through both onions")
            assert "(1) Inbox" in inbox and "New tips come in by themselves." in inbox
    finally:
        desk_srv.stop()
    assert b"onion" not in desk_srv.output.read_bytes()  # the desk logs no address it visits
    network.stop_tor("desk-follow")
