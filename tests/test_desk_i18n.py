"""The desk in Hindi and English, its times in the deployment's zone, the metadata warning next
to each file on the case page, and the response-target fields of a newer gateway.

The catalogue tests read the desk's own .po files and a fresh extraction; the page tests run the
real desk (real gpg, real cache) and, for the photo, a real gateway process and database."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pyotp
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from quart import Quart
from quart.typing import TestClientProtocol as DeskClient

from cpcp.services import CoreServices
from journalist_app.desk import create_app, serve, timefmt
from journalist_app.desk.errors import ConfigError
from journalist_app.desk.i18n import LANG_COOKIE, load_translations
from journalist_app.desk.inbox import iso_week
from journalist_app.desk.pages import TOKEN
from journalist_app.desk.settings import load_desk_settings
from journalist_app.desk.wire import Case

from .conftest import ROOT
from .servers import write_desk_config
from .test_desk import (
    browser,
    desk_app,
    desk_login,
    desk_settings,
    desk_sync,
    gateway_server,
    jpeg_with_gps,
    make_tip,
    totp,
)

FIXTURES = (browser, desk_app, desk_settings, gateway_server, totp)  # used by name below
DESK = ROOT / "journalist_app" / "desk"
CATALOGS = DESK / "translations"
KEYWORDS: dict[str, Any] = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]")
HOST = {"Host": "127.0.0.1:8090"}
# The known answer: 03:15 UTC is 08:45 in India (UTC+05:30).
KNOWN = dt.datetime(2026, 12, 2, 3, 15, tzinfo=dt.UTC)


# --- catalogues ---------------------------------------------------------------------------


def extracted() -> set[str | tuple[str, str]]:
    """Every message the desk's code and templates use, as a fresh extraction finds them."""
    found: set[str | tuple[str, str]] = set()
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(DESK), method_map=method_map, keywords=KEYWORDS
    ):
        found.add(message if isinstance(message, str) else (message[0], message[1]))
    return found


def catalog(name: str) -> Any:
    path = CATALOGS / "messages.pot" if name == "pot" else CATALOGS / name / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as fh:
        return read_po(fh, locale=None if name == "pot" else name)


def test_the_template_is_what_a_fresh_extraction_finds() -> None:
    ids = {m.id for m in catalog("pot") if m.id}
    assert ids == extracted(), "stale messages.pot: run scripts/update-catalogs journalist_app/desk"


@pytest.mark.parametrize("locale", ["hi", "en"])
def test_catalogue_translates_every_message_with_its_placeholders(locale: str) -> None:
    cat = catalog(locale)
    used = extracted()
    assert len(used) > 150
    assert {m.id for m in cat if m.id} == used  # nothing missing, nothing left over
    for message in cat:
        if not message.id:
            continue
        assert not message.fuzzy, message.id
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert len(strings) == (2 if isinstance(message.id, tuple) else 1) and all(strings), message.id
        for text in strings:
            assert sorted(PLACEHOLDER.findall(ids[-1])) == sorted(PLACEHOLDER.findall(text)), message.id


def test_hindi_is_really_hindi_with_its_plurals() -> None:
    catalogs = load_translations()
    hi, en = catalogs["hi"], catalogs["en"]
    singles = [m for m in extracted() if isinstance(m, str)]
    devanagari = [m for m in singles if re.search("[\u0900-\u097f]", hi.ugettext(m))]
    assert len(devanagari) >= 0.95 * len(singles)
    assert hi.ugettext("Police station area") == "थाना क्षेत्र" and hi.ugettext("Reply") == "उत्तर"
    one, many = "%(num)d case.", "%(num)d cases."
    assert [en.ungettext(one, many, n) % {"num": n} for n in (1, 2)] == ["1 case.", "2 cases."]
    assert [hi.ungettext(one, many, n) % {"num": n} for n in (1, 2)] == ["1 मामला।", "2 मामले।"]
    synced = ("Synced %(num)d case.", "Synced %(num)d cases.")
    assert hi.ungettext(*synced, 1) % {"num": 1} == "1 मामला सिंक हुआ।"
    assert hi.ungettext(*synced, 5) % {"num": 5} == "5 मामले सिंक हुए।"


def test_a_broken_catalogue_stops_the_desk(tmp_path: Path) -> None:
    (tmp_path / "hi" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "hi" / "LC_MESSAGES" / "messages.po").write_text('msgid "a"\nmsgstr "b"\n')
    with pytest.raises(ConfigError, match="en"):
        load_translations(tmp_path)


# --- times ---------------------------------------------------------------------------------


def test_a_time_is_shown_in_the_deployment_zone_with_the_zone_named() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")
    assert timefmt.show(KNOWN, kolkata, "en") == "2 Dec 2026, 08:45 IST"
    assert timefmt.show(KNOWN, kolkata, "hi") == "2 दिस॰ 2026, 08:45 IST"
    assert timefmt.show(KNOWN.replace(tzinfo=None), kolkata, "en") == "2 Dec 2026, 08:45 IST"  # naive = UTC
    assert timefmt.show(KNOWN, ZoneInfo("Europe/London"), "en") == "2 Dec 2026, 03:15 GMT"
    assert timefmt.iso(KNOWN, kolkata) == "2026-12-02T08:45:00+05:30"
    # Sunday 20:00 UTC is already Monday in India: the home page's weekly chart counts it there.
    sunday_evening = dt.datetime(2026, 12, 6, 20, 0, tzinfo=dt.UTC)
    assert (iso_week(sunday_evening), iso_week(sunday_evening, kolkata)) == ("2026-W49", "2026-W50")


