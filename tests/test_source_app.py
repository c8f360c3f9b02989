"""The source app through Quart's test client, CSRF on, with real gpg and a real database."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.testing import QuartClient
from sqlalchemy import func, select

from cpcp.casework import CaseChanges
from cpcp.errors import DecryptionFailed
from cpcp.models import Case, CaseStatus, Document, Reply, Source, Submission
from cpcp.services import CoreServices

from .conftest import FPR, Deployment, gpg_decrypt, gpg_encrypt
from .helpers import codename_of, csrf, multipart

PAGES_ANON = ["/", "/generate", "/login", "/no-such-page"]


async def counts(core: CoreServices) -> dict[str, int]:
    async with core.sessions() as db:
        return {
            model.__tablename__: int(await db.scalar(select(func.count()).select_from(model)) or 0)
            for model in (Source, Case, Submission, Document, Reply)
        }


def store_files(deployment: Deployment) -> list[Path]:
    return [p for p in deployment.settings.store_dir.rglob("*") if p.is_file()]


async def new_source(client: QuartClient) -> str:
    page = await (await client.get("/generate")).get_data(as_text=True)
    codename = codename_of(page)
    response = await client.post("/create", form={"csrf_token": csrf(page)})
    assert response.status_code == 303 and response.headers["Location"].endswith("/submit")
    return codename


async def post_tip(client: QuartClient, parts: list[Any], page: str = "/submit") -> Any:
    html = await (await client.get(page)).get_data(as_text=True)
    body, ctype = multipart([("csrf_token", csrf(html)), *parts])
    return await client.post("/submit", data=body, headers={"Content-Type": ctype})


def assert_clean_page(html: str) -> None:
    """No script, no inline style or handler, nothing loaded from elsewhere."""
    assert "<script" not in html.lower()
    assert not re.search(r"\sstyle=", html) and "<style" not in html.lower()
    assert not re.search(r"\son[a-z]+=", html)
    assert not re.search(r'(src|href|action)="(https?:)?//', html)


@pytest.mark.parametrize("lang", ["hi", "en"])
async def test_every_page_renders_in_both_languages_without_script(app: Quart, lang: str, core: CoreServices) -> None:
    client = app.test_client()
    await client.get(f"/lang/{lang}?next=/")
    for path in PAGES_ANON:
        response = await client.get(path)
        html = await response.get_data(as_text=True)
        assert f'<html lang="{lang}">' in html
        assert "112" in html
        assert_clean_page(html)
    await new_source(client)
    submit = await (await client.get("/submit")).get_data(as_text=True)
    assert_clean_page(submit)
    expected = {"hi": "थाना सदर बाजार", "en": "Sadar Bazar Police Station"}[lang]
    assert expected in submit
    response = await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "hello")])
    assert response.status_code == 303
    case_html = await (await client.get("/case")).get_data(as_text=True)
    assert_clean_page(case_html)
    assert {"hi": "प्राप्त", "en": "Received"}[lang] in case_html
    out = await client.post("/logout", form={"csrf_token": csrf(case_html)})
    assert_clean_page(await out.get_data(as_text=True))
    if lang == "hi":
        assert "नागरिक पुलिस सहयोग पोर्टल" in case_html


async def test_security_headers(app: Quart) -> None:
    response = await app.test_client().get("/")
    h = response.headers
    assert "unsafe-inline" not in h["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
    assert "default-src 'none'" in h["Content-Security-Policy"]
    assert h["Referrer-Policy"] == "no-referrer"
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Cache-Control"] == "no-store"
    assert "Server" not in h


async def test_session_cookie_is_httponly_strict_and_holds_no_secret(app: Quart) -> None:
    client = app.test_client()
    response = await client.get("/generate")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) >= 40 and "." not in value  # a random id, not signed data


async def test_tip_with_files_is_encrypted_to_unit_and_oversight(
    app: Quart, core: CoreServices, deployment: Deployment, officer_gnupg: Path
) -> None:
    client = app.test_client()
    await new_source(client)
    photo = bytes(range(256)) * 400
    response = await post_tip(client, [
        ("unit", "cell-cyber"), ("kind", "information"), ("category", "suspicious_vehicle"),
        ("place", "रेलवे स्टेशन के पास"), ("area", "ps-sadar-bazar"), ("when", "2026-01-08T18:30"),
        ("text", "सफेद गाड़ी UP27 AB 1234"),
        ("files", "गाड़ी.jpg", photo, "image/jpeg"), ("files", "", b"", "application/octet-stream"),
    ])
    assert response.status_code == 303
    assert (await counts(core))["documents"] == 2
    async with core.sessions() as db:
        docs = (await db.scalars(select(Document).order_by(Document.id))).all()
    message = json.loads(gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name)))
    assert message["text"] == "सफेद गाड़ी UP27 AB 1234"
    assert message["unit"] == "cell-cyber" and message["category"] == "suspicious_vehicle"
    assert message["when"] == "2026-01-08T18:30" and message["police_station_area"] == "ps-sadar-bazar"
    assert message["files"] == [{"name": "गाड़ी.jpg", "content_type": "image/jpeg", "size": len(photo)}]
    assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == photo
    listing = _recipients(officer_gnupg, core.store.path(docs[1].object_name))
    assert "officer-b@test.invalid" in listing and "oversight@test.invalid" in listing
    assert "officer-a@test.invalid" not in listing  # not a cyber cell officer


def _recipients(home: Path, path: Path) -> str:
    import subprocess

    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--list-packets", str(path)],
                         capture_output=True, text=True, check=False)
    return out.stdout + out.stderr


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        ([("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "   ")], 400),  # empty tip
        ([("unit", "no-such-unit"), ("kind", "information"), ("text", "x")], 400),  # unknown unit
        ([("unit", "ps-sadar-bazar"), ("kind", "gossip"), ("text", "x")], 400),  # unknown kind
        ([("unit", "ps-sadar-bazar"), ("kind", "information"), ("when", "yesterday"), ("text", "x")], 400),
        ([("unit", "no-such-unit"), ("kind", "information"), ("text", "x"),
          ("files", "a.bin", b"data", "application/octet-stream")], 400),  # bad unit, with a file
        ([("unit", "ps-sadar-bazar"), ("kind", "information"),
          ("files", "empty.jpg", b"", "image/jpeg")], 400),  # an empty file and no text
        ([("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", " "),
          ("files", "a.jpg", b"", "image/jpeg"), ("files", "b.jpg", b"", "image/jpeg")], 400),
    ],
)
async def test_bad_tips_get_a_clear_page_and_store_nothing(
    app: Quart, core: CoreServices, deployment: Deployment, parts: list[Any], status: int
) -> None:
    client = app.test_client()
    await new_source(client)
    before = await counts(core)
    response = await post_tip(client, parts)
    assert response.status_code == status
    html = await response.get_data(as_text=True)
    assert 'class="error"' in html and "<form" in html  # the form comes back, with the answers
    assert await counts(core) == before
    assert store_files(deployment) == []


async def test_missing_or_wrong_csrf_is_refused_everywhere(app: Quart, core: CoreServices, deployment: Deployment) -> None:
    client = app.test_client()
    await client.get("/generate")
    assert (await client.post("/create", form={})).status_code == 400
    assert (await client.post("/create", form={"csrf_token": "forged"})).status_code == 400
    assert (await client.post("/login", form={"codename": "a b c d e f g"})).status_code == 400
    await new_source(client)
    body, ctype = multipart([("csrf_token", "forged"), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "x"), ("files", "a.txt", b"secret file", "text/plain")])
    response = await client.post("/submit", data=body, headers={"Content-Type": ctype})
    assert response.status_code == 400
    assert (await counts(core))["submissions"] == 0 and store_files(deployment) == []


async def test_malformed_and_oversized_uploads(app: Quart, core: CoreServices, deployment: Deployment) -> None:
    client = app.test_client()
    await new_source(client)
    html = await (await client.get("/submit")).get_data(as_text=True)
    token = csrf(html)
    body, ctype = multipart([("csrf_token", token), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "x"), ("files", "a.bin", b"A" * 5000, "application/octet-stream")])
    truncated = body[: len(body) - 300]
    response = await client.post("/submit", data=truncated, headers={"Content-Type": ctype})
    assert response.status_code == 400
    response = await client.post("/submit", data=b"text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    # Announced too large: refused before reading.
    response = await client.post("/submit", data=b"x", headers={"Content-Type": ctype, "Content-Length": str(10**10)})
    assert response.status_code == 413
    # Actually too large while streaming.
    big = deployment.settings.max_upload_bytes + 1
    body, ctype = multipart([("csrf_token", token), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "x"), ("files", "big.bin", b"\0" * big, "application/octet-stream")])
    response = await client.post("/submit", data=body, headers={"Content-Type": ctype})
    assert response.status_code == 413
    assert "Nothing was sent" in await response.get_data(as_text=True) or response.status_code == 413
    assert (await counts(core))["submissions"] == 0 and store_files(deployment) == []
    # Exactly the limit in files, and a long text besides: accepted (the limit is the files').
    body, ctype = multipart([("csrf_token", token), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "सूचना " * 3000),
                             ("files", "a.bin", b"\1" * (big - 1 - 1000), "application/octet-stream"),
                             ("files", "b.bin", b"\2" * 1000, "application/octet-stream")])
    response = await client.post("/submit", data=body, headers={"Content-Type": ctype})
    assert response.status_code == 303
    assert (await counts(core))["submissions"] == 1


async def test_multipart_is_refused_outside_the_submit_view(app: Quart) -> None:
    client = app.test_client()
    body, ctype = multipart([("codename", "x"), ("files", "a", b"payload", "text/plain")])
    response = await client.post("/login", data=body, headers={"Content-Type": ctype})
    assert response.status_code == 415


async def test_login_forgives_typing_and_wrong_codenames_cost_time(app: Quart, core: CoreServices) -> None:
    client = app.test_client()
    codename = await new_source(client)
    await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "complaint"), ("text", "x")])
    other = app.test_client()
    page = await (await other.get("/login")).get_data(as_text=True)
    started = time.monotonic()
    wrong = await other.post("/login", form={"csrf_token": csrf(page), "codename": "abacus " * 7})
    assert time.monotonic() - started >= core.settings.source.login_failure_delay  # costs time
    assert wrong.status_code == 403
    assert "not known" in await wrong.get_data(as_text=True) or "नहीं" in await wrong.get_data(as_text=True)
    messy = "  " + codename.upper().replace(" ", "   ") + " "
    ok = await other.post("/login", form={"csrf_token": csrf(page), "codename": messy})
    assert ok.status_code == 303 and ok.headers["Location"].endswith("/case")
    assert (await other.get("/case")).status_code == 200


async def test_a_caller_is_throttled_after_its_wrong_codenames_and_garbage(deployment: Deployment) -> None:
    """Connections without tor's PROXY line share the "direct" caller; garbage counts too."""
    from cpcp.services import build_core
    from source_app import create_app

    settings = dataclasses.replace(
        deployment.settings,
        source=dataclasses.replace(deployment.settings.source, login_circuit_burst=3, login_failure_delay=0.0),
    )
    core = build_core(settings)
    app = create_app(settings, core=core)
    async with app.test_app():
        client = app.test_client()
        page = await (await client.get("/login")).get_data(as_text=True)
        statuses = []
        for typed in ["abacus " * 7, "x", "abacus " * 7, "abacus " * 7, "x"]:
            r = await client.post("/login", form={"csrf_token": csrf(page), "codename": typed})
            statuses.append(r.status_code)
        assert statuses[:3] == [403, 403, 403]
        assert statuses[3:] == [429, 429]
        assert int(r.headers["Retry-After"]) >= 1
    await core.close()


