"""The gateway's API through Quart's test client, with real gpg and a real database."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pyotp
import pytest
from quart import Quart
from sqlalchemy import delete, func, select, update

from cpcp.models import AuditEntry, Document, Reply, Submission
from cpcp.services import CoreServices

from .conftest import FPR, Deployment, gpg_decrypt, gpg_encrypt

PASSPHRASE = "correct horse battery staple vivid ocean"


@pytest.fixture
async def gateway(deployment: Deployment, core: CoreServices) -> Any:
    from journalist_app.gateway import create_app

    app = create_app(deployment.settings, core=core)
    async with app.test_app():
        yield app


async def enrol(core: CoreServices, handle: str) -> pyotp.TOTP:
    return pyotp.TOTP(await core.officer_auth.enrol(handle, PASSPHRASE))


def code_at(totp: pyotp.TOTP, steps_ago: int = 0) -> str:
    return totp.at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30 * steps_ago))


async def token_for(app: Quart, handle: str, totp: pyotp.TOTP, steps_ago: int = 0) -> str:
    r = await app.test_client().post("/api/v1/token", json={"handle": handle, "passphrase": PASSPHRASE,
                                                            "code": code_at(totp, steps_ago)})
    assert r.status_code == 200, await r.get_data(as_text=True)
    return str((await r.get_json())["token"])


async def make_case(core: CoreServices, unit_slug: str) -> int:
    """A source's tip, through the core as the source app would store it."""
    from cpcp.codenames import generate_codename

    login = await core.sources.create(generate_codename())
    unit = await core.cases.unit_by_slug(unit_slug)
    async with core.intake.draft(unit) as draft:
        await draft.add_message({"text": f"tip for {unit_slug}"})
        await draft.commit(source_id=login.source_id, unit=unit)
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None
    return case.id


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_requests_without_a_valid_token_are_refused(gateway: Quart) -> None:
    client = gateway.test_client()
    for path in ("/api/v1/cases", "/api/v1/me", "/api/v1/documents/1", "/api/v1/units"):
        r = await client.get(path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        r = await client.get(path, headers=auth("forged-token"))
        assert r.status_code == 401


async def test_totp_is_required_and_good_only_once(gateway: Quart, core: CoreServices) -> None:
    totp = await enrol(core, "officer-a")
    client = gateway.test_client()
    body = {"handle": "officer-a", "passphrase": PASSPHRASE, "code": "000000"}
    if code_at(totp) == "000000":
        body["code"] = "111111"
    assert (await client.post("/api/v1/token", json=body)).status_code == 401
    good = {**body, "code": code_at(totp)}
    assert (await client.post("/api/v1/token", json=good)).status_code == 200
    assert (await client.post("/api/v1/token", json=good)).status_code == 401  # replayed
    # A code from a step before the one already used is refused too.
    assert (await client.post("/api/v1/token", json={**body, "code": code_at(totp, 1)})).status_code == 401
    wrong_pass = {**good, "passphrase": "not the passphrase at all"}
    assert (await client.post("/api/v1/token", json=wrong_pass)).status_code == 401


async def test_repeated_failures_lock_the_account_and_are_audited(gateway: Quart, core: CoreServices) -> None:
    totp = await enrol(core, "officer-a")
    client = gateway.test_client()
    for _ in range(core.settings.gateway.max_login_failures):
        r = await client.post("/api/v1/token", json={"handle": "officer-a", "passphrase": "wrong passphrase!!",
                                                      "code": code_at(totp)})
        assert r.status_code == 401
    r = await client.post("/api/v1/token", json={"handle": "officer-a", "passphrase": PASSPHRASE,
                                                  "code": code_at(totp)})
    assert r.status_code == 423 and "locked" in (await r.get_json())["error"]
    async with core.sessions() as db:
        actions = (await db.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all()
    assert actions.count("login_failed") == 5 and "account_locked" in actions and "login_refused_locked" in actions


async def test_officer_sees_only_own_units_cases(gateway: Quart, core: CoreServices) -> None:
    mine = await make_case(core, "ps-sadar-bazar")  # officer-a's station
    theirs = await make_case(core, "cell-cyber")  # officer-b's cell
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    listed = await (await client.get("/api/v1/cases", headers=auth(token))).get_json()
    assert [c["id"] for c in listed["cases"]] == [mine]
    assert (await client.get(f"/api/v1/cases/{theirs}", headers=auth(token))).status_code == 404
    assert (await client.get(f"/api/v1/cases/{theirs}/source-key", headers=auth(token))).status_code == 404
    doc = listed["cases"][0]["submissions"][0]["documents"][0]["id"]
    assert (await client.get(f"/api/v1/documents/{doc}", headers=auth(token))).status_code == 200
    other_doc = doc + 1
    assert (await client.get(f"/api/v1/documents/{other_doc}", headers=auth(token))).status_code == 404
    r = await client.patch(f"/api/v1/cases/{theirs}", headers=auth(token), json={"status": "closed"})
    assert r.status_code == 404


async def test_case_pages_end_where_the_cases_do(gateway: Quart, core: CoreServices) -> None:
    """Paging by after_id: every case once, in id order; a last page that is exactly full says
    there is no next page (no empty page to fetch after it); another unit's cases never count."""
    mine = [await make_case(core, "ps-sadar-bazar") for _ in range(4)]
    await make_case(core, "cell-cyber")
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()

    async def page(after: int, limit: int) -> dict[str, Any]:
        r = await client.get("/api/v1/cases", headers=auth(token), query_string={"after_id": after, "limit": limit})
        assert r.status_code == 200
        return await r.get_json()  # type: ignore[no-any-return]

    first = await page(0, 2)
    assert [c["id"] for c in first["cases"]] == mine[:2] and first["next_after_id"] == mine[1]
    last = await page(first["next_after_id"], 2)
    assert [c["id"] for c in last["cases"]] == mine[2:] and last["next_after_id"] is None
    one_more = await page(0, 3)
    assert one_more["next_after_id"] == mine[2]
    assert (await page(0, 4))["next_after_id"] is None and len((await page(0, 5))["cases"]) == 4


async def test_reply_must_be_openpgp_to_source_and_unit(
    gateway: Quart, core: CoreServices, officer_gnupg: Path, deployment: Deployment
) -> None:
    case_id = await make_case(core, "ps-sadar-bazar")
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    key = await (await client.get(f"/api/v1/cases/{case_id}/source-key", headers=auth(token))).get_json()
    subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"], input=key["armored"].encode(),
                   check=True, capture_output=True)

    def armored(recipients: list[str]) -> str:
        return gpg_encrypt(officer_gnupg, b"reply text", recipients, armor=True).decode()

    bad_bodies = [
        "hello, this is plaintext",
        "-----BEGIN PGP MESSAGE-----\n\ngarbage\n-----END PGP MESSAGE-----\n",
        armored([FPR["officer-a"]]),  # the source could not read it
        armored([key["fingerprint"]]),  # no unit officer could read it
    ]
    for body in bad_bodies:
        r = await client.post(f"/api/v1/cases/{case_id}/replies", headers=auth(token), json={"armored": body})
        assert r.status_code == 422, body[:40]
    async with core.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(Reply)) == 0
    assert not [p for p in core.store.root.rglob("*-reply.gpg")]
    good = armored([key["fingerprint"], FPR["officer-a"]])
    r = await client.post(f"/api/v1/cases/{case_id}/replies", headers=auth(token), json={"armored": good})
    assert r.status_code == 201
    reply_id = (await r.get_json())["id"]
    stored = await (await client.get(f"/api/v1/replies/{reply_id}", headers=auth(token))).get_data(as_text=False)
    assert gpg_decrypt(officer_gnupg, stored) == b"reply text"


