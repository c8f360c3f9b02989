"""Accessibility of every source page and every desk page (GIGW 3.0, which asks WCAG 2.1 AA).

Indian government sites must meet GIGW; a source who uses a screen reader, the keyboard only, or
a phone with large text must be able to send a tip and read the reply as anyone else can, or
the portal shuts them out. Checked here, in Debian's headless Chromium (never Playwright's own
browser download) against real Hypercorn processes on loopback (not through Tor: what is audited
is the markup, and Tor only makes it slower):

- axe-core (axe-playwright-python) on every page a source can reach, in Hindi and English, and
  on every desk page in both languages, at 360 and 1280 px: no serious or critical finding, and none at all of the
  rules in ``MUST_PASS`` (fixed once; must stay fixed). Other moderate and minor findings are
  printed by rule and page. The pages are reached by a walk through the journey plus a crawl of
  every link any page shows, so a page added later is audited without changing this file.
- Every page starts with a skip link to ``<main>``.
- No page scrolls sideways at 360 px, nor at 200% and 400% zoom (a 1280 px window zoomed is
  640 and 320 CSS px wide; WCAG 1.4.10 asks for 320).
- The source journey works with the keyboard alone: Tab and Shift-Tab to move, Enter and Space to
  activate (arrows only to choose within a list), with a visible focus ring at every stop.

axe is injected through the DevTools protocol (``page.evaluate``), not by the pages: they have
no script and their CSP allows none. axe's own promises never settle with JavaScript off, so
the audit runs with it on, which changes nothing on pages without script; the keyboard and zoom
checks run with it off, as Tor Browser at "Safest" shows the pages. SQLite only: the database
does not change the markup.

Needs /usr/bin/chromium, ``playwright`` and ``axe-playwright-python`` (``scripts/setup --dev``);
without them the module is skipped, unless ``CPCP_TEST_REQUIRE_BROWSER=1`` (scripts/test).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pyotp
import pytest

from cpcp.admin import init_deployment
from cpcp.i18n import load_translations
from cpcp.officers import TOTP_STEP
from cpcp.services import build_core
from cpcp.settings import load_settings
from journalist_app.desk.sessions import COOKIE as DESK_COOKIE

from .conftest import ROOT, Deployment, write_deployment
from .helpers import CHROMIUM, codename_of, csrf, multipart, require_browser
from .servers import Server, start_desk, start_server
from .test_desk import jpeg_with_gps
from .test_gateway import PASSPHRASE

try:
    from axe_playwright_python.async_playwright import Axe  # type: ignore[import-untyped]
    from playwright.async_api import Browser, FileChooser, FilePayload, Page, async_playwright
except ImportError:
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

require_browser(packages="the playwright and axe-playwright-python packages", packages_there=HAVE_PLAYWRIGHT)

# No name resolves and nothing leaves loopback (as in tests/tor/test_browser_tor.py).
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
AUDIT_WIDTHS = (360, 1280)
HEIGHT = 800
ZOOM_WIDTHS = (640, 320)  # a 1280 px window at 200% and at 400%
# Every rule axe runs by default (WCAG 2.0-2.2 A/AA and best practices), plus enhanced (AAA)
# contrast: small grey hint text is what a tired officer or an old phone screen loses first.
AXE_OPTIONS = {"resultTypes": ["violations"], "rules": {"color-contrast-enhanced": {"enabled": True}}}
# Fixed once and kept at zero findings whatever their impact: content outside any landmark
# (the 112 line was), contrast, a scrolling region the keyboard cannot reach.
MUST_PASS = {"region", "color-contrast", "color-contrast-enhanced", "scrollable-region-focusable",
             "landmark-one-main", "skip-link", "bypass", "page-has-heading-one"}
TRANSLATIONS = load_translations(ROOT / "source_app" / "translations")


def tr(lang: str, msgid: str) -> str:
    return str(TRANSLATIONS[lang].ugettext(msgid))


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even when output is captured."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


# --- the servers: source app, gateway and desk, one of each for the module -------------------

@dataclass
class Site:
    deployment: Deployment
    source: Server
    gateway: Server
    desk: Server
    totp: pyotp.TOTP
    desk_sid: str  # an officer's desk session, for the replies the source pages need
    last_step: int = 0
    photo_tip: str = ""

    def next_code(self) -> str:
        """A TOTP code the gateway accepts: each works once, and only for a later step."""
        now = self.totp.timecode(dt.datetime.now(dt.UTC))
        step = max(self.last_step + 1, now - 1)
        assert step <= now + 1, "more than three logins in 30 s"
        self.last_step = step
        return str(self.totp.generate_otp(step))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, officer_gnupg: Path) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("a11y")
    config = write_deployment(root, f"sqlite+aiosqlite:///{root / 'data' / 'cpcp.sqlite'}")
    settings = load_settings(config, env={})
    init_deployment(settings)
    deployment = Deployment(root=root, config=config, settings=settings)

    async def enrol() -> str:
        core = build_core(settings)
        try:
            return await core.officer_auth.enrol("officer-a", PASSPHRASE)
        finally:
            await core.close()

    totp = pyotp.TOTP(asyncio.run(enrol()), interval=TOTP_STEP)
    servers: list[Server] = []
    try:
        servers.append(source := start_server(deployment, app="source"))
        servers.append(gateway := start_server(deployment, app="gateway"))
        servers.append(desk := start_desk(root / "desk", gateway.url, officer_gnupg))
        site = Site(deployment, source, gateway, desk, totp, desk_sid="")
        # A tip with a photo that carries GPS and camera data (the desk's metadata page), and
        # the long unbroken strings sources paste (a link, a phone's file name) that must wrap.
        site.photo_tip = f"Photo of the stall {secrets.token_hex(4)}"
        long_name = "WhatsApp_Image_2026-01-08_at_18.30.45_PM_(1)_IMG_2041_edited.jpg"
        with httpx.Client(base_url=source.url, timeout=60) as src:
            page = src.get("/generate").text
            assert src.post("/create", data={"csrf_token": csrf(page)}).status_code == 303
            body, ctype = multipart([("csrf_token", csrf(src.get("/submit").text)),
                                     ("unit", "ps-sadar-bazar"), ("kind", "information"),
                                     ("place", "https://maps.example/place/Sadar+Bazar/@26.836761,80.945833,18z"),
                                     ("text", site.photo_tip),
                                     ("files", long_name, jpeg_with_gps(), "image/jpeg")])
            assert src.post("/submit", content=body, headers={"Content-Type": ctype}).status_code == 303
        with httpx.Client(base_url=desk.url, timeout=60) as officer:
            r = officer.post("/login", data={"csrf_token": csrf(officer.get("/login").text),
                                             "handle": "officer-a", "passphrase": PASSPHRASE,
                                             "code": site.next_code()})
            assert r.status_code == 303, r.text
            site.desk_sid = officer.cookies[DESK_COOKIE]
        yield site
    finally:
        for server in reversed(servers):
            server.stop()
        # The servers' and the desk's gpg started agents; none may outlive the module.
        for home in [*(settings.data_dir / "gnupg").iterdir(), officer_gnupg]:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)


async def officer_replies(site: Site, tip_text: str, reply: str) -> None:
    """At the desk, as the officer's browser: sync, find the case of ``tip_text``, reply."""
    async with httpx.AsyncClient(base_url=site.desk.url, timeout=60,
                                 cookies={DESK_COOKIE: site.desk_sid}) as desk:
        r = await desk.post("/sync", data={"csrf_token": csrf((await desk.get("/inbox")).text)})
        assert r.status_code == 303
        inbox = (await desk.get("/inbox", params={"q": tip_text})).text
        found = re.findall(r'href="/cases/(\d+)"', inbox)
        assert len(found) == 1, inbox
        case_page = (await desk.get(f"/cases/{found[0]}")).text
        r = await desk.post(f"/cases/{found[0]}/reply", data={"csrf_token": csrf(case_page), "text": reply})
        assert r.status_code == 303, r.text


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                   args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