async def test_replies_and_status_reach_the_source_who_can_delete_them(
    app: Quart, core: CoreServices, deployment: Deployment, officer_gnupg: Path, tmp_path: Path
) -> None:
    client = app.test_client()
    await new_source(client)
    await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "tip")])
    async with core.sessions() as db:
        case = (await db.scalars(select(Case))).one()
        source = await db.get(Source, case.source_id)
        assert source is not None
    # The officer's desk: encrypt to the source's public key and the unit's key, with stock gpg.
    source_pub = core.source_keys.export_public_key(source.reply_key_fingerprint)
    import subprocess

    subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"], input=source_pub.encode(),
                   check=True, capture_output=True)
    reply_text = "धन्यवाद। कार्रवाई की गई।"
    ciphertext = gpg_encrypt(officer_gnupg, reply_text.encode(), [source.reply_key_fingerprint, FPR["officer-a"]])
    officer = await core.officer_auth.identity("officer-a")
    reply_id = await core.casework.add_reply(officer, case.id, ciphertext)
    await core.casework.update_case(officer, case.id, CaseChanges(status=CaseStatus.ACTION_TAKEN))
    # Without the codename the server cannot read the reply: gpg needs the source's passphrase.
    with pytest.raises(DecryptionFailed):
        core.source_keys.decrypt_bytes(ciphertext, passphrase="wrong")
    html = await (await client.get("/case")).get_data(as_text=True)
    assert reply_text in html and "कार्रवाई की गई" in html
    response = await client.post(f"/replies/{reply_id}/delete", form={"csrf_token": csrf(html)})
    assert response.status_code == 303
    html = await (await client.get("/case")).get_data(as_text=True)
    assert reply_text not in html
    async with core.sessions() as db:
        reply = await db.get(Reply, reply_id)
        assert reply is not None and reply.deleted_by_source and reply.object_name is None
    again = await client.post(f"/replies/{reply_id}/delete", form={"csrf_token": csrf(html)})
    assert again.status_code == 404


