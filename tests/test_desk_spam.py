"""Spam at the desk (against a real gateway process, real gpg, real database): marking a case
hides it from the inbox and moves it to the spam view, audited, and is undone the same way."""

from __future__ import annotations

import json
import re

import httpx
import pyotp
from sqlalchemy import select

from cpcp.models import AuditEntry, Case
from cpcp.services import CoreServices

from .test_desk import (
    browser,
    desk_app,
    desk_login,
    desk_post,
    desk_settings,
    desk_sync,
    gateway_server,
    make_tip,
    totp,
)

FIXTURES = (browser, desk_app, desk_settings, gateway_server, totp)  # used by name below


async def test_spam_leaves_the_inbox_for_the_spam_view_and_comes_back(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP
) -> None:
    prank = await make_tip(core, "ps-sadar-bazar", "a bomb in the temple (lol)")
    real = await make_tip(core, "ps-sadar-bazar", "liquor sold behind the school")
    await desk_login(browser, totp)
    await desk_sync(browser)

    async def listed(query: str = "") -> set[int]:
        page = (await browser.get(f"/inbox?{query}")).text
        return {int(n) for n in re.findall(r'href="/cases/(\d+)"', page)}

    assert await listed() == {prank, real} and await listed("spam=1") == set()
    r = await desk_post(browser, f"/cases/{prank}/spam", {"spam": "1"}, token_from=f"/cases/{prank}")
    assert r.status_code == 303
    page = (await browser.get(f"/cases/{prank}")).text
    assert "marked as spam" in page and "further messages raise no alert" in page
    assert await listed() == {real} and await listed("spam=1") == {prank}
    assert "Spam (1)" in (await browser.get("/inbox")).text
    home = (await browser.get("/")).text  # the figures and charts leave spam out, and say so
    assert re.search(r"<strong>1</strong> new", home) and re.search(r"<strong>1</strong> in all", home)
    assert re.search(r"<strong>1</strong> marked as spam", home)
    # A bad value is refused and changes nothing.
    r = await desk_post(browser, f"/cases/{prank}/spam", {"spam": "maybe"}, token_from=f"/cases/{prank}")
    assert r.status_code == 400 and await listed("spam=1") == {prank}
    await desk_sync(browser)  # the gateway agrees after a fresh sync
    assert await listed("spam=1") == {prank}
    r = await desk_post(browser, f"/cases/{prank}/spam", {"spam": "0"}, token_from=f"/cases/{prank}")
    assert r.status_code == 303 and await listed() == {prank, real}
    async with core.sessions() as db:
        case = await db.get(Case, prank)
        assert case is not None and case.spam is False
        entries = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "update_case"))).all()
    assert [json.loads(e.details) for e in entries] == [{"case": prank, "spam": True}, {"case": prank, "spam": False}]
