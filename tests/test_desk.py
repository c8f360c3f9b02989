"""The desk against a real gateway process, with real gpg and a real database: the desk itself
runs in-process (through httpx's ASGI transport, so it is driven like a browser would), and
reaches the gateway only over loopback HTTP."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import socket
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pyotp
import pytest
from quart import Quart
from sqlalchemy import select, update

from cpcp.codenames import generate_codename
from cpcp.models import AuditEntry, Case, Document, DocumentRole, Officer
from cpcp.services import CoreServices
from journalist_app.desk import cache as cache_module
from journalist_app.desk import create_app, filemeta
from journalist_app.desk.cache import Cache
from journalist_app.desk.client import GatewayClient
from journalist_app.desk.errors import ConfigError, GatewayUnreachable, Unauthorized
from journalist_app.desk.settings import DeskSettings, load_desk_settings

from .conftest import FPR, ROOT, Deployment
from .helpers import csrf
from .servers import Server, files_containing, start_server, write_desk_config
from .test_gateway import PASSPHRASE

DESK = ROOT / "journalist_app" / "desk"
DESK_URL = "http://127.0.0.1:8090"


# -- builders ---------------------------------------------------------------------------------


def _ifd(entries: dict[int, tuple[int, int, bytes]], offset: int) -> bytes:
    """One big-endian TIFF IFD at ``offset`` with its out-of-line values after it."""
    data_at = offset + 2 + 12 * len(entries) + 4
    head, data = struct.pack(">H", len(entries)), b""
    for tag, (typ, count, payload) in sorted(entries.items()):
        if len(payload) <= 4:
            value = payload.ljust(4, b"\0")
        else:
            value = struct.pack(">I", data_at + len(data))
            data += payload + (b"\0" if len(payload) % 2 else b"")
        head += struct.pack(">HHI", tag, typ, count) + value
    return head + struct.pack(">I", 0) + data


def exif_tiff(*, make: str, model: str, serial: str, lat: tuple[int, int, int], lon: tuple[int, int, int]) -> bytes:
    """EXIF as a phone writes it: device, time, serial number and a GPS position (DMS)."""

    def ascii(text: str) -> tuple[int, int, bytes]:
        raw = text.encode() + b"\0"
        return 2, len(raw), raw

    def dms(parts: tuple[int, int, int]) -> tuple[int, int, bytes]:
        d, m, centisec = parts
        return 5, 3, struct.pack(">IIIIII", d, 1, m, 1, centisec, 100)

    exif = {0x9003: ascii("2025:03:14 21:07:33"), 0xA431: ascii(serial)}
    gps = {0x01: ascii("N"), 0x02: dms(lat), 0x03: ascii("E"), 0x04: dms(lon)}

    def ifd0(exif_at: int, gps_at: int) -> bytes:
        return _ifd({0x010F: ascii(make), 0x0110: ascii(model),
                     0x8769: (4, 1, struct.pack(">I", exif_at)), 0x8825: (4, 1, struct.pack(">I", gps_at))}, 8)

    first = ifd0(0, 0)
    exif_at = 8 + len(first)
    exif_ifd = _ifd(exif, exif_at)
    gps_at = exif_at + len(exif_ifd)
    return b"MM\x00*" + struct.pack(">I", 8) + ifd0(exif_at, gps_at) + exif_ifd + _ifd(gps, gps_at)


def jpeg_with_gps(marker: bytes = b"") -> bytes:
    tiff = exif_tiff(make="Xiaomi", model="Redmi Note 12", serial="SN-4711", lat=(26, 50, 1234), lon=(80, 56, 4500))
    app1 = b"Exif\x00\x00" + tiff
    return (b"\xff\xd8" + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
            + b"\xff\xfe" + struct.pack(">H", len(marker) + 2 + 4) + b"cmt " + marker
            + b"\xff\xda\x00\x08\x01\x01\x00\x00?\x00" + os.urandom(64) + b"\xff\xd9")


def png_with_exif() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    tiff = exif_tiff(make="Canon", model="EOS 200D", serial="0123", lat=(28, 36, 0), lon=(77, 12, 0))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", b"Author\x00Ramesh Kumar") + chunk(b"eXIf", tiff)
            + chunk(b"IDAT", zlib.compress(b"\x00\x00")) + chunk(b"IEND", b""))


async def make_tip(core: CoreServices, unit_slug: str, text: str, *, kind: str = "information",
                   category: str | None = "illegal_trade", files: Sequence[tuple[str, str, bytes]] = ()) -> int:
    """A source's tip with files, stored through the core's intake as the source app does."""
    login = await core.sources.create(generate_codename())
    unit = await core.cases.unit_by_slug(unit_slug)
    async with core.intake.draft(unit) as draft:
        for name, ctype, data in files:
            await draft.open_file(name, ctype)
            await draft.write_file(data)
        await draft.add_message({"follow_up": False, "unit": unit_slug, "text": text, "language": "hi",
                                 "kind": kind, "category": category, "place": "Old market"})
        await draft.commit(source_id=login.source_id, unit=unit)
    case = await core.cases.case_of_source(login.source_id)
    assert case is not None
    return case.id


# -- fixtures and browser helpers -------------------------------------------------------------


@pytest.fixture
def gateway_server(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment, app="gateway")
    yield srv
    srv.stop()


@pytest.fixture
async def totp(core: CoreServices) -> pyotp.TOTP:
    return pyotp.TOTP(await core.officer_auth.enrol("officer-a", PASSPHRASE))


@pytest.fixture
def desk_settings(tmp_path: Path, gateway_server: Server, officer_gnupg: Path) -> DeskSettings:
    # These tests count what the Sync button fetches: no follower fetching behind their back
    # (tests/test_desk_follow.py tests following).
    return load_desk_settings(write_desk_config(tmp_path / "desk", gateway_server.url, officer_gnupg),
                              env={"CPCP_DESK_FOLLOW": "false"})


@pytest.fixture
async def desk_app(desk_settings: DeskSettings) -> AsyncIterator[Quart]:
    app = create_app(desk_settings)
    async with app.test_app():
        yield app


@pytest.fixture
async def browser(desk_app: Quart) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=desk_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url=DESK_URL,
                                 follow_redirects=False, timeout=60) as client:
        yield client


def code(totp: pyotp.TOTP, steps_ago: int = 0) -> str:
    return totp.at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30 * steps_ago))


async def desk_login(browser: httpx.AsyncClient, totp: pyotp.TOTP, *, steps_ago: int = 0) -> None:
    page = (await browser.get("/login")).text
    r = await browser.post("/login", data={"csrf_token": csrf(page), "handle": "officer-a",
                                           "passphrase": PASSPHRASE, "code": code(totp, steps_ago)})
    assert r.status_code == 303 and r.headers["location"] == "/", r.text


async def desk_post(browser: httpx.AsyncClient, path: str, data: dict[str, str] | None = None,
                    *, token_from: str = "/inbox") -> httpx.Response:
    token = csrf((await browser.get(token_from)).text)
    return await browser.post(path, data={"csrf_token": token, **(data or {})})


async def desk_sync(browser: httpx.AsyncClient) -> str:
    r = await desk_post(browser, "/sync")
    assert r.status_code == 303
    return (await browser.get(r.headers["location"])).text


# -- the desk imports nothing of the server ---------------------------------------------------


BANNED = ("cpcp", "journalist_app.gateway", "source_app")


def server_imports(source: str, module: str) -> list[str]:
    """Imports in ``source`` (the module ``module``) that reach server code, dynamic ones too."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                found.append(f"dynamic import at line {node.lineno}")
        found += [n for n in names if any(n == b or n.startswith(b + ".") for b in BANNED)]
    return found