async def test_follow_up_goes_to_the_same_case(app: Quart, core: CoreServices, officer_gnupg: Path) -> None:
    client = app.test_client()
    await new_source(client)
    await post_tip(client, [("unit", "control-room"), ("kind", "event_feedback"), ("text", "procession route")])
    response = await post_tip(client, [("text", "more"), ("files", "b.txt", b"more data", "text/plain")], page="/case")
    assert response.status_code == 303
    c = await counts(core)
    assert c["cases"] == 1 and c["submissions"] == 2 and c["documents"] == 3


async def test_idle_session_ends(deployment: Deployment) -> None:
    from cpcp.services import build_core
    from source_app import create_app

    settings = dataclasses.replace(
        deployment.settings, source=dataclasses.replace(deployment.settings.source, session_idle_timeout=1)
    )
    core = build_core(settings)
    app = create_app(settings, core=core)
    async with app.test_app():
        client = app.test_client()
        await new_source(client)
        assert (await client.get("/submit")).status_code == 200
        await asyncio.sleep(1.3)
        response = await client.get("/submit")
        assert response.status_code == 303 and response.headers["Location"].endswith("/login")
    await core.close()


async def test_event_feedback_names_the_event(app: Quart, core: CoreServices, officer_gnupg: Path) -> None:
    import datetime as dt

    from cpcp.models import Event

    async with core.sessions.begin() as db:
        db.add(Event(title_en="Ram Navami procession", title_hi="रामनवमी शोभायात्रा", place="Kotwali",
                     starts_on=dt.date(2026, 3, 26), ends_on=dt.date(2026, 3, 26), open=True))
        db.add(Event(title_en="Closed fair", title_hi="बंद मेला", place="", starts_on=dt.date(2025, 1, 1),
                     ends_on=dt.date(2025, 1, 2), open=False))
    client = app.test_client()
    await new_source(client)
    page = await (await client.get("/submit")).get_data(as_text=True)
    assert "रामनवमी शोभायात्रा" in page and "बंद मेला" not in page
    event_id = re.search(r'<option value="(\d+)"[^>]*>रामनवमी', page).group(1)  # type: ignore[union-attr]
    r = await post_tip(client, [("unit", "control-room"), ("kind", "event_feedback"), ("event", event_id),
                                ("text", "route blocked near the mosque")])
    assert r.status_code == 303
    async with core.sessions() as db:
        doc = (await db.scalars(select(Document))).one()
    message = json.loads(gpg_decrypt(officer_gnupg, core.store.read(doc.object_name)))
    assert message["kind"] == "event_feedback" and message["event"]["title_en"] == "Ram Navami procession"


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example/",
                                    "javascript:alert(1)", "/ok\r\nSet-Cookie: x=1"])
