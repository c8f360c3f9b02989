"""Sealed identities and spam through the gateway's API (Quart's test client), real gpg with the
throwaway keys, a real database: who may ask, who may decide, what the upload must be."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from quart import Quart
from sqlalchemy import select

from cpcp.codenames import generate_codename
from cpcp.models import AuditEntry, DisclosureRequest, SealedIdentity, Submission
from cpcp.services import CoreServices, start_core

from .conftest import FPR, Deployment, gpg_decrypt, gpg_encrypt
from .test_gateway import auth, enrol, make_case, token_for

pytestmark = pytest.mark.custodian


@pytest.fixture
async def gateway(deployment: Deployment, core: CoreServices) -> AsyncIterator[Quart]:
    from journalist_app.gateway import create_app

    app = create_app(deployment.settings, core=core)
    async with app.test_app():
        yield app


async def make_sealed_case(core: CoreServices, unit_slug: str, contact: str) -> tuple[int, int]:
    """A tip with contact details, stored as the source app stores it; (case id, source id)."""
    login = await core.sources.create(generate_codename())
    unit = await core.cases.unit_by_slug(unit_slug)
    async with core.intake.draft(unit, custodians=await core.cases.custodian_fingerprints()) as draft:
        await draft.add_message({"text": "tip"})
        await draft.add_contact(contact)
        await draft.commit(source_id=login.source_id, unit=unit)
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None and case.identity_sealed
    return case.id, login.source_id


async def actions(core: CoreServices) -> list[str]:
    async with core.sessions() as db:
        return list((await db.scalars(select(AuditEntry.action).order_by(AuditEntry.id))).all())


async def test_disclosure_needs_a_reason_a_custodian_and_the_requesters_key(
    gateway: Quart, core: CoreServices, deployment: Deployment, officer_gnupg: Path, custodian_gnupg: Path
) -> None:
    canary = f"CONTACT-{secrets.token_hex(8)}"
    case_id, source_id = await make_sealed_case(core, "ps-sadar-bazar", canary)
    plain_case = await make_case(core, "ps-sadar-bazar")
    client = gateway.test_client()
    a = auth(await token_for(gateway, "officer-a", await enrol(core, "officer-a")))
    b = auth(await token_for(gateway, "officer-b", await enrol(core, "officer-b")))
    sp = auth(await token_for(gateway, "sp", await enrol(core, "sp")))

    case = await (await client.get(f"/api/v1/cases/{case_id}", headers=a)).get_json()
    assert case["identity_sealed"] is True
    assert all(d["role"] == "message" for s in case["submissions"] for d in s["documents"])
    url = f"/api/v1/cases/{case_id}/disclosure-requests"
    # Refused, and nothing recorded: no reason, another unit's case, a case without details.
    r = await client.post(url, headers=a, json={"reason": "   "})
    assert r.status_code == 422 and (await r.get_json())["error"] == "a reason is required"
    assert (await client.post(url, headers=a, json={})).status_code == 400
    assert (await client.post(url, headers=b, json={"reason": "curious"})).status_code == 404
    r = await client.post(f"/api/v1/cases/{plain_case}/disclosure-requests", headers=a, json={"reason": "x"})
    assert r.status_code == 404
    assert (await (await client.get("/api/v1/disclosure-requests", headers=sp)).get_json())["requests"] == []

    r = await client.post(url, headers=a, json={"reason": "Witness to a liquor racket; need a statement"})
    assert r.status_code == 201
    req = await r.get_json()
    assert req["status"] == "pending" and req["requester"]["handle"] == "officer-a"
    assert (await client.post(url, headers=a, json={"reason": "again"})).status_code == 409
    rid = req["id"]
    # Not a custodian: may not decide, may not have the sealed object, sees only own requests.
    for who in (a, b):
        assert (await client.post(f"/api/v1/disclosure-requests/{rid}/approve", headers=who)).status_code == 403
        assert (await client.post(f"/api/v1/disclosure-requests/{rid}/refuse", headers=who)).status_code == 403
        assert (await client.get(f"/api/v1/disclosure-requests/{rid}/sealed", headers=who)).status_code == 403
    assert (await (await client.get("/api/v1/disclosure-requests", headers=b)).get_json())["requests"] == []
    assert (await client.get(f"/api/v1/disclosure-requests/{rid}/sealed", headers=sp)).status_code == 409
    listed = (await (await client.get("/api/v1/disclosure-requests", headers=sp)).get_json())["requests"]
    assert [x["id"] for x in listed] == [rid] and listed[0]["reason"].startswith("Witness")

    r = await client.post(f"/api/v1/disclosure-requests/{rid}/approve", headers=sp)
    assert r.status_code == 200 and (await r.get_json())["status"] == "approved"
    assert (await client.post(f"/api/v1/disclosure-requests/{rid}/refuse", headers=sp)).status_code == 409
    sealed = await client.get(f"/api/v1/disclosure-requests/{rid}/sealed", headers=sp)
    assert sealed.status_code == 200
    details = gpg_decrypt(custodian_gnupg, await sealed.get_data())  # at the custodian's desk
    assert canary in json.loads(details)["contact"]
    # The requester's key, from the gateway (a custodian may have any officer's key).
    for handle in ("officer-a", "officer-b"):
        key = await client.get(f"/api/v1/officers/{FPR[handle]}/key", headers=sp)
        assert key.status_code == 200
        subprocess.run(["gpg", "--homedir", str(custodian_gnupg), "--batch", "--import"],
                       input=(await key.get_json())["armored"].encode(), check=True, capture_output=True)

    def to(recipients: list[str]) -> str:
        return gpg_encrypt(custodian_gnupg, details, recipients, armor=True).decode()

    upload = f"/api/v1/disclosure-requests/{rid}/disclosure"
    for body, message in [
        ("contact: plain text", "not an encrypted OpenPGP message"),
        (to([FPR["officer-b"]]), "not encrypted to the requesting officer's key"),
        (to([FPR["officer-a"], FPR["officer-b"]]), "other than the requester's and the custodians'"),
    ]:
        r = await client.put(upload, headers=sp, json={"armored": body})
        assert r.status_code == 422 and message in (await r.get_json())["error"]
    assert (await client.put(upload, headers=a, json={"armored": to([FPR["officer-a"]])})).status_code == 403
    assert (await client.get(upload, headers=a)).status_code == 409  # nothing disclosed yet
    r = await client.put(upload, headers=sp, json={"armored": to([FPR["officer-a"], FPR["custodian"]])})
    assert r.status_code == 200 and (await r.get_json())["status"] == "disclosed"
    assert (await client.put(upload, headers=sp, json={"armored": to([FPR["officer-a"]])})).status_code == 409

    # Only the requester reads it; officer-b (another unit) cannot, even knowing the id.
    assert (await client.get(upload, headers=b)).status_code == 404
    got = await client.get(upload, headers=a)
    assert got.status_code == 200 and canary.encode() in gpg_decrypt(officer_gnupg, await got.get_data())
    view = await core.cases.case_of_source(source_id)
    assert view is not None and view.identity_disclosed_on == dt.datetime.now(dt.UTC).date()

    assert [x for x in await actions(core) if x.startswith("disclosure")] == [
        "disclosure_request", "disclosure_approve", "disclosure_download_sealed",
        "disclosure_upload", "disclosure_view"]
    assert (await core.audit.verify()).ok
    for path in deployment.settings.data_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path

    # The start-up sweep of unreferenced objects keeps the sealed and the disclosed ciphertexts.
    async with core.sessions() as db:
        kept = [core.store.path((await db.scalars(select(SealedIdentity.object_name))).one()),
                core.store.path((await db.scalars(select(DisclosureRequest.object_name))).one() or "")]
    for path in kept:
        os.utime(path, (0, 0))  # old enough to be swept if nothing referred to it
    core.started = False
    await start_core(core)
    assert all(path.exists() for path in kept)


async def test_a_refused_request_discloses_nothing(gateway: Quart, core: CoreServices) -> None:
    case_id, source_id = await make_sealed_case(core, "ps-sadar-bazar", "98 1111 2222")
    client = gateway.test_client()
    a = auth(await token_for(gateway, "officer-a", await enrol(core, "officer-a")))
    sp = auth(await token_for(gateway, "sp", await enrol(core, "sp")))
    r = await client.post(f"/api/v1/cases/{case_id}/disclosure-requests", headers=a, json={"reason": "why not"})
    rid = (await r.get_json())["id"]
    r = await client.post(f"/api/v1/disclosure-requests/{rid}/refuse", headers=sp)
    assert r.status_code == 200 and (await r.get_json())["status"] == "refused"
    assert (await client.get(f"/api/v1/disclosure-requests/{rid}/sealed", headers=sp)).status_code == 409
    assert (await client.get(f"/api/v1/disclosure-requests/{rid}/disclosure", headers=a)).status_code == 409
    mine = (await (await client.get("/api/v1/disclosure-requests", headers=a)).get_json())["requests"]
    assert [x["status"] for x in mine] == ["refused"]
    view = await core.cases.case_of_source(source_id)
    assert view is not None and view.identity_sealed and view.identity_disclosed_on is None
    assert "disclosure_refuse" in await actions(core)


async def test_spam_is_audited_reversible_and_silences_alerts(gateway: Quart, core: CoreServices) -> None:
    case_id, source_id = await make_sealed_case(core, "ps-sadar-bazar", "x")
    client = gateway.test_client()
    a = auth(await token_for(gateway, "officer-a", await enrol(core, "officer-a")))
    b = auth(await token_for(gateway, "officer-b", await enrol(core, "officer-b")))
    assert (await client.patch(f"/api/v1/cases/{case_id}", headers=b, json={"spam": True})).status_code == 404
    r = await client.patch(f"/api/v1/cases/{case_id}", headers=a, json={"spam": True})
    assert r.status_code == 200 and (await r.get_json())["spam"] is True
    unit = await core.cases.unit_by_slug("ps-sadar-bazar")

    async def follow_up() -> bool:
        async with core.intake.draft(unit) as draft:
            await draft.add_message({"text": "more"})
            submission_id = await draft.commit(source_id=source_id, unit=unit)
        async with core.sessions() as db:
            submission = await db.get(Submission, submission_id)
            assert submission is not None
            return submission.raises_alert

    assert await follow_up() is False  # kept, but no alert
    r = await client.patch(f"/api/v1/cases/{case_id}", headers=a, json={"spam": False})
    assert (await r.get_json())["spam"] is False
    assert await follow_up() is True
    case = await (await client.get(f"/api/v1/cases/{case_id}", headers=a)).get_json()
    assert [s["raises_alert"] for s in case["submissions"]] == [True, False, True]
    async with core.sessions() as db:
        entries = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "update_case"))).all()
    assert [json.loads(e.details)["spam"] for e in entries] == [True, False]
