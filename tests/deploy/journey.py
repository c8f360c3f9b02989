"""A source and an officer using a deployed site: the source through the source onion from the
test host's tor, the officer at the desk of the deployed workstation (through a Unix socket
forwarded into the workstation's network namespace)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyotp

from ..containers import Container
from ..helpers import csrf
from ..servers import begin, send
from ..tor.tornet import ANSWER_WITHIN, SOCKS_FAILURES, through_tor

HERE = Path(__file__).parent
DESK_PORT = 8090


@dataclass
class Officer:
    handle: str
    passphrase: str
    totp_secret: str
    _used_steps: set[int] = field(default_factory=set)

    def code(self) -> str:
        """A TOTP code not used before (the gateway takes each code once)."""
        totp = pyotp.TOTP(self.totp_secret)
        while True:
            now = dt.datetime.now(dt.UTC)
            step = int(now.timestamp()) // 30
            for candidate in (step, step - 1):  # the gateway accepts the previous step too
                if candidate not in self._used_steps:
                    self._used_steps.add(candidate)
                    return totp.at(candidate * 30)
            time.sleep(1)


@contextmanager
def forwarded(host: Container, port: int, socket_path: Path) -> Iterator[Path]:
    """``socket_path`` on the test host leads to 127.0.0.1:``port`` inside ``host``."""
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.netns}", sys.executable,
                             str(HERE / "netns_forward.py"), str(socket_path), "127.0.0.1", str(port)])
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the forwarder did not start")
            time.sleep(0.05)
        yield socket_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        socket_path.unlink(missing_ok=True)


@asynccontextmanager
async def desk_browser(socket_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
    async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{DESK_PORT}",
                                 timeout=2 * ANSWER_WITHIN) as client:
        yield client


async def with_retries(socks_port: int, onion: str, within: float = 4 * ANSWER_WITHIN) -> None:
    """Until the onion answers (a new client may not have its descriptor yet)."""
    deadline = time.monotonic() + within
    while True:
        try:
            async with through_tor(socks_port, onion, 20) as client:
                await client.get("/")
                return
        except (*SOCKS_FAILURES, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(2)


async def source_sends_tip(socks_port: int, source_onion: str, text: str, photo: bytes) -> str:
    """A new source: codename, then a tip with a photo. Returns the codename."""
    await with_retries(socks_port, source_onion)
    async with through_tor(socks_port, source_onion, ANSWER_WITHIN) as browser:
        codename = await begin(browser)
        r = await send(browser, [
            ("unit", "ps-sadar-bazar"), ("kind", "information"), ("category", "suspicious_vehicle"),
            ("text", text), ("files", "car.jpg", photo, "image/jpeg")])
        assert r.status_code == 303 and r.headers["location"] == "/case", r.text
    return codename


async def desk_login(desk: httpx.AsyncClient, officer: Officer) -> None:
    """Log in at the desk. A code lives 30 s (the gateway takes one step either side), and the
    first request after the officer onion moved can take longer to get through tor (the desk's
    tor tries the old descriptor's introduction points first): a code that aged past its window
    on the way is refused, so then, as an officer would, type the next one, once."""
    for attempt in (1, 2):
        page = (await desk.get("/login")).text
        sent = time.monotonic()
        r = await desk.post("/login", data={"csrf_token": csrf(page), "handle": officer.handle,
                                            "passphrase": officer.passphrase, "code": officer.code()})
        if r.status_code == 303 or attempt == 2 or time.monotonic() - sent < 30:
            break
    assert r.status_code == 303, f"login refused after {time.monotonic() - sent:.0f}s: {r.text}"


async def desk_sync(desk: httpx.AsyncClient) -> str:
    inbox = await desk.get("/inbox")
    r = await desk.post("/sync", data={"csrf_token": csrf(inbox.text)})
    assert r.status_code == 303, r.text
    return (await desk.get("/inbox")).text


async def desk_case_with(desk: httpx.AsyncClient, inbox: str, needle: str) -> tuple[str, str]:
    """(case id, case page) of the case whose page shows ``needle``."""
    for case_id in re.findall(r'href="/cases/(\d+)"', inbox):
        page = (await desk.get(f"/cases/{case_id}")).text
        if needle in page:
            return case_id, page
    raise AssertionError(f"no case at the desk shows {needle!r}")


async def desk_file(desk: httpx.AsyncClient, case_id: str, page: str) -> bytes:
    found = re.search(rf'href="/cases/{case_id}/files/(\d+)"', page)
    assert found, page
    return (await desk.get(f"/cases/{case_id}/files/{found[1]}")).content


async def desk_reply(desk: httpx.AsyncClient, case_id: str, page: str, text: str) -> None:
    r = await desk.post(f"/cases/{case_id}/reply", data={"csrf_token": csrf(page), "text": text})
    assert r.status_code == 303, r.text


async def source_reads_case(socks_port: int, source_onion: str, codename: str) -> str:
    await with_retries(socks_port, source_onion)
    async with through_tor(socks_port, source_onion, ANSWER_WITHIN) as browser:
        page = (await browser.get("/login")).text
        r = await browser.post("/login", data={"csrf_token": csrf(page), "codename": codename})
        assert r.status_code == 303 and r.headers["location"] == "/case", r.text
        return (await browser.get("/case")).text