# --- what is checked on every page -----------------------------------------------------------

Visit = Callable[[str], Awaitable[None]]

# The first element Tab reaches must be a link to <main>, and <main> must be what it names.
SKIP_LINK_JS = """() => {
  const first = document.querySelector('a[href], button, input:not([type=hidden]), select, textarea, [tabindex]');
  const main = document.querySelector('main');
  if (!first || first.tagName !== 'A' || !main || !main.id) return 'no skip link: first focusable is ' + (first ? first.outerHTML.slice(0, 80) : 'none');
  return first.getAttribute('href') === '#' + main.id ? '' : 'skip link ' + first.getAttribute('href') + ' does not point at main#' + main.id;
}"""
OVERFLOW_JS = "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"


@dataclass
class Audit:
    """axe, the skip link and sideways scrolling on each page a walk visits, then every link
    those pages showed that the walk did not visit."""

    page: Page
    app: str
    lang: str
    widths: tuple[int, ...] = AUDIT_WIDTHS
    axe: bool = True
    findings: list[tuple[str, str, str, int, str]] = field(default_factory=list)  # impact, rule, where, nodes, target
    problems: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)
    runs: int = 0  # axe runs: page states times widths

    async def visit(self, name: str) -> None:
        url = self.page.url
        self.seen.add(urlsplit(url).path)
        for href in await self.page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            parts = urlsplit(href)
            if parts.netloc == urlsplit(url).netloc and parts.scheme in ("http", "https"):
                self.links.add(href.partition("#")[0])
        where = f"{self.app} {self.lang} {name} ({urlsplit(url).path})"
        if problem := await self.page.evaluate(SKIP_LINK_JS):
            self.problems.append(f"{where}: {problem}")
        for width in self.widths:
            await self.page.set_viewport_size({"width": width, "height": HEIGHT})
            scroll, client = await self.page.evaluate(OVERFLOW_JS)
            if scroll > client:
                self.problems.append(f"{where} at {width} px: scrolls sideways ({scroll} > {client} px)")
            if self.axe:
                results = await Axe().run(self.page, options=AXE_OPTIONS)
                self.runs += 1
                for v in results.response["violations"]:
                    targets = " ".join(",".join(n["target"]) for n in v["nodes"][:3])
                    self.findings.append((v["impact"], v["id"], f"{where} at {width} px", len(v["nodes"]), targets))
        await self.page.set_viewport_size({"width": self.widths[0], "height": HEIGHT})

    async def crawl(self) -> int:
        """Every same-site link seen on any page, if it leads to an HTML page not yet audited."""
        done = 0
        while todo := sorted(link for link in self.links if urlsplit(link).path not in self.seen):
            link = todo[0]
            self.seen.add(urlsplit(link).path)
            head = await self.page.request.get(link, max_redirects=0)
            if head.status in (301, 302, 303, 307, 308):
                target = urljoin(link, head.headers["location"])
                if urlsplit(target).path in self.seen:
                    continue
            elif not head.headers.get("content-type", "").startswith("text/html"):
                continue  # a download: no page to audit
            await self.page.goto(link)
            await self.visit(f"link {urlsplit(link).path}")
            done += 1
        return done

    def failing(self, *, failing: bool = True) -> list[str]:
        """Serious and critical findings and any of MUST_PASS (or, failing=False, the rest)."""
        return [self.line(f) for f in self.findings
                if (f[0] in ("serious", "critical") or f[1] in MUST_PASS) == failing]

    @staticmethod
    def line(f: tuple[str, str, str, int, str]) -> str:
        impact, rule, where, nodes, targets = f
        return f"{impact} {rule}: {where}: {nodes} element(s), e.g. {targets}"