async def test_status_assignee_priority_labels(gateway: Quart, core: CoreServices) -> None:
    case_id = await make_case(core, "control-room")  # officers a and b
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    units = await (await client.get("/api/v1/units", headers=auth(token))).get_json()
    b_id = next(o["id"] for u in units["units"] for o in u["officers"] if o["handle"] == "officer-b")
    r = await client.patch(f"/api/v1/cases/{case_id}", headers=auth(token),
                           json={"status": "action_taken", "priority": "urgent", "labels": ["procession", " arms "],
                                 "assignee": b_id})
    assert r.status_code == 200
    got = await r.get_json()
    assert (got["status"], got["priority"], got["labels"], got["assignee"]) == (
        "action_taken", "urgent", ["arms", "procession"], b_id)
    bad = await client.patch(f"/api/v1/cases/{case_id}", headers=auth(token), json={"status": "solved"})
    assert bad.status_code == 400
    view = await core.cases.case_of_source(await _source_of(core, case_id))
    assert view is not None and view.status.value == "action_taken"  # the source sees it


async def _source_of(core: CoreServices, case_id: int) -> int:
    from cpcp.models import Case

    async with core.sessions() as db:
        case = await db.get(Case, case_id)
        assert case is not None
        return case.source_id


async def test_audit_chain_detects_an_altered_or_removed_entry(gateway: Quart, core: CoreServices, deployment: Deployment) -> None:
    case_id = await make_case(core, "ps-sadar-bazar")
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    for status in ("under_review", "action_taken", "closed"):
        await client.patch(f"/api/v1/cases/{case_id}", headers=auth(token), json={"status": status})
    check = await core.audit.verify()
    assert check.ok and check.entries >= 5
    assert audit_verify(deployment).returncode == 0
    async with core.sessions.begin() as db:
        victim = await db.scalar(select(AuditEntry).where(AuditEntry.details.contains("action_taken")))
        assert victim is not None
        victim_id, original = victim.id, victim.details
        await db.execute(update(AuditEntry).where(AuditEntry.id == victim_id)
                         .values(details=original.replace("action_taken", "closed")))
    check = await core.audit.verify()
    assert not check.ok and check.first_bad_id is not None
    done = audit_verify(deployment)
    assert done.returncode == 1 and "altered" in done.stdout
    # Put it back, then remove an entry in the middle instead.
    async with core.sessions.begin() as db:
        await db.execute(update(AuditEntry).where(AuditEntry.id == victim_id).values(details=original))
    assert (await core.audit.verify()).ok
    async with core.sessions.begin() as db:
        await db.execute(delete(AuditEntry).where(AuditEntry.id == victim_id))
    check = await core.audit.verify()
    assert not check.ok and check.first_bad_id == victim_id + 1