def test_desk_imports_nothing_of_the_server() -> None:
    modules = sorted(DESK.rglob("*.py"))
    assert len(modules) >= 15
    for path in modules:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        assert server_imports(path.read_text(encoding="utf-8"), module) == [], path
    # The check does catch each way of reaching the server.
    here = "journalist_app.desk.views"
    assert server_imports("from cpcp.db import x", here)
    assert server_imports("import cpcp", here)
    assert server_imports("from .. import gateway", here)
    assert server_imports("from ..gateway.api import install", here)
    assert server_imports("import source_app.views as v", here)
    assert server_imports("importlib.import_module('cpcp')", here)
    assert not server_imports("from .client import GatewayClient", here)


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_file_and_environment_and_fail_closed(tmp_path: Path, officer_gnupg: Path) -> None:
    config = write_desk_config(tmp_path, "http://127.0.0.1:8081", officer_gnupg)
    settings = load_desk_settings(config, env={"CPCP_DESK_PORT": "8099"})
    assert settings.port == 8099 and settings.data_dir == tmp_path / "data"
    assert settings.allowed_hosts == {"127.0.0.1:8099", "localhost:8099", "[::1]:8099"}
    onion = "http://" + "a" * 56 + ".onion"
    ok = load_desk_settings(config, env={"CPCP_DESK_GATEWAY_URL": onion,
                                         "CPCP_DESK_SOCKS_PROXY": "socks5h://127.0.0.1:9050"})
    assert ok.socks_proxy == "socks5h://127.0.0.1:9050"
    refused = {
        "CPCP_DESK_GATEWAY_URL": onion,  # off this machine without Tor
        "CPCP_DESK_SOCKS_PROXY": "socks5://127.0.0.1:9050",  # local DNS would leak names
        "CPCP_DESK_HOST": "0.0.0.0",  # the desk must not listen on the network
        "CPCP_DESK_EXPORT_DIR": str(tmp_path / "data" / "exports"),  # plaintext in the cache
        "CPCP_DESK_COLOUR": "blue",
    }
    for key, value in refused.items():
        with pytest.raises(ConfigError):
            load_desk_settings(config, env={key: value})
    with pytest.raises(ConfigError, match="no private key"):
        empty = tmp_path / "empty-gnupg"
        empty.mkdir(mode=0o700)
        create_app(load_desk_settings(config, env={"CPCP_DESK_GNUPG_HOME": str(empty)}))