async def goto(page: Page, url: str, *, status: int = 200) -> None:
    response = await page.goto(url)
    assert response is not None and response.status == status, (url, response and response.status)


async def click(page: Page, selector: str, *, path: str, status: int = 200) -> None:
    async with page.expect_navigation() as navigation:
        await page.locator(selector).first.click()
    response = await navigation.value
    assert response is not None and response.status == status, (selector, response and response.status)
    assert urlsplit(page.url).path == path, (selector, page.url)


# --- the walks ---------------------------------------------------------------------------------

async def walk_source(page: Page, site: Site, lang: str, visit: Visit) -> None:
    """Every state of the source journey, with the mouse: ``visit`` is called on each page."""
    base = site.source.url
    await goto(page, f"{base}/")
    if lang == "en":  # Hindi is the default; the header's language link switches
        await click(page, 'a[hreflang="en"]', path="/")
    assert await page.locator("html").get_attribute("lang") == lang
    await visit("home")
    await click(page, 'a[href="/generate"]', path="/generate")
    codename = codename_of(await page.content())
    await visit("codename")
    await click(page, 'form[action="/create"] button', path="/submit")
    await visit("submit")
    await page.select_option("#unit", "ps-sadar-bazar")
    await click(page, 'form[action="/submit"] button.primary', path="/submit", status=400)  # empty
    await visit("submit-empty")
    tip = f"{lang} tip {secrets.token_hex(6)}"
    await page.select_option("#unit", "ps-sadar-bazar")
    await page.fill("#text", tip)
    await click(page, 'form[action="/submit"] button.primary', path="/case")
    await visit("case-received")
    await officer_replies(site, tip, f"Reply to the {lang} tip: we are looking into it.")
    await click(page, "form.logout button", path="/logout")
    await visit("logged-out")
    await goto(page, f"{base}/login")
    await visit("login")
    await page.fill("#codename", "not a codename at all")
    await click(page, 'form[action="/login"] button', path="/login", status=403)
    await visit("login-wrong")
    await page.fill("#codename", codename)
    await click(page, 'form[action="/login"] button', path="/case")
    assert await page.locator(".reply-text").count() == 1
    await visit("case-with-reply")
    await click(page, ".reply form button", path="/case")
    await visit("case-reply-deleted")
    await goto(page, f"{base}/no-such-page", status=404)
    await visit("not-found")
    await goto(page, f"{base}/create", status=405)
    await visit("method-not-allowed")


