"""The source journey in a real browser: Debian's Chromium, headless, JavaScript off (Tor Browser
at "Safest"), through the private Tor network's client tor to the source onion, driven by
Playwright's async API (its sync API cannot run inside pytest-asyncio's loop).

Every request and response of the run and every page's HTML is checked against invariant 2 of
docs/architecture.md: no script, nothing from anywhere but ``http://<source onion>/``. Every page is
screenshotted in Hindi and English at 360 and 1280 px into tests/screenshots/ (README there).

Needs /usr/bin/chromium and the ``playwright`` package (``scripts/setup --dev``; Playwright's own
browser downloads are never used); without them the module is skipped, unless
``CPCP_TEST_REQUIRE_BROWSER=1`` (scripts/test), when it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pyotp
import pytest

from cpcp.codenames import generate_codename
from cpcp.i18n import load_translations
from cpcp.services import build_core
from onion.services import SOURCE
from onion.testnet import PrivateTorNetwork

from ..conftest import FPR, ROOT, TEST_KEYS, Deployment, gpg_decrypt, gpg_encrypt
from ..helpers import CHROMIUM, require_browser
from ..servers import Server
from ..test_gateway import PASSPHRASE
from .tornet import ANSWER_WITHIN, get_with_retries, publish, say

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        FilePayload,
        Page,
        Request,
        Response,
        Route,
        async_playwright,
    )
except ImportError:
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

require_browser(packages="the playwright package", packages_there=HAVE_PLAYWRIGHT)

SCREENSHOTS = ROOT / "tests" / "screenshots"
SHOT_NAME = re.compile(r"^(hi|en)-(360|1280)-\d\d-[a-z-]+\.png$")
WIDTHS = (360, 1280)
HEIGHT = 800
# Playwright passes --headless, --no-sandbox, --no-first-run, --disable-background-networking,
# --disable-component-update and, for the proxy, --proxy-server; these are the rest. Its own
# --host-resolver-rules reaches Chromium with literal quotes around the value, which makes
# Chromium ignore the MAP rule; ours comes later, so it wins: no name resolves on this machine.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
TRANSLATIONS = load_translations(ROOT / "source_app" / "translations")


def tr(lang: str, msgid: str) -> str:
    return str(TRANSLATIONS[lang].ugettext(msgid))


@asynccontextmanager
async def chromium(socks_port: int) -> AsyncIterator[Browser]:
    """Debian's Chromium with every connection through the SOCKS5 proxy on 127.0.0.1."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            proxy={"server": f"socks5://127.0.0.1:{socks_port}"})
        try:
            yield browser
        finally:
            await browser.close()


async def wait_until_reachable(socks_port: int, onion: str) -> None:
    """GET / through tor until it answers, so that the browser needs no retries of its own."""
    assert (await get_with_retries(socks_port, onion, "/")).status_code == 200


# --- the resource check ---------------------------------------------------------------------

