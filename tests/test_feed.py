"""The gateway's change feed (GET /api/v1/changes): scoped to the officer's units, ids and
counts only, a long poll that ends when a tip arrives through the real source app, and never
audited while downloads are."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from quart import Quart
from sqlalchemy import func, select, update

from cpcp.feed import ChangeFeed
from cpcp.models import AuditEntry, Case, Submission, Unit
from cpcp.services import CoreServices

from .conftest import Deployment
from .servers import AGENT, Server, begin, send, start_server
from .test_gateway import auth, enrol, make_case, token_for


@pytest.fixture
async def gateway(deployment: Deployment, core: CoreServices) -> Any:
    from journalist_app.gateway import create_app

    app = create_app(deployment.settings, core=core)
    async with app.test_app():
        yield app


@pytest.fixture
def source(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment)
    yield srv
    srv.stop()


async def submit_tip(source: Server, unit: str, text: str) -> None:
    """A new source's first tip through the running source app, as a browser would send it."""
    async with httpx.AsyncClient(base_url=source.url, timeout=30, headers={"User-Agent": AGENT}) as client:
        await begin(client)
        r = await send(client, [("unit", unit), ("kind", "information"), ("text", text)])
        assert r.status_code == 303


async def poll(app: Quart, token: str, **params: object) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    r = await app.test_client().get(f"/api/v1/changes?{query}", headers=auth(token))
    assert r.status_code == 200, await r.get_data(as_text=True)
    answer: dict[str, Any] = await r.get_json()
    return answer


async def audit_count(core: CoreServices) -> int:
    async with core.sessions() as db:
        return int(await db.scalar(select(func.count()).select_from(AuditEntry)) or 0)


async def test_feed_is_scoped_to_the_officers_units_with_ids_and_counts_only(
    gateway: Quart, core: CoreServices,
) -> None:
    token_a = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    token_b = await token_for(gateway, "officer-b", await enrol(core, "officer-b"))
    start = await poll(gateway, token_a)
    assert start == {"cursor": 0, "cases": [], "counts": {}, "reset": False}

    theirs = await make_case(core, "cell-cyber")
    # Officer A (Sadar Bazar and the control room) learns nothing of the Cyber Cell's tip,
    # not even a count; only the cursor moves past it.
    a = await poll(gateway, token_a, since=0, wait=0)
    assert a["cases"] == [] and a["counts"] == {} and a["cursor"] > 0
    b = await poll(gateway, token_b, since=0, wait=0)
    assert b == {"cursor": a["cursor"], "cases": [theirs], "counts": {"cell-cyber": 1}, "reset": False}

    mine = [await make_case(core, "ps-sadar-bazar"), await make_case(core, "control-room")]
    a2 = await poll(gateway, token_a, since=a["cursor"], wait=0)
    assert a2["cases"] == sorted(mine)
    assert a2["counts"] == {"ps-sadar-bazar": 1, "control-room": 1}
    assert set(a2) == {"cursor", "cases", "counts", "reset"}  # ids and counts, nothing else
    # The cursor: what was answered is not answered again.
    assert (await poll(gateway, token_a, since=a2["cursor"], wait=0))["cases"] == []
    # From the start again: both cases of A's units, never B's.
    assert (await poll(gateway, token_a, since=0, wait=0))["cases"] == sorted(mine)
    # Officer B shares only the control room.
    b2 = await poll(gateway, token_b, since=b["cursor"], wait=0)
    assert b2["cases"] == [mine[1]] and b2["counts"] == {"control-room": 1}


async def test_a_spam_case_is_listed_but_not_counted(gateway: Quart, core: CoreServices) -> None:
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    case_id = await make_case(core, "ps-sadar-bazar")
    async with core.sessions() as db:
        await db.execute(update(Submission).where(Submission.case_id == case_id).values(raises_alert=False))
        await db.commit()
    answer = await poll(gateway, token, since=0, wait=0)
    assert answer["cases"] == [case_id] and answer["counts"] == {}


async def test_a_cursor_ahead_of_the_server_asks_for_a_full_sync(gateway: Quart, core: CoreServices) -> None:
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    await make_case(core, "ps-sadar-bazar")
    answer = await poll(gateway, token, since=10_000, wait=5)
    assert answer["reset"] is True and answer["cases"] == [] and answer["cursor"] < 10_000