def test_time_zone_and_language_settings(tmp_path: Path, officer_gnupg: Path) -> None:
    config = write_desk_config(tmp_path, "http://127.0.0.1:9", officer_gnupg, default_locale=None)
    settings = load_desk_settings(config, env={})
    assert (settings.time_zone, settings.default_locale) == ("Asia/Kolkata", "hi")
    assert settings.zone == ZoneInfo("Asia/Kolkata")
    other = load_desk_settings(config, env={"CPCP_DESK_TIME_ZONE": "Asia/Kathmandu"})
    assert timefmt.show(KNOWN, other.zone, "en") == "2 Dec 2026, 09:00 +0545"
    for bad in ("Asia/Lucknow", "IST+5:30", "../etc/passwd", ""):
        with pytest.raises(ConfigError, match="time_zone"):
            load_desk_settings(config, env={"CPCP_DESK_TIME_ZONE": bad})
    with pytest.raises(ConfigError, match="default_locale"):
        load_desk_settings(config, env={"CPCP_DESK_DEFAULT_LOCALE": "fr"})


def test_a_desk_with_an_unknown_zone_refuses_to_start_and_says_which_setting(
    tmp_path: Path, officer_gnupg: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_desk_config(tmp_path, "http://127.0.0.1:9", officer_gnupg)
    config.write_text(config.read_text() + 'time_zone = "India/Lucknow"\n')
    assert serve.main(["--config", str(config)]) == 2
    assert capsys.readouterr().err == ("cpcp-desk: time_zone 'India/Lucknow' is not a known time zone "
                                       "(an IANA name such as Asia/Kolkata)\n")


def test_the_example_settings_load_with_the_defaults(tmp_path: Path) -> None:
    text = (DESK / "desk.example.toml").read_text()
    config = tmp_path / "desk.toml"
    config.write_text(text.replace("REPLACE-WITH-THE-OFFICER-ONION", "x" * 56))
    settings = load_desk_settings(config, env={})
    assert (settings.time_zone, settings.default_locale) == ("Asia/Kolkata", "hi")


# --- pages, fed the gateway's wire model directly ------------------------------------------


def wire_case(case_id: int, **extra: Any) -> Case:
    """A case as the gateway's API sends it (JSON, validated by the desk's wire model)."""
    return Case.model_validate({
        "id": case_id, "public_id": f"case-{case_id:04d}-0000", "unit": "ps-sadar-bazar",
        "status": "received", "priority": "normal", "labels": [], "assignee": None,
        "received_at": "2026-12-01T22:00:00Z", "updated_at": "2026-12-01T22:00:00Z",
        "submissions": [], "replies": [], **extra,
    })


@pytest.fixture
async def offline_desk(tmp_path: Path, officer_gnupg: Path) -> AsyncIterator[tuple[Quart, DeskClient]]:
    """The real desk with its own default language (none set), cases in its cache as a sync
    would store them, and an officer's session; no page here asks the gateway anything."""
    settings = load_desk_settings(write_desk_config(tmp_path, "http://127.0.0.1:9", officer_gnupg,
                                                    default_locale=None), env={})
    app = create_app(settings)
    async with app.test_app():
        cache = app.extensions["cpcp_desk"].cache
        await cache.store_case(wire_case(1, reply_due_at="2026-12-02T03:15:00Z", overdue=True))
        await cache.store_case(wire_case(2, reply_due_at="2026-12-03T03:15:00+00:00", overdue=False))
        await cache.store_case(wire_case(3))  # today's gateway: neither field
        client = app.test_client()
        async with client.session_transaction(headers=HOST) as session:
            session.update({TOKEN: "t" * 32, "name": "Officer A"})
        yield app, client


async def text_of(client: DeskClient, path: str) -> str:
    response = await client.get(path, headers=HOST)
    assert response.status_code == 200, path
    return await response.get_data(as_text=True)


def row_of(page: str, case_id: int) -> str:
    found = re.search(rf'<tr[^>]*>(?:(?!</tr>).)*href="/cases/{case_id}"(?:(?!</tr>).)*</tr>', page, re.DOTALL)
    assert found, case_id
    return found.group(0)


async def test_the_language_is_chosen_before_logging_in(offline_desk: tuple[Quart, DeskClient]) -> None:
    app, _ = offline_desk
    stranger = app.test_client()  # no session
    login = await text_of(stranger, "/login")
    assert '<html lang="hi">' in login and "गेटवे पर लॉग इन करें" in login
    r = await stranger.get("/lang/en?next=/login", headers=HOST)
    assert r.status_code == 303 and r.headers["Location"] == "/login"
    login = await text_of(stranger, "/login")
    assert '<html lang="en">' in login and "Log in to the gateway" in login
    assert (await stranger.get("/inbox", headers=HOST)).headers["Location"] == "/login"  # still locked


def test_the_wire_model_reads_a_gateway_with_and_without_response_targets() -> None:
    assert (wire_case(3).reply_due_at, wire_case(3).overdue) == (None, False)
    due = wire_case(1, reply_due_at="2026-12-02T03:15:00Z", overdue=True)
    assert due.reply_due_at == KNOWN and due.overdue is True
    assert wire_case(1, reply_due_at=None).reply_due_at is None


async def test_hindi_first_then_english_remembered_with_due_and_overdue_cases(
    offline_desk: tuple[Quart, DeskClient],
) -> None:
    _, client = offline_desk
    inbox = await text_of(client, "/inbox")
    assert '<html lang="hi">' in inbox and 'hreflang="en"' in inbox and "इनबॉक्स" in inbox
    assert "3 मामले।" in inbox
    plain = row_of(inbox, 3)
    assert "overdue" not in plain and "देना" not in plain  # today's gateway: nothing said
    late = row_of(inbox, 1)
    assert 'class="overdue"' in late and "⚠" in late
    assert "समय-सीमा पार: उत्तर 2 दिस॰ 2026, 08:45 IST तक देना था" in late
    assert "उत्तर 3 दिस॰ 2026, 08:45 IST तक देना है" in row_of(inbox, 2)
    assert "2 दिस॰ 2026, 03:30 IST" in late  # received 22:00 UTC the day before

    switch = await client.get("/lang/en?next=/inbox", headers=HOST)
    assert switch.status_code == 303 and switch.headers["Location"] == "/inbox"
    assert f"{LANG_COOKIE}=en" in switch.headers["Set-Cookie"]
    inbox = await text_of(client, "/inbox")  # the choice is remembered (the cookie)
    assert '<html lang="en">' in inbox and 'hreflang="hi"' in inbox and "3 cases." in inbox
    late = row_of(inbox, 1)
    assert "Overdue since 2 Dec 2026, 08:45 IST" in late and "⚠" in late
    assert "Reply due by 3 Dec 2026, 08:45 IST" in row_of(inbox, 2)
    assert "Received (UTC)" not in inbox

    case = await text_of(client, "/cases/1")
    assert '<p class="reply-due overdue">' in case and "Overdue since 2 Dec 2026, 08:45 IST" in case
    assert "<dd>2 Dec 2026, 03:30 IST</dd>" in case
    assert "Reply due by 3 Dec 2026, 08:45 IST" in await text_of(client, "/cases/2")
    plain = await text_of(client, "/cases/3")
    assert "reply-due" not in plain and "Overdue" not in plain

    r = await client.get("/lang/hi?next=//evil.example/", headers=HOST)  # never off the desk
    assert r.headers["Location"] == "/"
    case = await text_of(client, "/cases/1")
    assert '<html lang="hi">' in case and "समय-सीमा पार: उत्तर 2 दिस॰ 2026, 08:45 IST तक देना था" in case
    assert "सूचनाकर्ता को उत्तर दें" in case


async def test_the_inbox_filters_days_on_the_deployment_calendar(
    offline_desk: tuple[Quart, DeskClient],
) -> None:
    _, client = offline_desk
    # 22:00 UTC on 1 Dec is 03:30 on 2 Dec in India: the officer's "2 Dec" finds the cases.
    assert (await text_of(client, "/inbox?since=2026-12-02&until=2026-12-02")).count('href="/cases/') == 3
    assert (await text_of(client, "/inbox?until=2026-12-01")).count('href="/cases/') == 0


# --- the metadata warning on the case page (a real gateway, a real photo) ------------------


async def test_the_case_page_warns_next_to_the_file_that_carries_gps(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP,
) -> None:
    await make_tip(core, "ps-sadar-bazar", "Liquor sold behind the temple", files=[
        ("photo.jpg", "image/jpeg", jpeg_with_gps()), ("notes.txt", "text/plain", b"only words"),
    ])
    await desk_login(browser, totp)
    inbox = await desk_sync(browser)
    case_url = re.search(r'href="(/cases/\d+)"', inbox)
    assert case_url
    page = (await browser.get(case_url.group(1))).text
    items = dict(re.findall(r"<li>\s*(photo\.jpg|notes\.txt)(.*?)</li>", page, re.DOTALL))
    assert set(items) == {"photo.jpg", "notes.txt"}
    photo = items["photo.jpg"]
    assert 'class="warning"' in photo and "could identify the source" in photo
    assert "GPS position (26.836761, 80.945833)" in photo and "BodySerialNumber" in photo
    assert "warning" not in items["notes.txt"]
    browser.cookies.set(LANG_COOKIE, "hi", domain="127.0.0.1")
    page = (await browser.get(case_url.group(1))).text
    assert "इस फ़ाइल में ऐसा डेटा है जिससे सूचनाकर्ता की पहचान हो सकती है" in page
    assert page.count('class="warning"') == 1