async def walk_desk(page: Page, site: Site, lang: str, visit: Visit) -> None:
    base = site.desk.url
    await goto(page, f"{base}/login")
    if lang == "hi":  # this desk is set to English; the header's language link switches
        await click(page, 'a[hreflang="hi"]', path="/login")
    assert await page.locator("html").get_attribute("lang") == lang
    await visit("login")
    await page.fill("#handle", "officer-a")
    await page.fill("#passphrase", "not the passphrase")
    await page.fill("#code", "000000")
    await click(page, 'form[action="/login"] button', path="/login", status=401)
    await visit("login-wrong")
    await page.fill("#handle", "officer-a")
    await page.fill("#passphrase", PASSPHRASE)
    await page.fill("#code", site.next_code())
    await click(page, 'form[action="/login"] button', path="/")
    await click(page, 'form[action="/sync"] button', path="/inbox")
    await visit("inbox-synced")
    await click(page, 'a.brand', path="/")
    await visit("home")
    await check_charts(page, lang)
    await goto(page, f"{base}/inbox?status=received&q=stall")
    await visit("inbox-filtered")
    await goto(page, f"{base}/inbox?q={site.photo_tip}")
    case_link = page.locator('a[href^="/cases/"]')
    assert await case_link.count() == 1
    await click(page, 'a[href^="/cases/"]', path=str(await case_link.get_attribute("href")))
    await visit("case")
    meta = page.locator('a[href$="/metadata"]')
    await click(page, 'a[href$="/metadata"]', path=str(await meta.get_attribute("href")))
    assert "GPS" in await page.locator("main").inner_text()
    await visit("file-metadata")
    await goto(page, f"{base}/cases/999999", status=404)
    await visit("error")


CHARTS_JS = """() => [...document.querySelectorAll('svg.chart')].map(svg => ({
  desc: svg.querySelector(':scope > desc')?.textContent || '',
  smallest: Math.min(...[...svg.querySelectorAll('text')].map(t => t.getBoundingClientRect().height))}))"""