# -- embedded metadata ------------------------------------------------------------------------


def test_photo_metadata_shows_gps_and_device() -> None:
    report = filemeta.inspect(jpeg_with_gps(b"hello"))
    fields = {f.name: f for f in report.fields}
    assert report.kind == "JPEG image"
    assert fields["Make"].value == "Xiaomi" and fields["Model"].value == "Redmi Note 12"
    assert fields["BodySerialNumber"].value == "SN-4711" and fields["BodySerialNumber"].risk == "high"
    assert fields["DateTimeOriginal"].value == "2025:03:14 21:07:33"
    lat, lon = 26 + 50 / 60 + 12.34 / 3600, 80 + 56 / 60 + 45 / 3600
    assert report.position == (round(lat, 6), round(lon, 6))
    assert {"GPSLatitude", "Position"} <= {f.name for f in report.identifying}
    png = filemeta.inspect(png_with_exif())
    names = {f.name: f.value for f in png.fields}
    assert png.kind == "PNG image" and names["Author"] == "Ramesh Kumar" and names["Model"] == "EOS 200D"
    assert png.position is not None and png.position[0] == pytest.approx(28.6)
    assert filemeta.inspect(b"plain text").kind == "unknown"
    pdf = filemeta.inspect(b"%PDF-1.4\n1 0 obj << /Author (S. Verma) /Producer (LibreOffice) >> endobj")
    assert {f.name: f.value for f in pdf.fields}["Author"] == "S. Verma"


def test_metadata_reader_survives_damaged_files() -> None:
    rng = secrets.SystemRandom()
    samples = [jpeg_with_gps(), png_with_exif()]
    for _ in range(300):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.randrange(4, len(data) + 1)
        filemeta.inspect(bytes(data[:cut]))  # never raises, whatever the bytes


# -- sync: incremental and resumable ----------------------------------------------------------