URL_ATTRIBUTES = {"src", "href", "xlink:href", "action", "formaction", "poster", "data", "srcset",
                  "background", "manifest", "ping", "cite", "longdesc", "icon"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")\s]+)|@import\s+['"]([^'"]+)""")


class PageScan(HTMLParser):
    """The script elements, inline event handlers and every URL a page's markup names."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts = 0
        self.handlers: list[str] = []  # onclick= and the like: script, even without <script>
        self.urls: list[tuple[str, str]] = []  # (where, url)
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self._in_style = tag == "style"
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            if name.startswith("on"):
                self.handlers.append(f"<{tag} {name}>")
            if name in URL_ATTRIBUTES and value.strip():
                urls = [c.split()[0] for c in value.split(",") if c.strip()] if name == "srcset" else [value]
                self.urls += [(f"<{tag} {name}>", url.strip()) for url in urls]
            elif name == "style":
                self.urls += [(f"<{tag} style>", m.group(1) or m.group(2)) for m in CSS_URL.finditer(value)]
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            self.urls.append(("<meta refresh>", values.get("content", "").partition("url=")[2] or "/"))

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += [("<style>", m.group(1) or m.group(2)) for m in CSS_URL.finditer(data)]


@dataclass
class Recorder:
    """Watches a browser context: every request, response and failure, and (check_page) every
    page's HTML. Anything that is a script or is not ``http://<onion>/`` is a problem."""

    onion: str
    requests: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    pages: int = 0
    #: Stylesheets being read: a body is gone once its page navigates away, so each is read
    #: as soon as it arrives and checked with the page.
    stylesheets: list[asyncio.Task[tuple[str, str]]] = field(default_factory=list)
    stylesheets_checked: int = 0

    def attach(self, context: BrowserContext) -> None:
        context.on("request", self.on_request)
        context.on("response", self.on_response)
        context.on("requestfailed", self.on_failed)

    def on_site(self, url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "http" and parts.hostname == self.onion and parts.port in (None, 80)

    def on_request(self, request: Request) -> None:
        self.requests.append(f"{request.method} {request.resource_type} {request.url}")
        if request.resource_type == "script":
            self.problems.append(f"script requested: {request.url}")
        if not self.on_site(request.url):
            self.problems.append(f"{request.resource_type} requested off the onion: {request.url[:120]}")

    def on_response(self, response: Response) -> None:
        ctype = response.headers.get("content-type", "")
        if "javascript" in ctype or "ecmascript" in ctype:
            self.problems.append(f"script served: {response.url} ({ctype})")
        if not self.on_site(response.url):
            self.problems.append(f"response from off the onion: {response.url[:120]}")
        if ctype.startswith("text/css"):
            self.stylesheets.append(asyncio.get_running_loop().create_task(_body(response)))

    def on_failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.url[:120]} ({request.failure})")

    async def check_page(self, page: Page) -> None:
        self.pages += 1
        scan = PageScan()
        scan.feed(await page.content())
        if scan.scripts:
            self.problems.append(f"{scan.scripts} <script> element(s) in {page.url}")
        if scan.handlers:
            self.problems.append(f"event handler(s) {', '.join(scan.handlers)} in {page.url}")
        await self.check_stylesheets()  # bodies are gone once the page navigates away
        for where, url in scan.urls:
            # data: and javascript: URLs resolve to themselves, so they are flagged here too.
            if not self.on_site(urljoin(page.url, url)):
                self.problems.append(f"{where} in {page.url} points off the onion: {url[:80]}")


    async def check_stylesheets(self) -> None:
        """url() and @import in every stylesheet served, including rules this run never
        applied (another media query, :hover), which the request log cannot show."""
        sheets, self.stylesheets = self.stylesheets, []
        for sheet_url, css in await asyncio.gather(*sheets):
            self.stylesheets_checked += 1
            for match in CSS_URL.finditer(css):
                url = match.group(1) or match.group(2)
                if not self.on_site(urljoin(sheet_url, url)):
                    self.problems.append(f"stylesheet {sheet_url} points off the onion: {url[:80]}")


async def _body(response: Response) -> tuple[str, str]:
    return response.url, await response.text()


CONTROL_ONION = "c" * 56 + ".onion"
CONTROL_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>control</title>
<link rel="stylesheet" href="https://fonts.example.com/font.css"><link rel="stylesheet" href="/site.css">
<script src="/app.js"></script><script>document.title = "ran";</script></head>
<body><p onclick="void 0">control</p><img src="http://tracker.example/pixel.gif" alt="">
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt=""><a href="https://clearnet.example/">out</a>
</body></html>"""


async def test_the_recorder_flags_scripts_and_other_hosts() -> None:
    """Positive control of the check below: a page with everything the source pages must not
    have, served by Playwright's router to the same kind of browser. The proxy is a closed port,
    so nothing can leave the machine even if the router missed a request."""
    async with chromium(socks_port=9) as browser:
        async def serve(route: Route) -> None:
            url = route.request.url
            if url == f"http://{CONTROL_ONION}/":
                await route.fulfill(body=CONTROL_PAGE, content_type="text/html; charset=utf-8")
            elif url == f"http://{CONTROL_ONION}/site.css":
                await route.fulfill(body=b"@media print { body { background: url(https://tracker.example/p.png) } }",
                                    content_type="text/css")
            elif url == f"http://{CONTROL_ONION}/app.js":
                await route.fulfill(body=b"void 0;", content_type="text/javascript")
            else:
                await route.abort()

        flagged: dict[bool, str] = {}
        for javascript in (False, True):
            recorder = Recorder(CONTROL_ONION)
            context = await browser.new_context(java_script_enabled=javascript)
            recorder.attach(context)
            await context.route("**/*", serve)
            page = await context.new_page()
            await page.goto(f"http://{CONTROL_ONION}/")
            await recorder.check_page(page)
            await context.close()
            flagged[javascript] = "\n".join(recorder.problems)
        for problems in flagged.values():
            assert "2 <script> element(s)" in problems
            assert "image requested off the onion: http://tracker.example/pixel.gif" in problems
            assert "stylesheet requested off the onion: https://fonts.example.com/font.css" in problems
            assert "<img src> in" in problems and "points off the onion: data:image/gif" in problems
            assert "<a href> in" in problems and "points off the onion: https://clearnet.example/" in problems
            assert "event handler(s) <p onclick>" in problems
            assert "site.css points off the onion: https://tracker.example/p.png" in problems
        # With JavaScript off Chromium does not even fetch a script's src, so there the HTML
        # check is what catches it; with JavaScript on, the request recorder does too.
        assert f"script requested: http://{CONTROL_ONION}/app.js" in flagged[True]
        assert f"script served: http://{CONTROL_ONION}/app.js" in flagged[True]


# --- the officer's side (the gateway API on loopback; what the desk does over its onion) ----

@dataclass
class Officer:
    client: httpx.AsyncClient
    gnupg: Path  # the workstation's private keys
    encrypt_home: Path  # public keys only: officer-a's and the sources' reply keys

    async def find_tip(self, text: str) -> tuple[int, dict[str, Any], bytes]:
        """The case whose message is ``text``: its id, the decrypted message and file."""
        cases = (await self.client.get("/api/v1/cases")).json()["cases"]
        for case in cases:
            documents = case["submissions"][0]["documents"]
            roles = {d["role"]: d["id"] for d in documents}
            message = json.loads(gpg_decrypt(self.gnupg, await self.document(roles["message"])))
            if message["text"] == text:
                return case["id"], message, gpg_decrypt(self.gnupg, await self.document(roles["file"]))
        raise AssertionError(f"no case holds {text!r}: {cases}")

    async def document(self, document_id: int) -> bytes:
        r = await self.client.get(f"/api/v1/documents/{document_id}")
        assert r.status_code == 200
        return r.content

    async def reply(self, case_id: int, text: str) -> None:
        key = (await self.client.get(f"/api/v1/cases/{case_id}/source-key")).json()
        subprocess.run(["gpg", "--homedir", str(self.encrypt_home), "--batch", "--quiet", "--import"],
                       input=key["armored"].encode(), check=True, capture_output=True)
        armored = gpg_encrypt(self.encrypt_home, text.encode(), [key["fingerprint"], FPR["officer-a"]],
                              armor=True).decode()
        r = await self.client.post(f"/api/v1/cases/{case_id}/replies", json={"armored": armored})
        assert r.status_code == 201, r.text
        r = await self.client.patch(f"/api/v1/cases/{case_id}", json={"status": "under_review"})
        assert r.status_code == 200, r.text


@asynccontextmanager
async def officer_a(deployment: Deployment, gateway: Server, gnupg: Path,
                    home: Path) -> AsyncIterator[Officer]:
    core = build_core(deployment.settings)
    try:
        totp = pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))
    finally:
        await core.close()
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--import",
                    str(TEST_KEYS / "officer-a.pub.asc")], check=True, capture_output=True)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=ANSWER_WITHIN) as client:
        r = await client.post("/api/v1/token", json={"handle": "officer-a", "passphrase": PASSPHRASE,
                                                     "code": totp.now()})
        assert r.status_code == 200, r.text
        client.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield Officer(client, gnupg, home)


# --- the source's journey -------------------------------------------------------------------

# Fixed texts (the deployment is the module's own) keep the screenshots the same from run to
# run, except the codename pages.

TIP = {"hi": "बस अड्डे के पीछे अवैध शराब बिकती है, शाम सात बजे के बाद।",
       "en": "Illegal liquor is sold behind the bus stand after seven in the evening."}
REPLY = {"hi": "धन्यवाद। आपकी सूचना की जाँच हो रही है।",
         "en": "Thank you. Your information is being looked into."}


@dataclass
class Source:
    """One source in one browser context, in one language, screenshotting as it goes."""

    page: Page
    lang: str
    onion: str
    recorder: Recorder
    shots: Path
    overflow: list[str]

    async def open(self, path: str, *, status: int = 200) -> None:
        response = await self.page.goto(f"http://{self.onion}{path}")
        assert response is not None and response.status == status, (path, response and response.status)

    async def follow(self, selector: str, *, path: str, status: int = 200) -> None:
        """Click a link or a form's button (a real click: no script needed) and land on ``path``."""
        async with self.page.expect_navigation() as navigation:
            await self.page.locator(selector).click()
        response = await navigation.value
        assert response is not None and response.status == status, (selector, response and response.status)
        assert urlsplit(self.page.url).path == path and urlsplit(self.page.url).hostname == self.onion

    async def shows(self, *msgids: str) -> str:
        """The page's visible text holds these strings (and the 112 notice) in its language."""
        assert await self.page.locator("html").get_attribute("lang") == self.lang
        text = await self.page.locator("body").inner_text()
        for msgid in ("In an emergency dial 112.", *msgids):
            assert tr(self.lang, msgid) in text, (self.lang, msgid, text)
            if self.lang == "hi":
                assert msgid not in text, f"untranslated on a Hindi page: {msgid}"
        return text

    async def shot(self, name: str) -> None:
        """Check the page, then a full-page screenshot at each width (the layout follows the
        viewport without a reload; nothing on these pages needs one)."""
        await self.recorder.check_page(self.page)
        for width in WIDTHS:
            await self.page.set_viewport_size({"width": width, "height": HEIGHT})
            scroll_width = await self.page.evaluate("document.documentElement.scrollWidth")
            if scroll_width > width:
                self.overflow.append(f"{self.lang}-{width}-{name}: {scroll_width}px wide")
            await self.page.screenshot(path=self.shots / f"{self.lang}-{width}-{name}.png", full_page=True)
        await self.page.set_viewport_size({"width": WIDTHS[0], "height": HEIGHT})


async def journey(browser: Browser, lang: str, onion: str, recorder: Recorder, shots: Path,
                  officer: Officer, overflow: list[str]) -> None:
    context = await browser.new_context(java_script_enabled=False,
                                        viewport={"width": WIDTHS[0], "height": HEIGHT})
    context.set_default_timeout(ANSWER_WITHIN * 1000)
    recorder.attach(context)
    s = Source(await context.new_page(), lang, onion, recorder, shots, overflow)
    attachment = b"%PDF-1.4 evidence " + os.urandom(48 * 1024)
    unit_name = {"hi": "थाना सदर बाजार", "en": "Sadar Bazar Police Station"}[lang]

    await s.open("/")
    if lang == "en":  # Hindi is the default; the header's language link switches
        await s.follow('nav.lang a[hreflang="en"]', path="/")
    await s.shows("Tell the police what you know, safely", "First time: send a tip")
    await s.shot("01-home")

    await s.follow('a.button[href="/generate"]', path="/generate")
    await s.shows("Your codename", "I have written down my codename. Continue")
    words = await s.page.locator("p.codename span").all_inner_texts()
    assert len(words) == 7 and all(re.fullmatch(r"[a-z-]+", w) for w in words), words
    codename = " ".join(words)
    await s.shot("02-codename")

    await s.follow('form[action="/create"] button', path="/submit")
    await s.shows("Send a tip", "Who should receive it", "Send securely")
    await s.page.select_option("#unit", "ps-sadar-bazar")
    await s.page.check('input[name="kind"][value="information"]')
    await s.page.select_option("#category", "illegal_trade")
    await s.page.fill("#place", "Bus stand")
    await s.page.fill("#text", TIP[lang])
    evidence: FilePayload = {"name": "evidence.pdf", "mimeType": "application/pdf", "buffer": attachment}
    await s.page.set_input_files("#files", files=[evidence])
    assert await s.page.locator("#unit option:checked").inner_text() == unit_name
    await s.shot("03-submit")

    await s.follow('form[action="/submit"] button.primary', path="/case")
    await s.shows("Your case", "Thank you. Your tip was received and encrypted. Only the designated "
                  "officers can read it.", "No reply yet. Officers read every tip; please check again "
                  "in a few days.", "Received")
    assert unit_name in await s.page.locator("dl.case").inner_text()
    await s.shot("04-case-after-submit")

    # The tip arrived whole, readable with the officer's key; the officer answers.
    case_id, message, file_bytes = await officer.find_tip(TIP[lang])
    assert message["text"] == TIP[lang] and message["language"] == lang
    assert (message["unit"], message["kind"], message["category"], message["place"]) == (
        "ps-sadar-bazar", "information", "illegal_trade", "Bus stand")
    assert file_bytes == attachment
    await officer.reply(case_id, REPLY[lang])

    await s.follow("form.logout button", path="/logout")
    await s.shows("You are logged out")
    await s.shot("05-logged-out")

    await s.follow('main a[href="/"]', path="/")
    await s.follow('a.button[href="/login"]', path="/login")
    await s.shows("Log in with your codename", "Your codename (seven words, or sixteen digits)")
    await s.shot("06-login")

    await s.page.fill("#codename", str(generate_codename()))
    await s.follow('form[action="/login"] button', path="/login", status=403)
    await s.shows("That codename is not known here. Check every word or digit and try again.")
    await s.shot("07-login-error")

    # The codename shown on /generate, typed as a source would (case and spaces do not matter).
    await s.page.fill("#codename", f"  {codename.upper()} ")
    await s.follow('form[action="/login"] button', path="/case")
    await s.shows("Your case", "Replies from the police", "Under review", "Delete this reply")
    assert await s.page.locator(".reply-text").all_inner_texts() == [REPLY[lang]]
    await s.shot("08-case-with-reply")

    await s.open(f"/no-such-page-{secrets.token_hex(2)}", status=404)
    await s.shows("There is no such page.", "Back to the start page")
    await s.shot("09-not-found")
    await context.close()


async def test_source_journey_in_chromium_without_javascript_over_tor(
    network: PrivateTorNetwork, tor_deployment: Deployment, source_server: Server,
    gateway_server: Server, officer_gnupg: Path, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    started = time.monotonic()
    onion = publish(network, tor_deployment, source_server, gateway_server)[SOURCE]
    await wait_until_reachable(network.socks_port, onion)
    shots = tmp_path / "screenshots"  # copied into the repository only when everything passed
    shots.mkdir()
    recorder, overflow = Recorder(onion), list[str]()
    async with (officer_a(tor_deployment, gateway_server, officer_gnupg, tmp_path / "encrypt") as officer,
                chromium(network.socks_port) as browser):
        for lang in ("hi", "en"):
            await journey(browser, lang, onion, recorder, shots, officer, overflow)

    assert recorder.problems == [], "\n".join(recorder.problems)
    assert recorder.pages == 18 and recorder.stylesheets_checked >= 2  # cpcp.css, in each context
    document_loads = [r for r in recorder.requests if " document " in r]
    assert len(document_loads) >= 28 and any(" stylesheet " in r for r in recorder.requests)
    assert overflow == [], f"horizontal overflow (screenshots in {shots}): {overflow}"

    made = sorted(p.name for p in shots.iterdir())
    assert len(made) == 36 and all(SHOT_NAME.match(name) for name in made), made
    # The committed screenshots are refreshed on request only (a fresh codename changes some on
    # every run), but they must cover every page this journey shows.
    if os.environ.get("CPCP_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        for stale in SCREENSHOTS.glob("*.png"):
            if SHOT_NAME.match(stale.name):
                stale.unlink()
        for name in made:
            shutil.copyfile(shots / name, SCREENSHOTS / name)
    committed = sorted(p.name for p in SCREENSHOTS.glob("*.png"))
    assert committed == made, ("tests/screenshots/ does not match the pages of the journey: "
                               "run with CPCP_UPDATE_SCREENSHOTS=1 and commit them")
    say(request, f"\nbrowser journey: {len(recorder.requests)} requests over Tor, none off the onion "
                 f"or a script; {len(made)} screenshots in {shots} "
                 f"({time.monotonic() - started:.1f}s)")