async def check_charts(page: Page, lang: str) -> None:
    """The home page's charts: their figures in words for a screen reader (an SVG image's
    title names it only), and their labels legible at every width: a chart too wide for a
    phone scrolls in its own box rather than shrinking its text to a few pixels (WCAG 1.1.1,
    1.4.4)."""
    for width in AUDIT_WIDTHS:
        await page.set_viewport_size({"width": width, "height": HEIGHT})
        charts = await page.evaluate(CHARTS_JS)
        assert len(charts) == 4
        for chart in charts:
            assert re.search(r"\d+ खुले, \d+ नए" if lang == "hi" else r"\d+ open, \d+ new", chart["desc"]), chart
            assert chart["smallest"] >= 11, f"chart text {chart['smallest']:.1f} px high at {width} px"
    await page.set_viewport_size({"width": AUDIT_WIDTHS[0], "height": HEIGHT})


# --- the tests ---------------------------------------------------------------------------------

FAULTY_PAGE = """<!doctype html><html lang="en"><head><title>Faulty</title></head><body>
<p style="color:#999">Grey on white</p><div style="width:900px">Wider than a phone</div>
<a href="/elsewhere">a link</a></body></html>"""


async def test_the_audit_flags_a_page_with_known_faults() -> None:
    """Positive control of the checks below: axe runs and reports, the skip-link and
    sideways-scrolling checks fire. Served by Playwright's router; nothing leaves the browser."""
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": AUDIT_WIDTHS[0], "height": HEIGHT})
        await context.route("**/*", lambda route: route.fulfill(body=FAULTY_PAGE, content_type="text/html"))
        audit = Audit(await context.new_page(), "control", "en")
        await goto(audit.page, "http://faulty.test/")
        await audit.visit("faulty")
        await context.close()
    rules = {(impact, rule) for impact, rule, *_ in audit.findings}
    assert {("serious", "color-contrast"), ("moderate", "region"), ("moderate", "landmark-one-main")} <= rules
    assert audit.failing() and audit.runs == len(AUDIT_WIDTHS)
    assert any("no skip link" in p for p in audit.problems)
    assert any("at 360 px: scrolls sideways" in p for p in audit.problems)
    assert not any("at 1280 px: scrolls sideways" in p for p in audit.problems)
    assert audit.links == {"http://faulty.test/elsewhere"}

def report(request: pytest.FixtureRequest, audits: list[Audit]) -> None:
    others = sorted({line for a in audits for line in a.failing(failing=False)})
    pages = sum(len(a.seen) for a in audits)
    say(request, f"\naxe-core: {audits[0].app}: {pages} pages ({sum(a.runs for a in audits)} runs at "
                 f"{' and '.join(map(str, AUDIT_WIDTHS))} px); {len(others)} moderate/minor finding(s)")
    for line in others:
        say(request, f"  {line}")


async def test_axe_finds_nothing_serious_on_any_source_page(site: Site, request: pytest.FixtureRequest) -> None:
    audits = []
    async with chromium() as browser:
        for lang in ("hi", "en"):
            context = await browser.new_context(viewport={"width": AUDIT_WIDTHS[0], "height": HEIGHT})
            audit = Audit(await context.new_page(), "source", lang)
            await walk_source(audit.page, site, lang, audit.visit)
            await audit.crawl()
            await context.close()
            audits.append(audit)
    report(request, audits)
    assert all(len(a.seen) >= 9 for a in audits), [a.seen for a in audits]
    failing = [line for a in audits for line in a.failing()]
    assert failing == [], "\n".join(failing)
    problems = [p for a in audits for p in a.problems]
    assert problems == [], "\n".join(problems)