class _Broken(httpx.AsyncByteStream):
    """A response body that stops half-way, as a dropped Tor circuit would."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk[: len(chunk) // 2]
            raise httpx.ReadError("connection lost")

    async def aclose(self) -> None:
        await self._inner.aclose()


class Flaky(httpx.AsyncBaseTransport):
    """Real HTTP to the gateway; the n-th document download (if set) is cut off mid-body."""

    def __init__(self, break_at: int | None = None) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.break_at = break_at
        self.documents: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if "/documents/" in request.url.path:
            self.documents.append(request.url.path)
            if len(self.documents) == self.break_at:
                assert isinstance(response.stream, httpx.AsyncByteStream)
                return httpx.Response(response.status_code, headers=response.headers,
                                      stream=_Broken(response.stream), request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_sync_is_incremental_and_resumes_after_an_interrupted_download(
    core: CoreServices, gateway_server: Server, totp: pyotp.TOTP, tmp_path: Path
) -> None:
    for i in range(3):
        await make_tip(core, "ps-sadar-bazar", f"tip {i}", files=[(f"f{i}.bin", "application/octet-stream",
                                                                  os.urandom(300_000))])
    theirs = await make_tip(core, "cell-cyber", "another unit's tip")
    flaky = Flaky(break_at=4)
    client = GatewayClient(http=httpx.AsyncClient(base_url=gateway_server.url, transport=flaky))
    try:
        token = await client.login("officer-a", PASSPHRASE, code(totp))
        officer = client.with_token(token.token)
        cache = Cache(tmp_path / "cache")
        (tmp_path / "cache" / ".partial").mkdir(parents=True)
        (tmp_path / "cache" / ".partial" / "7.gpg.dead.part").write_bytes(b"left by a killed desk")
        await cache.open()
        assert list(cache.partial_dir.iterdir()) == []  # swept at start

        with pytest.raises(ExceptionGroup) as failed:  # downloads run several at a time
            await cache.sync(officer)
        assert failed.group_contains(GatewayUnreachable)
        assert len(flaky.documents) >= 4  # the 4th was cut off; others may have been in flight
        complete = sorted(int(p.stem) for p in (cache.root / "docs").iterdir())
        assert len(complete) < 6 and list(cache.partial_dir.iterdir()) == []  # nothing half-written
        assert theirs not in {c.id for c in cache.cases()}

        # The next sync fetches exactly what is missing; the one after fetches nothing.
        flaky.documents.clear()
        report = await cache.sync(officer)
        missing = 6 - len(complete)
        assert (report.cases, report.downloaded, report.already_cached) == (3, missing, len(complete))
        assert len(flaky.documents) == missing
        assert not {f"/api/v1/documents/{d}" for d in complete} & set(flaky.documents)
        flaky.documents.clear()
        report = await cache.sync(officer)
        assert (report.downloaded, report.already_cached, flaky.documents) == (0, 6, [])

        # Every cached object is the server's ciphertext, byte for byte.
        async with core.sessions() as db:
            docs = (await db.scalars(select(Document))).all()
        stored = {d.id: core.store.read(d.object_name) for d in docs}
        for path in (cache.root / "docs").iterdir():
            assert path.read_bytes() == stored[int(path.stem)]
        # A fresh cache object over the same folder knows what is there.
        again = Cache(cache.root)
        await again.open()
        assert len(again.cases()) == 3 and all(again.has_document(d) for d in complete)
    finally:
        await client.aclose()


def test_desk_and_gateway_agree_on_the_batch_limits() -> None:
    """The desk carries its own copy (it imports nothing of the server)."""
    from journalist_app.desk import client as desk_client
    from journalist_app.gateway import schemas

    for name in ("BATCH_MAX_IDS", "BATCH_MAX_OBJECT", "BATCH_MAX_BYTES"):
        assert getattr(desk_client, name) == getattr(schemas, name), name


def test_batches_are_cut_by_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "BATCH_MAX_IDS", 3)
    monkeypatch.setattr(cache_module, "BATCH_MAX_BYTES", 100)
    docs = [(1, 10), (2, 10), (3, 10), (4, 10), (5, 60), (6, 50), (7, 100)]
    assert cache_module._batches(docs) == [[(1, 10), (2, 10), (3, 10)], [(4, 10), (5, 60)], [(6, 50)], [(7, 100)]]
    assert cache_module._batches([]) == []


async def test_sync_fetches_small_messages_in_batches_and_falls_back_one_by_one(
    core: CoreServices, gateway_server: Server, totp: pyotp.TOTP, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cache_module, "BATCH_MAX_IDS", 2)  # 5 messages -> batches of 2, 2, 1
    cases = [await make_tip(core, "ps-sadar-bazar", f"tip {i}") for i in range(4)]
    cases.append(await make_tip(core, "ps-sadar-bazar", "with a video",
                                files=[("v.mp4", "video/mp4", os.urandom(300_000))]))
    async with core.sessions() as db:
        docs = {d.id: d for d in (await db.scalars(select(Document))).all()}
    gone = min(docs)  # lost from the server's store: its batch must fall back to single downloads
    core.store.path(docs[gone].object_name).unlink()
    flaky = Flaky()
    client = GatewayClient(http=httpx.AsyncClient(base_url=gateway_server.url, transport=flaky))
    try:
        officer = client.with_token((await client.login("officer-a", PASSPHRASE, code(totp))).token)
        cache = Cache(tmp_path / "cache")
        await cache.open()
        report = await cache.sync(officer)
        assert (report.cases, report.downloaded, report.unavailable) == (5, 5, 1)
        batches = [p for p in flaky.documents if p.endswith("/batch")]
        singles = sorted(int(p.rsplit("/", 1)[1]) for p in flaky.documents if not p.endswith("/batch"))
        assert len(batches) == 4  # [gone, gone+1] refused naming gone, then [gone+1]; 2 more
        video = next(i for i, d in docs.items() if d.role == DocumentRole.FILE)
        assert docs[video].size > 256 * 1024
        assert singles == sorted([gone, video])  # the gone one (to count it), the large file
        for doc_id, doc in docs.items():
            if doc_id != gone:
                assert cache.document_path(doc_id).read_bytes() == core.store.read(doc.object_name)
        assert not cache.has_document(gone) and list(cache.partial_dir.iterdir()) == []
        flaky.documents.clear()
        report = await cache.sync(officer)
        assert (report.downloaded, report.already_cached, report.unavailable) == (0, 5, 1)
        # Only the gone one is asked for again (in a batch of its own, then alone).
        assert flaky.documents == ["/api/v1/documents/batch", f"/api/v1/documents/{gone}"]
    finally:
        await client.aclose()
    async with core.sessions() as db:
        actions = [e.action for e in (await db.scalars(select(AuditEntry))).all()]
    assert actions.count("download_documents") == 3  # refused batches recorded nothing


# -- the web app ------------------------------------------------------------------------------


async def test_plaintext_never_lands_in_the_desk_data_dir(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP, desk_settings: DeskSettings
) -> None:
    canary = f"CANARY-{secrets.token_hex(10)}"
    file_canary = secrets.token_hex(16).encode()
    photo = jpeg_with_gps(file_canary)
    await make_tip(core, "ps-sadar-bazar", f"Liquor sold behind the temple {canary}",
                   files=[("photo.jpg", "image/jpeg", photo)])
    await desk_login(browser, totp)
    inbox = await desk_sync(browser)
    assert "Synced 1 case. 2 new objects downloaded." in inbox
    case_url = re.search(r'href="(/cases/\d+)"', inbox)
    assert case_url and "Liquor sold" in inbox
    page = (await browser.get(case_url.group(1))).text
    assert canary in page and "photo.jpg" in page and "Old market" in page
    download = re.search(r'href="(/cases/\d+/files/\d+)"', page)
    assert download
    r = await browser.get(download.group(1))
    assert r.status_code == 200 and r.content == photo
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"].startswith('attachment; filename="photo.jpg"')
    meta = (await browser.get(download.group(1) + "/metadata")).text
    assert "Redmi Note 12" in meta and "26.836761" in meta and "could identify the source" in meta
    assert (await browser.get(f"/inbox?q={canary[-8:]}")).text.count('href="/cases/') == 1

    data_dir = desk_settings.data_dir
    ciphertexts = list((data_dir / "cache" / "docs").iterdir())
    assert len(ciphertexts) == 2  # the control: the search below looks at real files
    control = data_dir / "control"
    control.write_bytes(canary.encode())
    assert files_containing([data_dir], [canary.encode()]) == [f"{control}: {canary.encode()[:20]!r}"]
    control.unlink()
    needles = [canary.encode(), file_canary, b"Liquor", b"Redmi", b"photo.jpg"]
    assert files_containing([data_dir], needles) == []
    assert not desk_settings.export_dir.exists()


async def test_csrf_host_check_and_headers(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP, desk_app: Quart
) -> None:
    await make_tip(core, "ps-sadar-bazar", "a tip")
    # DNS rebinding: any Host but the desk's loopback address is refused, before anything else.
    for host in ("evil.example", "evil.example:8090", "127.0.0.1:9999", "192.168.1.5:8090"):
        r = await browser.get("/login", headers={"Host": host})
        assert r.status_code == 421, host
    for host in ("127.0.0.1:8090", "localhost:8090"):
        assert (await browser.get("/login", headers={"Host": host})).status_code == 200
    # Login without a token, or with another session's token, is refused before the gateway.
    other = csrf((await browser.get("/login")).text)
    browser.cookies.clear()
    body = {"handle": "officer-a", "passphrase": PASSPHRASE, "code": code(totp)}
    assert (await browser.post("/login", data=body)).status_code == 400
    assert (await browser.post("/login", data={**body, "csrf_token": other})).status_code == 400
    async with core.sessions() as db:
        assert "login" not in (await db.scalars(select(AuditEntry.action))).all()
    await desk_login(browser, totp)
    for path in ("/sync", "/logout", "/cases/1/export", "/cases/1/reply", "/cases/1/update"):
        r = await browser.post(path, data={"csrf_token": "forged", "text": "x", "status": "closed"})
        assert r.status_code == 400, path
    page = await browser.get("/inbox")
    assert page.status_code == 200 and "a tip" not in page.text  # nothing synced by the refused POST
    headers = page.headers
    assert "default-src 'none'" in headers["Content-Security-Policy"] and "script-src" not in headers["Content-Security-Policy"]
    assert headers["Cache-Control"] == "no-store" and headers["X-Frame-Options"] == "DENY"
    assert "server" not in headers and "<script" not in page.text
    assert "Set-Cookie" not in headers or "SameSite=Strict" in headers["Set-Cookie"]
    # Logged out: pages redirect to the login, the token is gone from the desk's memory.
    r = await desk_post(browser, "/logout")
    assert r.status_code == 303 and (await browser.get("/inbox")).headers["location"] == "/login"
    assert all("token" not in data for _, data in desk_app.extensions["cpcp_desk"].sessions._data.values())


async def test_export_writes_files_and_a_manifest_that_verifies_and_is_audited(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP, desk_settings: DeskSettings
) -> None:
    files = [("evidence.pdf", "application/pdf", b"%PDF-1.4 " + os.urandom(50_000)),
             ("../../etc/passwd", "text/plain", b"not a path"),
             ("video.mp4", "video/mp4", os.urandom(200_000))]
    case_id = await make_tip(core, "control-room", "procession route blocked", kind="event_feedback",
                             category=None, files=files)
    await desk_login(browser, totp)
    await desk_sync(browser)
    r = await desk_post(browser, f"/cases/{case_id}/export", token_from=f"/cases/{case_id}")
    assert r.status_code == 303
    async with core.sessions() as db:
        entry = (await db.scalars(select(AuditEntry).where(AuditEntry.action == "export"))).one()
    details = json.loads(entry.details)
    assert details["files"] == "3" and "evidence" not in entry.details  # no file name to the server
    folder = next(desk_settings.export_dir.iterdir())
    assert folder.name.count("-") == 4 and not folder.name.startswith(".")
    done = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=folder, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": OK") == 4  # three files and message.json
    exported = sorted(p.name for p in (folder / "files").iterdir())
    assert len(exported) == 3 and all("/" not in n and not n.startswith(".") for n in exported)
    by_suffix = {n.split("-", 1)[1]: (folder / "files" / n).read_bytes() for n in exported}
    assert by_suffix["evidence.pdf"] == files[0][2] and by_suffix["video.mp4"] == files[2][2]
    assert by_suffix["_.._etc_passwd"] == b"not a path"
    message = json.loads((folder / "message.json").read_text())
    assert message["submissions"][0]["message"]["text"] == "procession route blocked"
    # Times for a person reading the export: the deployment's clock, its offset and zone named.
    assert message["time_zone"] == "Asia/Kolkata"
    received = dt.datetime.fromisoformat(message["submissions"][0]["received_at"])
    assert received.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert abs(received - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=10)
    assert details["manifest_sha256"] == hashlib.sha256((folder / "MANIFEST.sha256").read_bytes()).hexdigest()
    assert oct((folder / "message.json").stat().st_mode & 0o777) == "0o600"
    # Exporting again does not overwrite evidence.
    r = await desk_post(browser, f"/cases/{case_id}/export", token_from=f"/cases/{case_id}")
    assert "exists already" in (await browser.get(r.headers["location"])).text
    assert len(list(desk_settings.export_dir.iterdir())) == 1


async def test_home_charts_inbox_filters_and_case_changes(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP
) -> None:
    a = await make_tip(core, "ps-sadar-bazar", "liquor", kind="information", category="illegal_trade")
    b = await make_tip(core, "control-room", "jam at the crossing", kind="complaint", category="traffic")
    await make_tip(core, "cell-cyber", "not officer-a's", kind="complaint", category="other")
    await desk_login(browser, totp)
    await desk_sync(browser)
    home = (await browser.get("/")).text
    assert home.count("<svg") == 4 and "Sadar Bazar Police Station" in home and "Traffic or road accident" in home
    assert re.search(r"<strong>2</strong> new", home)

    async def listed(query: str) -> set[int]:
        page = (await browser.get(f"/inbox?{query}")).text
        return {int(n) for n in re.findall(r'href="/cases/(\d+)"', page)}

    assert await listed("") == {a, b}
    assert await listed("kind=complaint") == {b}
    assert await listed("category=illegal_trade") == {a}
    assert await listed("unit=control-room") == {b}
    today = dt.datetime.now(dt.UTC).date()
    assert await listed(f"since={today}&until={today}") == {a, b}
    assert await listed(f"until={today - dt.timedelta(days=1)}") == set()
    async with core.sessions() as db:
        b_id = (await db.scalars(select(Officer.id).where(Officer.handle == "officer-b"))).one()
    r = await desk_post(browser, f"/cases/{b}/update", {"status": "under_review", "priority": "urgent",
                                                         "assignee": str(b_id), "labels": "procession, jam"},
                        token_from=f"/cases/{b}")
    assert r.status_code == 303
    assert await listed("status=under_review") == {b}
    async with core.sessions() as db:
        case = await db.get(Case, b)
        assert case is not None and (case.status.value, case.priority.value, case.assignee_id) == (
            "under_review", "urgent", b_id)
        assert sorted(case.labels or []) == ["jam", "procession"]
    # An unknown assignee is refused by the form and changes nothing.
    r = await desk_post(browser, f"/cases/{b}/update", {"status": "closed", "priority": "low", "assignee": "999"},
                        token_from=f"/cases/{b}")
    assert r.status_code == 400
    assert await listed("status=under_review") == {b}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def test_the_gateway_is_reached_through_socks_with_names_resolved_by_the_proxy(
    gateway_server: Server, tmp_path: Path, officer_gnupg: Path
) -> None:
    """A stand-in for Tor's SOCKS port: it sees the gateway's name, not an address the desk
    looked up (``.invalid`` cannot resolve, so local DNS would have failed)."""
    seen: list[tuple[int, str, int]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, methods = await reader.readexactly(2)
        await reader.readexactly(methods)
        writer.write(b"\x05\x00")
        _, _, _, atyp = await reader.readexactly(4)
        if atyp == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            host = socket.inet_ntoa(await reader.readexactly(4))
        port = int.from_bytes(await reader.readexactly(2), "big")
        seen.append((atyp, host, port))
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", gateway_server.port)
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    config = write_desk_config(tmp_path, "http://officer-gateway.invalid:8081", officer_gnupg)
    settings = load_desk_settings(config, env={"CPCP_DESK_SOCKS_PROXY": f"socks5h://127.0.0.1:{proxy_port}"})
    client = GatewayClient.from_settings(settings)
    try:
        with pytest.raises(Unauthorized):
            await client.login("officer-a", "not the passphrase at all", "123456")
    finally:
        await client.aclose()
        proxy.close()
        await proxy.wait_closed()
    assert seen == [(3, "officer-gateway.invalid", 8081)]


async def test_a_tip_stored_before_names_left_the_literal_packet_still_shows_its_names(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP, desk_settings: DeskSettings,
    officer_gnupg: Path,
) -> None:
    """Files used to be encrypted with ``--set-filename NAME``; such tips read as before."""
    photo = b"\xff\xd8\xff\xe0" + os.urandom(20_000)
    case_id = await make_tip(core, "ps-sadar-bazar", "old tip", files=[("IMG_0042.jpg", "image/jpeg", photo)])
    async with core.sessions() as db:
        doc = (await db.scalars(select(Document).where(Document.role == DocumentRole.FILE))).one()
    old_style = subprocess.run(
        ["gpg", "--homedir", str(officer_gnupg), "--batch", "--quiet", "--trust-model", "always",
         "--compress-algo", "none", "--encrypt", "--recipient", FPR["officer-a"], "--recipient", FPR["oversight"],
         "--set-filename", "IMG_0042.jpg"], input=photo, capture_output=True, check=True).stdout
    core.store.path(doc.object_name).write_bytes(old_style)
    async with core.sessions.begin() as db:
        await db.execute(update(Document).where(Document.id == doc.id).values(size=len(old_style)))
    await desk_login(browser, totp)
    await desk_sync(browser)
    page = (await browser.get(f"/cases/{case_id}")).text
    assert "IMG_0042.jpg" in page
    download = re.search(r'href="(/cases/\d+/files/\d+)"', page)
    assert download
    r = await browser.get(download.group(1))
    assert r.content == photo and "IMG_0042.jpg" in r.headers["content-disposition"]
    r = await desk_post(browser, f"/cases/{case_id}/export", token_from=f"/cases/{case_id}")
    folder = next(desk_settings.export_dir.iterdir())
    exported = list((folder / "files").iterdir())
    assert [p.name.split("-", 1)[1] for p in exported] == ["IMG_0042.jpg"] and exported[0].read_bytes() == photo


async def test_a_case_deleted_on_the_server_leaves_the_desk_at_the_next_sync(
    core: CoreServices, browser: httpx.AsyncClient, totp: pyotp.TOTP, desk_settings: DeskSettings,
    desk_app: Quart,
) -> None:
    """Retention on the server: the desk's next sync drops the case, its ciphertext on disk
    and what it had decrypted in memory; the other cases stay."""
    from cpcp.models import CaseStatus, Reply, Submission
    from cpcp.purge import Purger
    from cpcp.retention import RetentionPolicy, Rules

    gone = await make_tip(core, "ps-sadar-bazar", "Retained away soon",
                          files=[("photo.jpg", "image/jpeg", jpeg_with_gps())])
    kept = await make_tip(core, "ps-sadar-bazar", "Still open")
    async with core.sessions.begin() as db:  # and an officer's reply, in the cache too
        public_id = (await db.get(Case, gone)).public_id  # type: ignore[union-attr]
        name = core.store.write_bytes(b"reply ciphertext", case_public_id=public_id, role="reply")
        db.add(Reply(case_id=gone, object_name=name, size=16))
    await desk_login(browser, totp)
    assert "Synced 2 cases. 4 new objects downloaded." in await desk_sync(browser)
    assert "Retained away soon" in (await browser.get(f"/cases/{gone}")).text  # decrypted now
    cache = desk_settings.cache_dir
    casebook = desk_app.extensions["cpcp_desk"].casebook
    async with core.sessions() as db:
        docs = dict((await db.execute(select(Document.id, Submission.case_id)
                                      .join(Submission, Document.submission_id == Submission.id))).all())
    mine = [d for d, c in docs.items() if c == gone]
    assert len(mine) == 2 and all((cache / "docs" / f"{d}.gpg").exists() for d in mine)
    assert (cache / "cases" / f"{gone}.json").exists() and len(list((cache / "replies").iterdir())) == 1
    assert set(mine) & set(casebook._messages)  # the decrypted message is held in memory

    now = dt.datetime.now(dt.UTC)
    async with core.sessions.begin() as db:
        await db.execute(update(Case).where(Case.id == gone).values(
            status=CaseStatus.CLOSED, updated_at=now - dt.timedelta(days=31)))
    purger = Purger(sessions=core.sessions, audit=core.audit, store=core.store,
                    source_keys=core.source_keys, cases=core.cases)
    report = await purger.purge(RetentionPolicy(default=Rules(closed_days=30)), now)
    assert [r.case_id for r in report.removed] == [gone]

    inbox = await desk_sync(browser)
    assert "Synced 1 case." in inbox and "1 case removed (deleted on the server or no longer yours)." in inbox
    assert not (cache / "cases" / f"{gone}.json").exists()
    assert not any((cache / "docs" / f"{d}.gpg").exists() for d in mine)
    assert list((cache / "replies").iterdir()) == []
    assert sorted(int(p.stem) for p in (cache / "docs").iterdir()) == [d for d, c in docs.items() if c == kept]
    assert not set(mine) & set(casebook._messages)
    assert (await browser.get(f"/cases/{gone}")).status_code == 404
    assert "Still open" in (await browser.get(f"/cases/{kept}")).text
    assert "Retained away" not in (await browser.get("/inbox")).text
