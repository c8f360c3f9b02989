"""The source side of issue 8: contact details sealed to the custodians, the honeypot field and
the per-codename limits, through Quart's test client with CSRF on, real gpg and a real DB."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from quart import Quart
from sqlalchemy import func, select

from cpcp.models import Document, SealedIdentity, Submission
from cpcp.services import CoreServices, build_core

from .conftest import FPR, Deployment, gpg_decrypt
from .test_source_app import assert_clean_page, counts, new_source, post_tip, store_files

TIP = [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "अवैध शराब")]


def _gpg_fails(home: Path, data: bytes) -> bool:
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt"],
                          input=data, capture_output=True, check=False)
    return done.returncode != 0


@pytest.mark.custodian
async def test_contact_details_are_sealed_to_the_custodian_only(
    app: Quart, core: CoreServices, deployment: Deployment, officer_gnupg: Path, custodian_gnupg: Path
) -> None:
    client = app.test_client()
    await new_source(client)
    page = await (await client.get("/submit")).get_data(as_text=True)
    assert 'name="contact"' in page and "संपर्क" in page  # offered, Hindi first
    canary = f"+91-98{secrets.randbelow(10**8):08d}"
    r = await post_tip(client, [*TIP, ("contact", f"फ़ोन {canary}")])
    assert r.status_code == 303
    async with core.sessions() as db:
        sealed = (await db.scalars(select(SealedIdentity))).one()
        docs = (await db.scalars(select(Document))).all()
    ciphertext = core.store.read(sealed.object_name)
    # Only the custodian's key opens it: not the unit's officer, not the oversight key.
    assert canary in json.loads(gpg_decrypt(custodian_gnupg, ciphertext))["contact"]
    assert _gpg_fails(officer_gnupg, ciphertext)
    assert core.source_keys.message_recipients(ciphertext) == core.officer_keys.encryption_key_ids(FPR["custodian"])
    # The tip the unit reads does not carry it; nothing on the server holds it in clear.
    assert [d.role.value for d in docs] == ["message"]
    assert canary not in gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name)).decode()
    for path in deployment.settings.data_dir.rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    case_page = await (await client.get("/case")).get_data(as_text=True)
    assert "सील" in case_page and canary not in case_page
    assert 'name="contact"' not in case_page  # given once, with the first tip


async def test_without_a_custodian_contact_details_are_not_offered_and_refused(
    app: Quart, core: CoreServices, deployment: Deployment
) -> None:
    client = app.test_client()
    await client.get("/lang/en?next=/")
    await new_source(client)
    page = await (await client.get("/submit")).get_data(as_text=True)
    assert 'name="contact"' not in page and "This site does not take contact details" in page
    before = await counts(core)
    r = await post_tip(client, [*TIP, ("contact", "98 7654 3210")])
    assert r.status_code == 400
    assert "does not accept contact details. Nothing was sent." in await r.get_data(as_text=True)
    assert await counts(core) == before and store_files(deployment) == []


async def test_honeypot_is_hidden_from_people_and_refuses_bots(
    app: Quart, core: CoreServices, deployment: Deployment
) -> None:
    client = app.test_client()
    await client.get("/lang/en?next=/")
    await new_source(client)
    page = await (await client.get("/submit")).get_data(as_text=True)
    assert_clean_page(page)
    trap = re.search(r'<div class="hp" aria-hidden="true">(.*?)</div>', page, re.DOTALL)
    assert trap, "no honeypot"
    assert "Leave this field empty" in trap.group(1)
    field = re.search(r'<input[^>]*name="website"[^>]*>', trap.group(1))
    assert field and 'tabindex="-1"' in field.group(0) and 'autocomplete="off"' in field.group(0)
    css = (Path(__file__).parent.parent / "source_app/static/cpcp.css").read_text()
    assert re.search(r"\.hp \{[^}]*left: -10000px", css)
    before = await counts(core)
    r = await post_tip(client, [*TIP[:2], ("website", "http://spam.example/"), ("text", "buy now"),
                                ("files", "a.bin", b"x" * 5000, "application/octet-stream")])
    assert r.status_code == 400
    assert "was filled in, as automatic programs do. Nothing was sent." in await r.get_data(as_text=True)
    assert await counts(core) == before and store_files(deployment) == []
    # A person leaves it empty and is heard; the follow-up form has the trap too.
    assert (await post_tip(client, [*TIP, ("website", "")])).status_code == 303
    case_page = await (await client.get("/case")).get_data(as_text=True)
    assert 'name="website"' in case_page
    r = await post_tip(client, [("website", "x"), ("text", "more")], page="/case")
    assert r.status_code == 400 and (await counts(core))["submissions"] == 1


async def test_per_codename_limits_answer_429_with_when_to_come_back(deployment: Deployment) -> None:
    from source_app import create_app

    settings = dataclasses.replace(deployment.settings, source=dataclasses.replace(
        deployment.settings.source, submissions_per_hour=2, files_per_hour=1))
    core = build_core(settings)
    app = create_app(settings, core=core)
    try:
        async with app.test_app():
            client = app.test_client()
            await client.get("/lang/en?next=/")
            await new_source(client)
            assert (await post_tip(client, [*TIP, ("files", "a.txt", b"one", "text/plain")])).status_code == 303
            # Past the hour's files: refused whole, with when to come back.
            before, files_before = await counts(core), store_files(deployment)
            r = await post_tip(client, [("text", "two"), ("files", "b.txt", b"two", "text/plain")], page="/case")
            html = await r.get_data(as_text=True)
            wait = re.search(r"Please come back in (\d+) minutes", html)
            assert r.status_code == 429 and wait and 58 <= int(wait.group(1)) <= 60, html
            assert int(r.headers["Retry-After"]) == int(wait.group(1)) * 60
            assert await counts(core) == before and store_files(deployment) == files_before
            # Text only still fits; then the hour's sendings are spent.
            assert (await post_tip(client, [("text", "second")], page="/case")).status_code == 303
            r = await post_tip(client, [("text", "third")], page="/case")
            assert r.status_code == 429 and "Nothing was sent" in await r.get_data(as_text=True)
            async with core.sessions() as db:
                assert await db.scalar(select(func.count()).select_from(Submission)) == 2
            # Another codename has its own budget.
            other = app.test_client()
            await new_source(other)
            assert (await post_tip(other, TIP)).status_code == 303
    finally:
        await core.close()