def audit_verify(deployment: Deployment) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "cpcp.admin", "--config", str(deployment.config), "audit-verify"],
                          capture_output=True, text=True, check=False)


async def test_enrolment_command_shows_a_qr_code_and_the_credentials_work(
    gateway: Quart, deployment: Deployment
) -> None:
    import re
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "cpcp.admin", "--config", str(deployment.config), "officer-enrol", "officer-b", "--admin"],
        capture_output=True, text=True, check=True,
    )
    passphrase = re.search(r"passphrase: (.+)", done.stdout).group(1)  # type: ignore[union-attr]
    secret = re.search(r"secret: ([A-Z2-7]+)", done.stdout).group(1)  # type: ignore[union-attr]
    assert len(passphrase.split()) == 7
    assert any(block in done.stdout for block in ("█", "▀", "▄"))  # the QR code, drawn in the terminal
    r = await gateway.test_client().post("/api/v1/token", json={
        "handle": "officer-b", "passphrase": passphrase, "code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200
    me = await (await gateway.test_client().get("/api/v1/me", headers=auth((await r.get_json())["token"]))).get_json()
    assert me["handle"] == "officer-b" and me["is_admin"] is True


async def test_document_batch_gives_exact_ciphertexts_with_one_audit_entry(
    gateway: Quart, core: CoreServices, officer_gnupg: Path,
) -> None:
    mine = [await make_case(core, "ps-sadar-bazar") for _ in range(3)]
    theirs = await make_case(core, "cell-cyber")
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    listed = await (await client.get("/api/v1/cases", headers=auth(token))).get_json()
    assert [c["id"] for c in listed["cases"]] == mine
    ids = [c["submissions"][0]["documents"][0]["id"] for c in listed["cases"]]
    async with core.sessions() as db:
        other = (await db.scalars(select(Document.id).join(Submission).where(Submission.case_id == theirs))).one()

    async def audit_rows() -> list[AuditEntry]:
        async with core.sessions() as db:
            return list((await db.scalars(select(AuditEntry).order_by(AuditEntry.id))).all())

    before = len(await audit_rows())
    r = await client.post("/api/v1/documents/batch", headers=auth(token), json={"ids": ids[::-1]})
    assert r.status_code == 200, await r.get_data(as_text=True)
    batch = {d["id"]: base64.b64decode(d["ciphertext"]) for d in (await r.get_json())["documents"]}
    assert set(batch) == set(ids)
    for doc_id in ids:  # byte for byte what the single download gives, and readable by the unit
        single = await client.get(f"/api/v1/documents/{doc_id}", headers=auth(token))
        assert batch[doc_id] == await single.get_data()
        assert b"tip for ps-sadar-bazar" in gpg_decrypt(officer_gnupg, batch[doc_id])
    entries = (await audit_rows())[before:]
    assert [e.action for e in entries] == ["download_documents", *["download_document"] * 3]
    assert json.loads(entries[0].details) == {"cases": mine, "documents": sorted(ids)}
    assert (await core.audit.verify()).ok

    # Another unit's document, or one that does not exist: 404 for the whole batch, nothing logged.
    before = len(await audit_rows())
    for bad, missing in (([*ids, other], [other]), ([ids[0], 2**31 - 1], [2**31 - 1])):
        r = await client.post("/api/v1/documents/batch", headers=auth(token), json={"ids": bad})
        assert r.status_code == 404
        answer = await r.get_json()
        assert "no such document" in answer["error"] and answer["missing"] == missing
    # Malformed: empty, too many, out of range, not a list; no token.
    bodies: list[dict[str, object]] = [{"ids": []}, {"ids": list(range(1, 102))}, {"ids": [0]}, {"ids": "1"}, {}]
    for body in bodies:
        r = await client.post("/api/v1/documents/batch", headers=auth(token), json=body)
        assert r.status_code == 400, body
    r = await client.post("/api/v1/documents/batch", json={"ids": ids})
    assert r.status_code == 401
    assert len(await audit_rows()) == before


async def test_document_batch_refuses_a_large_file(gateway: Quart, core: CoreServices) -> None:
    from cpcp.codenames import generate_codename

    login = await core.sources.create(generate_codename())
    unit = await core.cases.unit_by_slug("ps-sadar-bazar")
    async with core.intake.draft(unit) as draft:
        await draft.add_message({"text": "a video"})
        await draft.open_file("video.mp4", "video/mp4")
        await draft.write_file(os.urandom(300 * 1024))  # gpg stores it uncompressed: > 256 KiB
        await draft.close_file()
        await draft.commit(source_id=login.source_id, unit=unit)
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    case = (await (await client.get("/api/v1/cases", headers=auth(token))).get_json())["cases"][0]
    docs = {d["role"]: d for d in case["submissions"][0]["documents"]}
    assert docs["file"]["size"] > 256 * 1024 >= docs["message"]["size"]
    r = await client.post("/api/v1/documents/batch", headers=auth(token),
                          json={"ids": [docs["message"]["id"], docs["file"]["id"]]})
    assert r.status_code == 413
    assert str(docs["file"]["id"]) in (await r.get_json())["error"]
    r = await client.post("/api/v1/documents/batch", headers=auth(token), json={"ids": [docs["message"]["id"]]})
    assert r.status_code == 200


async def test_document_batch_is_bounded_in_bytes(gateway: Quart, core: CoreServices) -> None:
    """What one batch may carry in all (the gateway holds it in memory), checked where the
    limit is applied; the endpoint passes its 4 MiB."""
    from cpcp.casework import BatchTooLarge

    await make_case(core, "ps-sadar-bazar")
    await make_case(core, "ps-sadar-bazar")
    await enrol(core, "officer-a")
    officer = await core.officer_auth.identity("officer-a")
    assert officer is not None
    async with core.sessions() as db:
        docs = {d.id: d.size for d in (await db.scalars(select(Document))).all()}
    total = sum(docs.values())
    paths = await core.casework.document_paths(officer, list(docs), max_size=total, max_total=total)
    assert set(paths) == set(docs)
    with pytest.raises(BatchTooLarge, match="bytes in one batch"):
        await core.casework.document_paths(officer, list(docs), max_size=total, max_total=total - 1)


async def _snapshot(core: CoreServices) -> dict[str, Any]:
    """What a request could change: every row count, the audit head, the case's metadata."""
    from cpcp.models import ApiToken, Case

    async with core.sessions() as db:
        counts = {m.__tablename__: await db.scalar(select(func.count()).select_from(m))
                  for m in (AuditEntry, Reply, ApiToken, Submission, Document)}
        cases = [(c.id, c.status, c.priority, c.assignee_id) for c in (await db.scalars(select(Case))).all()]
    return {"counts": counts, "cases": cases, "store": sorted(p.name for p in core.store.root.rglob("*"))}


async def test_a_body_that_is_not_utf8_is_a_clear_400_on_every_json_route(
    gateway: Quart, core: CoreServices
) -> None:
    case_id = await make_case(core, "ps-sadar-bazar")
    token = await token_for(gateway, "officer-a", await enrol(core, "officer-a"))
    client = gateway.test_client()
    routes = [
        ("POST", "/api/v1/token", {}),
        ("POST", "/api/v1/documents/batch", auth(token)),
        ("PATCH", f"/api/v1/cases/{case_id}", auth(token)),
        ("POST", f"/api/v1/cases/{case_id}/audit", auth(token)),
        ("POST", f"/api/v1/cases/{case_id}/replies", auth(token)),
    ]
    bodies = [b'{"status": "clos\xe9d"}', b"\xff\xfe{\x00}\x00", b'{"handle": "\xc3("}']
    before = await _snapshot(core)
    for method, path, headers in routes:
        for body in bodies:
            r = await client.open(path, method=method, data=body,
                                  headers={**headers, "Content-Type": "application/json"})
            assert r.status_code == 400, (method, path, body)
            assert "UTF-8" in (await r.get_json())["error"], (method, path)
    assert await _snapshot(core) == before
