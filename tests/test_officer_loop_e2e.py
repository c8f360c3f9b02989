"""The officer loop, end to end: every program a real process on loopback, real gpg.

A source submits a tip with a photo through the source app; the officer's desk (its own
Hypercorn process, driven over HTTP as a browser would) logs in to the gateway, syncs, decrypts
with the officer's key, replies and sets the status; the source logs in with the codename and
reads the reply and the status. The server can read neither the tip nor the reply.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from sqlalchemy import select

from cpcp.errors import DecryptionFailed
from cpcp.models import Reply, Source
from cpcp.services import CoreServices
from cpcp.targets import ResponseTargets
from cpcp.targetstore import save_targets

from .conftest import FPR, Deployment, gpg_decrypt
from .helpers import csrf
from .servers import (
    AGENT,
    Server,
    begin,
    desk_login_and_sync,
    files_containing,
    send,
    start_desk,
    start_server,
)
from .test_desk import code, jpeg_with_gps
from .test_gateway import PASSPHRASE


@pytest.fixture
def servers(deployment: Deployment, officer_gnupg: Path) -> Iterator[tuple[Server, Server, Server]]:
    source = start_server(deployment, app="source")
    gateway = start_server(deployment, app="gateway")
    desk = start_desk(deployment.root / "desk", gateway.url, officer_gnupg)
    yield source, gateway, desk
    for srv in (desk, gateway, source):
        srv.stop()


async def test_source_tip_desk_reply_and_status_back_to_the_source(
    deployment: Deployment, core: CoreServices, servers: tuple[Server, Server, Server], officer_gnupg: Path
) -> None:
    source_srv, _, desk_srv = servers
    totp = pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    canary = f"CANARY-{secrets.token_hex(10)}"
    # The deployment's response target for information (cpcp-admin deploy copies [targets]).
    await save_targets(core.audit, ResponseTargets(rules={"information": dt.timedelta(hours=2)}))
    photo = jpeg_with_gps(secrets.token_hex(12).encode())

    # 1. A source sends a tip with a photo, over HTTP, as Tor Browser would.
    async with httpx.AsyncClient(base_url=source_srv.url, timeout=60, headers={"User-Agent": AGENT}) as src:
        codename = await begin(src)
        r = await send(src, [
            ("unit", "ps-sadar-bazar"), ("kind", "information"), ("category", "illegal_trade"),
            ("place", "पुराना बाजार"), ("text", f"अवैध शराब की बिक्री {canary}"),
            ("files", "IMG_2041.jpg", photo, "image/jpeg"),
        ])
        assert r.status_code == 303 and r.headers["location"] == "/case"

    # 2. The officer at the desk: log in, sync, open the case, look at the photo's metadata.
    reply_canary = f"REPLY-{secrets.token_hex(8)}"
    async with httpx.AsyncClient(base_url=desk_srv.url, timeout=60) as desk:
        inbox = await desk_login_and_sync(desk, "officer-a", PASSPHRASE, code(totp))
        # The desk follows the gateway from the login on: its own sync may have fetched them first.
        assert re.search(r"Synced 1 case\. (2 new objects downloaded\. 0 already here|0 new objects downloaded\. 2 already here)",
                         inbox) and "अवैध शराब" in inbox
        match = re.search(r'href="/cases/(\d+)"', inbox)
        assert match
        case_id = int(match.group(1))
        case_page = (await desk.get(f"/cases/{case_id}")).text
        assert f"अवैध शराब की बिक्री {canary}" in case_page and "IMG_2041.jpg" in case_page
        # Received moments ago, information: the first reply is due in 2 hours, in IST.
        due = re.search(r"Reply due by (\d+ \w+ \d{4}, \d\d:\d\d) IST", case_page)
        assert due and "Reply due by" in inbox and "Overdue" not in inbox
        assert "पुराना बाजार" in case_page and "Illegal trade" in case_page
        r = await desk.get(f"/cases/{case_id}/files/{_file_id(case_page)}")
        assert r.content == photo
        meta = (await desk.get(f"/cases/{case_id}/files/{_file_id(case_page)}/metadata")).text
        assert "Redmi Note 12" in meta and "SN-4711" in meta and "GPS position (26.836761, 80.945833)" in meta

        # 3. Reply (encrypted at the desk) and set the status.
        r = await desk.post(f"/cases/{case_id}/reply", data={
            "csrf_token": csrf(case_page), "text": f"धन्यवाद. Thank you, a team was sent. {reply_canary}"})
        assert r.status_code == 303, r.text
        r = await desk.post(f"/cases/{case_id}/update", data={
            "csrf_token": csrf(case_page), "status": "action_taken", "priority": "high", "assignee": "",
            "labels": "liquor"})
        assert r.status_code == 303, r.text
        case_page = (await desk.get(f"/cases/{case_id}")).text
        assert reply_canary in case_page and "Action taken" in case_page
        assert "Reply due by" not in case_page  # answered: nothing is due any more

    # 4. The source comes back with the codename and reads the reply and the status.
    async with httpx.AsyncClient(base_url=source_srv.url, timeout=60, headers={"User-Agent": AGENT}) as later:
        await later.get("/lang/en?next=/login")
        page = (await later.get("/login")).text
        r = await later.post("/login", data={"csrf_token": csrf(page), "codename": codename})
        assert r.status_code == 303 and r.headers["location"] == "/case"
        source_case = (await later.get("/case")).text
        assert reply_canary in source_case and "Thank you, a team was sent." in source_case
        assert "Action taken" in source_case

    # 5. The reply on the server is unreadable there: not with the source keyring without the
    #    codename-derived passphrase, not with the officer keyring (no private keys at all).
    async with core.sessions() as db:
        reply = (await db.scalars(select(Reply))).one()
        source = (await db.scalars(select(Source))).one()
    assert reply.object_name is not None
    ciphertext = core.store.read(reply.object_name)
    assert ciphertext.startswith(b"-----BEGIN PGP MESSAGE-----") and reply_canary.encode() not in ciphertext
    recipients = core.source_keys.message_recipients(ciphertext)
    assert recipients & core.source_keys.encryption_key_ids(source.reply_key_fingerprint)
    assert recipients & core.officer_keys.encryption_key_ids(FPR["officer-a"])
    for keyring, passphrase in ((core.source_keys, "not-the-codename-key"), (core.source_keys, None),
                                (core.officer_keys, None)):
        with pytest.raises(DecryptionFailed):
            await asyncio.wait_for(asyncio.to_thread(keyring.decrypt_bytes, ciphertext, passphrase=passphrase), 60)
    assert core.officer_keys.secret_fingerprints() == set()
    assert reply_canary.encode() in gpg_decrypt(officer_gnupg, ciphertext)  # the unit can read it

    # 6. Nothing readable was left behind by the desk or the server.
    for srv in servers:
        srv.stop()
    desk_root = deployment.root / "desk"
    needles = [canary.encode(), reply_canary.encode(), "अवैध".encode(), b"SN-4711", codename.encode()]
    assert list((desk_root / "data" / "cache" / "docs").iterdir())  # the search looks at real files
    assert files_containing([desk_root / "data", desk_srv.tmpdir], needles) == []
    assert files_containing([deployment.settings.data_dir, source_srv.tmpdir], needles) == []
    log = desk_srv.output.read_bytes()
    assert not any(n in log for n in needles) and b"GET /" not in log and b"POST /" not in log


def _file_id(case_page: str) -> int:
    match = re.search(r'href="/cases/\d+/files/(\d+)"', case_page)
    assert match, "the case page links no file"
    return int(match.group(1))