async def test_axe_finds_nothing_serious_on_any_desk_page(site: Site, request: pytest.FixtureRequest) -> None:
    audits = []
    async with chromium() as browser:
        for lang in ("hi", "en"):
            context = await browser.new_context(viewport={"width": AUDIT_WIDTHS[0], "height": HEIGHT})
            audit = Audit(await context.new_page(), "desk", lang)
            await walk_desk(audit.page, site, lang, audit.visit)
            await audit.crawl()
            await context.close()
            audits.append(audit)
    report(request, audits)
    assert all({"/login", "/", "/inbox", "/cases/999999"} <= a.seen for a in audits)
    failing = [line for a in audits for line in a.failing()]
    assert failing == [], "\n".join(failing)
    problems = [p for a in audits for p in a.problems]
    assert problems == [], "\n".join(problems)


async def test_source_pages_reflow_at_200_and_400_percent_zoom(site: Site) -> None:
    """A 1280 px window at 200% zoom lays pages out in 640 CSS px, at 400% in 320: no page may
    need sideways scrolling to be read (WCAG 1.4.10)."""
    problems = []
    async with chromium() as browser:
        for lang in ("hi", "en"):
            context = await browser.new_context(java_script_enabled=False, device_scale_factor=2,
                                                viewport={"width": ZOOM_WIDTHS[0], "height": HEIGHT})
            audit = Audit(await context.new_page(), "source", lang, widths=ZOOM_WIDTHS, axe=False)
            await walk_source(audit.page, site, lang, audit.visit)
            await context.close()
            problems += audit.problems
    sideways = [p for p in problems if "sideways" in p]
    assert sideways == [], "\n".join(sideways)


# --- the keyboard journey ------------------------------------------------------------------------

FOCUS_JS = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return null;
  const s = getComputedStyle(e), r = e.getBoundingClientRect();
  return {tag: e.tagName.toLowerCase(), html: e.outerHTML.slice(0, 100),
          outline: s.outlineStyle === 'none' ? 0 : parseFloat(s.outlineWidth),
          inView: r.width > 0 && r.height > 0 && r.bottom > 0 && r.right > 0
                  && r.top < innerHeight && r.left < innerWidth};
}"""


@dataclass
class Keyboard:
    """Only Tab, Shift-Tab, Enter and Space move and activate; every stop's focus must show."""

    page: Page
    stops: int = 0
    unseen: list[str] = field(default_factory=list)

    async def focus(self) -> dict[str, Any] | None:
        return await self.page.evaluate(FOCUS_JS)  # type: ignore[no-any-return]

    async def tab_to(self, selector: str, *, back: bool = False, limit: int = 80) -> None:
        for _ in range(limit):
            await self.page.keyboard.press("Shift+Tab" if back else "Tab")
            self.stops += 1
            now = await self.focus()
            if now is not None and (now["outline"] < 2 or not now["inView"]):
                self.unseen.append(f"{urlsplit(self.page.url).path}: {now['html']}")
            if await self.page.evaluate(f"() => document.activeElement.matches({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector} on {self.page.url}")

    async def press(self, key: str, *, path: str, status: int = 200) -> None:
        async with self.page.expect_navigation() as navigation:
            await self.page.keyboard.press(key)
        response = await navigation.value
        assert response is not None and response.status == status, (key, response and response.status)
        assert urlsplit(self.page.url).path == path, (key, self.page.url)

    async def choose(self, selector: str, value: str) -> None:
        """Arrow down a focused <select> to ``value`` (the keys every platform gives a list)."""
        for _ in range(30):
            if await self.page.eval_on_selector(selector, "e => e.value") == value:
                return
            await self.page.keyboard.press("ArrowDown")
        raise AssertionError(f"{value} not reachable in {selector}")