async def test_language_link_never_redirects_off_site(app: Quart, target: str) -> None:
    response = await app.test_client().get("/lang/en", query_string={"next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/"


async def test_language_link_keeps_the_page(app: Quart) -> None:
    response = await app.test_client().get("/lang/en", query_string={"next": "/login"})
    assert response.headers["Location"] == "/login" and "cpcp_lang=en" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(("lang", "says"), [("en", "empty (0 bytes)"), ("hi", "खाली (0 बाइट)")])
async def test_an_empty_file_without_text_is_refused_with_a_clear_message(
    app: Quart, core: CoreServices, deployment: Deployment, lang: str, says: str
) -> None:
    client = app.test_client()
    await client.get(f"/lang/{lang}?next=/")
    await new_source(client)
    before = await counts(core)
    response = await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"),
                                       ("files", "IMG_0001.jpg", b"", "image/jpeg")])
    assert response.status_code == 400
    assert says in await response.get_data(as_text=True)
    assert await counts(core) == before and store_files(deployment) == []
    # The follow-up form of an existing case refuses it the same way.
    await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "first")])
    before = await counts(core)
    response = await post_tip(client, [("files", "IMG_0002.jpg", b"", "image/jpeg")], page="/case")
    assert response.status_code == 400 and says in await response.get_data(as_text=True)
    assert await counts(core) == before