async def test_long_poll_ends_when_a_tip_arrives_through_the_source_app(
    gateway: Quart, core: CoreServices, source: Server,
) -> None:
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    cursor = (await poll(gateway, token))["cursor"]

    # Nothing arrives: the poll is held for its wait and ends empty.
    began = time.monotonic()
    empty = await poll(gateway, token, since=cursor, wait=2)
    assert empty == {"cursor": cursor, "cases": [], "counts": {}, "reset": False}
    assert 1.9 <= time.monotonic() - began < 4

    # Another unit's tip during the wait does not end officer A's poll.
    waiting = asyncio.create_task(poll(gateway, token, since=cursor, wait=4))
    await submit_tip(source, "cell-cyber", "not for A")
    began = time.monotonic()
    assert (await waiting)["cases"] == []
    assert time.monotonic() - began > 1.5

    # A tip for Sadar Bazar: the waiting poll answers within about a tick of the source's answer.
    waiting = asyncio.create_task(poll(gateway, token, since=cursor, wait=20))
    await asyncio.sleep(0.5)
    await submit_tip(source, "ps-sadar-bazar", "for A")
    answered = time.monotonic()
    got = await waiting
    assert time.monotonic() - answered < 2.5
    async with core.sessions() as db:
        case_id = (await db.scalars(select(Case.id).join(Unit).where(Unit.slug == "ps-sadar-bazar"))).one()
    assert got["cases"] == [case_id] and got["counts"] == {"ps-sadar-bazar": 1}


async def test_reading_the_feed_is_not_audited_but_downloading_is(gateway: Quart, core: CoreServices) -> None:
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    case_id = await make_case(core, "ps-sadar-bazar")
    before = await audit_count(core)
    answer = await poll(gateway, token, since=0, wait=0)
    await poll(gateway, token, since=answer["cursor"], wait=1)
    await poll(gateway, token)
    assert answer["cases"] == [case_id]
    assert await audit_count(core) == before
    case = await (await gateway.test_client().get(f"/api/v1/cases/{case_id}", headers=auth(token))).get_json()
    doc = case["submissions"][0]["documents"][0]["id"]
    r = await gateway.test_client().get(f"/api/v1/documents/{doc}", headers=auth(token))
    assert r.status_code == 200
    assert await audit_count(core) == before + 1


async def test_feed_needs_a_token_and_bounds_polls_per_officer(gateway: Quart, core: CoreServices) -> None:
    assert (await gateway.test_client().get("/api/v1/changes?since=0")).status_code == 401
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    cursor = (await poll(gateway, token))["cursor"]
    held = [asyncio.create_task(poll(gateway, token, since=cursor, wait=3)) for _ in range(4)]
    await asyncio.sleep(0.3)
    r = await gateway.test_client().get(f"/api/v1/changes?since={cursor}&wait=3", headers=auth(token))
    assert r.status_code == 429 and r.headers["Retry-After"]
    for task in held:
        assert (await task)["cases"] == []
    r = await gateway.test_client().get("/api/v1/changes?since=0&wait=61", headers=auth(token))
    assert r.status_code == 400


async def test_waiting_polls_share_one_database_check_per_tick(core: CoreServices) -> None:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:  # the tick, recorded; short so the test is quick
        sleeps.append(seconds)
        await asyncio.sleep(0.02)

    feed = ChangeFeed(sessions=core.sessions, tick=1.0, sleep=sleep)
    ids = frozenset({1})
    try:
        polls = [asyncio.create_task(feed.changes(officer_id=n, unit_ids=ids, since=0, wait=0.5))
                 for n in range(10)]
        await asyncio.sleep(0.25)
        ticks_while_ten_wait = feed.ticks
        results = await asyncio.gather(*polls)
    finally:
        await feed.close()
    assert all(r.cases == [] for r in results)
    # Ten polls for 0.25 s at a tick of 0.02 s: about a dozen checks in all, not ten per tick.
    assert 3 <= ticks_while_ten_wait <= 16
    assert set(sleeps) == {1.0}
    await asyncio.sleep(0.1)
    assert feed._ticker is None or feed._ticker.done()  # nobody waits: nothing ticks


async def test_a_follow_up_names_its_case_again(gateway: Quart, core: CoreServices) -> None:
    from cpcp.codenames import generate_codename

    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    login = await core.sources.create(generate_codename())
    unit = await core.cases.unit_by_slug("ps-sadar-bazar")
    cursor = (await poll(gateway, token))["cursor"]
    answers = []
    for text in ("first message", "a follow-up from the same source"):
        async with core.intake.draft(unit) as draft:
            await draft.add_message({"text": text})
            await draft.commit(source_id=login.source_id, unit=unit)
        answer = await poll(gateway, token, since=cursor, wait=0)
        answers.append(answer)
        cursor = answer["cursor"]
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None
    assert [a["cases"] for a in answers] == [[case.id], [case.id]]
    assert [a["counts"] for a in answers] == [{"ps-sadar-bazar": 1}] * 2
    assert answers[1]["cursor"] > answers[0]["cursor"]