@pytest.mark.parametrize(("lang", "width"), [("hi", 1280), ("en", 360)])
async def test_source_journey_with_the_keyboard_alone(site: Site, lang: str, width: int) -> None:
    async with chromium() as browser:
        context = await browser.new_context(java_script_enabled=False, viewport={"width": width, "height": HEIGHT})
        page = await context.new_page()
        keys = Keyboard(page)
        # Subscribed at once: Playwright turns on file-chooser interception asynchronously, so
        # a listener added just before the key press can miss the chooser it opens.
        choosers: asyncio.Queue[FileChooser] = asyncio.Queue()
        page.on("filechooser", choosers.put_nowait)
        await goto(page, f"{site.source.url}/")
        if lang == "en":  # the language link, from the keyboard too
            await keys.tab_to('a[hreflang="en"]', limit=3)
            await keys.press("Enter", path="/")

        # The skip link comes first, shows when focused, and moves on into <main>.
        await keys.tab_to("a.skip", limit=1)
        assert await page.locator("a.skip").inner_text() == tr(lang, "Skip to main content")
        await page.keyboard.press("Enter")  # same page: no load, only #main
        await page.wait_for_url(re.compile("#main$"))
        await keys.tab_to('a[href="/generate"]', limit=3)
        assert await page.evaluate("() => !!document.activeElement.closest('main')")
        await keys.press("Enter", path="/generate")

        codename = codename_of(await page.content())
        await keys.tab_to('form[action="/create"] button')
        await keys.press("Space", path="/submit")

        tip = f"keyboard tip {secrets.token_hex(6)}"
        await keys.tab_to("#unit")
        await keys.choose("#unit", "ps-sadar-bazar")
        await keys.tab_to('input[name="kind"]')  # a radio group is one stop; arrows pick within it
        await keys.tab_to("#category")
        await keys.choose("#category", "illegal_trade")
        await keys.tab_to("#text")
        await page.keyboard.type(tip)
        await keys.tab_to("#files")
        await page.keyboard.press("Space")
        chooser = await asyncio.wait_for(choosers.get(), 30)
        note: FilePayload = {"name": "note.txt", "mimeType": "text/plain", "buffer": b"seen from the window"}
        await chooser.set_files([note])
        assert await page.eval_on_selector("#files", "e => e.files.length") == 1
        await keys.tab_to("button.primary")
        await keys.press("Enter", path="/case")
        assert await page.locator(".notice").count() == 1

        reply = f"Keyboard reply {secrets.token_hex(4)}"
        await officer_replies(site, tip, reply)

        await keys.tab_to("form.logout button")
        await keys.press("Enter", path="/logout")
        await keys.tab_to('main a[href="/"]')
        await keys.press("Enter", path="/")
        await keys.tab_to('a[href="/login"]')
        await keys.press("Enter", path="/login")
        await keys.tab_to("button.primary")
        await keys.tab_to("#codename", back=True)  # Shift-Tab back to the field
        await page.keyboard.type(codename)
        await keys.press("Enter", path="/case")
        assert await page.locator(".reply-text").all_inner_texts() == [reply]
        await context.close()
    assert keys.stops > 10
    assert keys.unseen == [], "focus not visible (an outline of 2 px or more, on screen):\n" + "\n".join(keys.unseen)


async def test_an_open_inbox_shows_a_new_tip_in_place_with_the_officer_doing_nothing(site: Site) -> None:
    """A real browser sits on the inbox; a source sends a tip. The desk's follower fetches and
    decrypts it, and the inbox's own script puts the row in place: no click, no reload (what
    the officer half-typed in a field is still there), the title counts it, and the browser
    reports no script refused by the page's CSP."""
    from .test_desk_follow import submit_tip

    secret = f"truck with fake number plates {secrets.token_hex(4)}"
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": 1280, "height": HEIGHT})
        await context.add_cookies([{"name": DESK_COOKIE, "value": site.desk_sid, "url": site.desk.url}])
        page = await context.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        await goto(page, f"{site.desk.url}/inbox")
        unseen = re.match(r"\((\d+)\) ", await page.title())
        before = int(unseen.group(1)) if unseen else 0
        await page.evaluate("window.stillThisPage = true")
        await page.fill("input[name=q]", "half-typed")
        await submit_tip(site.source, "ps-sadar-bazar", secret)
        await page.wait_for_function(
            "s => document.querySelector('table.cases tbody').textContent.includes(s)", arg=secret,
            timeout=30_000)
        assert await page.evaluate("window.stillThisPage === true")
        assert await page.input_value("input[name=q]") == "half-typed"
        assert (await page.title()).startswith(f"({before + 1}) ")
        assert await page.text_content("#live-news") == "New cases have come in."
        assert refused == []
        await context.close()