async def login_as(app: Quart, typed: str, lang: str = "hi") -> Any:
    """A new browser logs in with what the source typed; the response to the login POST."""
    client = app.test_client()
    await client.get(f"/lang/{lang}?next=/")
    page = await (await client.get("/login")).get_data(as_text=True)
    return await client.post("/login", form={"csrf_token": csrf(page), "codename": typed})


@pytest.mark.parametrize("lang", ["hi", "en"])
async def test_a_digit_codename_is_offered_and_logs_in_however_it_is_typed(
    app: Quart, core: CoreServices, lang: str
) -> None:
    client = app.test_client()
    await client.get(f"/lang/{lang}?next=/")
    words_page = await (await client.get("/generate")).get_data(as_text=True)
    assert 'name="kind" value="digits"' in words_page  # the second button, no script
    assert {"hi": "अंग्रेज़ी शब्दों की जगह अंक", "en": "Digits instead of English words"}[lang] in words_page
    page = await (await client.get("/generate", query_string={"kind": "digits"})).get_data(as_text=True)
    assert_clean_page(page)
    codename = codename_of(page)
    assert re.fullmatch(r"\d{4} \d{4} \d{4} \d{4}", codename)
    devanagari = codename.translate(str.maketrans("0123456789", "०१२३४५६७८९"))
    assert (devanagari in page.replace("</span> <span>", " ")) == (lang == "hi")
    assert 'href="/generate?kind=digits"' in page  # "a different codename" stays digits
    r = await client.post("/create", form={"csrf_token": csrf(page)})
    assert r.status_code == 303 and r.headers["Location"].endswith("/submit")
    await post_tip(client, [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "digits")])
    typings = [codename, codename.replace(" ", "-"), codename.replace(" ", ""), devanagari,
               f" {devanagari[:9]}-{codename[10:]} ".replace(" ", "  ")]
    for typed in typings:
        r = await login_as(app, typed)
        assert r.status_code == 303 and r.headers["Location"].endswith("/case"), typed
    wrong = codename[:-1] + str((int(codename[-1]) + 1) % 10)
    r = await login_as(app, wrong, lang)
    assert r.status_code == 403
    assert {"hi": "हर शब्द या अंक", "en": "every word or digit"}[lang] in await r.get_data(as_text=True)


async def test_word_codenames_with_hyphenated_words_log_in_with_punctuation_between_words(
    app: Quart, core: CoreServices
) -> None:
    from cpcp.codenames import normalize_codename

    codename = "t-shirt drop-down abacus felt-tip zoom yo-yo shirt"
    await core.sources.create(normalize_codename(codename))
    typings = [
        codename,
        "T-Shirt, Drop-Down; abacus. felt-tip! zoom? yo-yo: shirt",
        "t-shirt-drop-down-abacus-felt-tip-zoom-yo-yo-shirt",
        "t‐shirt / drop–down / abacus / felt—tip / zoom / yo‑yo / shirt",
    ]
    for typed in typings:
        r = await login_as(app, typed)
        assert r.status_code == 303 and r.headers["Location"].endswith("/case"), typed
    r = await login_as(app, "t-shirt drop down abacus felt-tip zoom yo-yo shirt")  # "drop" is no word
    assert r.status_code == 403
