"""A sealed identity, end to end: every program a real process on loopback, real gpg.

A source leaves a tip with contact details; the case officer's desk shows "identity sealed"
and requests disclosure with a reason; the officer cannot approve it; the custodian (SP) sees
it at their own desk and approves, which decrypts the details there and re-encrypts them to the
officer's key; the officer's desk then shows them; the source sees that, and on which day, they
were disclosed. The contact detail (a canary) is nowhere on the server: not in the data folder,
the logs, the temp folders or a dump of the database.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyotp
import pytest
from sqlalchemy import select

from cpcp.models import AuditEntry, Base
from cpcp.services import CoreServices

from .conftest import Deployment
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
from .test_desk import code
from .test_gateway import PASSPHRASE

pytestmark = pytest.mark.custodian


@pytest.fixture
def servers(deployment: Deployment, officer_gnupg: Path, custodian_gnupg: Path) -> Iterator[list[Server]]:
    started = [start_server(deployment, app="source"), start_server(deployment, app="gateway")]
    gateway = started[1]
    started.append(start_desk(deployment.root / "desk", gateway.url, officer_gnupg))
    started.append(start_desk(deployment.root / "sp-desk", gateway.url, custodian_gnupg))
    yield started
    for srv in reversed(started):
        srv.stop()


async def db_dump(core: CoreServices) -> str:
    """Every row of every table, as text: what a database dump would hold."""
    out = []
    async with core.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in (await conn.execute(select(table))).all()]
    return "\n".join(out)


async def test_contact_details_disclosed_only_on_a_custodians_approval(
    deployment: Deployment, core: CoreServices, servers: list[Server]
) -> None:
    source_srv, gateway_srv, desk_srv, sp_srv = servers
    officer_totp = pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    sp_totp = pyotp.TOTP(await core.officer_auth.enrol("sp", PASSPHRASE))
    other_totp = pyotp.TOTP(await core.officer_auth.enrol("officer-b", PASSPHRASE))
    canary = f"98{secrets.randbelow(10**8):08d}"
    contact = f"मोबाइल {canary}, रामपुर"

    # 1. The source leaves a tip with contact details; its case page says they are sealed.
    async with httpx.AsyncClient(base_url=source_srv.url, timeout=60, headers={"User-Agent": AGENT}) as src:
        codename = await begin(src)
        r = await send(src, [("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "जुआ रोज़ रात को होता है"), ("contact", contact)])
        assert r.status_code == 303
        assert "सील" in (await src.get("/case")).text

    # 2. The case officer sees "identity sealed", not the details, and asks with a reason.
    async with httpx.AsyncClient(base_url=desk_srv.url, timeout=60) as desk:
        inbox = await desk_login_and_sync(desk, "officer-a", PASSPHRASE, code(officer_totp))
        match = re.search(r'href="/cases/(\d+)"', inbox)
        assert match
        case_id = int(match.group(1))
        page = (await desk.get(f"/cases/{case_id}")).text
        assert "identity sealed" in page and canary not in page
        r = await desk.post(f"/cases/{case_id}/disclosure-requests", data={"csrf_token": csrf(page), "reason": ""})
        assert r.status_code == 400 and "a reason is required" in r.text
        r = await desk.post(f"/cases/{case_id}/disclosure-requests", data={
            "csrf_token": csrf(page), "reason": "Witness to gambling den; statement needed"})
        assert r.status_code == 303
        page = (await desk.get(f"/cases/{case_id}")).text
        rid = int(re.search(r"Request (\d+) of .*?<strong>pending</strong>", page, re.DOTALL).group(1))  # type: ignore[union-attr]
        # Not a custodian: the desk's approve is refused by the gateway, nothing changes.
        r = await desk.post(f"/disclosures/{rid}/approve", data={"csrf_token": csrf(page)})
        assert r.status_code == 303
        listing = (await desk.get("/disclosures")).text
        assert "only a custodian may decide" in listing and "<strong>pending</strong>" in listing
        officer_cookies = desk.cookies  # the same browser comes back in step 4

    # Another unit's officer cannot even ask (straight at the gateway, as a stolen token would).
    async with httpx.AsyncClient(base_url=gateway_srv.url, timeout=60) as api:
        token = (await api.post("/api/v1/token", json={"handle": "officer-b", "passphrase": PASSPHRASE,
                                                        "code": code(other_totp)})).json()["token"]
        r = await api.post(f"/api/v1/cases/{case_id}/disclosure-requests",
                           headers={"Authorization": f"Bearer {token}"}, json={"reason": "curious"})
        assert r.status_code == 404

    # 3. The custodian sees the pending request with its reason and approves it at their desk.
    async with httpx.AsyncClient(base_url=sp_srv.url, timeout=60) as sp:
        await desk_login_and_sync(sp, "sp", PASSPHRASE, code(sp_totp))
        listing = (await sp.get("/disclosures")).text
        assert "Witness to gambling den" in listing and "Approve and disclose" in listing
        assert canary not in listing
        r = await sp.post(f"/disclosures/{rid}/approve", data={"csrf_token": csrf(listing)})
        assert r.status_code == 303
        listing = (await sp.get("/disclosures")).text
        assert "re-encrypted at this desk" in listing and "<strong>disclosed</strong>" in listing

    # 4. The requesting officer's desk shows the details.
    async with httpx.AsyncClient(base_url=desk_srv.url, timeout=60, cookies=officer_cookies) as desk:
        page = (await desk.get(f"/cases/{case_id}")).text
        assert f'href="/disclosures/{rid}"' in page
        shown = (await desk.get(f"/disclosures/{rid}")).text
        assert contact in shown

    # 5. The source sees that the details were disclosed, and the day.
    async with httpx.AsyncClient(base_url=source_srv.url, timeout=60, headers={"User-Agent": AGENT}) as later:
        await later.get("/lang/en?next=/login")
        page = (await later.get("/login")).text
        await later.post("/login", data={"csrf_token": csrf(page), "codename": codename})
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert f"Disclosed to the officer handling your case on {today}" in (await later.get("/case")).text

    # 6. Every step is in the audit chain; the details are nowhere on the server.
    async with core.sessions() as db:
        audited = (await db.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert [a for a in audited if a.startswith("disclosure")] == [
        "disclosure_request", "disclosure_approve", "disclosure_download_sealed", "disclosure_upload",
        "disclosure_view"]
    assert (await core.audit.verify()).ok
    for srv in servers:
        srv.stop()
    needles = [canary.encode(), "रामपुर".encode(), codename.encode()]
    assert files_containing([deployment.settings.data_dir, *(s.tmpdir for s in servers)], needles) == []
    assert files_containing([deployment.root / "desk" / "data", deployment.root / "sp-desk" / "data"], needles) == []
    for srv in servers:
        log = srv.output.read_bytes()
        assert not any(n in log for n in needles), srv.output
    assert canary not in await db_dump(core)
