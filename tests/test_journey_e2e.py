"""The whole source journey through a real Hypercorn on loopback, with real gpg and a real
database, and the invariants checked on disk afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from cpcp.casework import CaseChanges
from cpcp.models import Case, CaseStatus, Document, Source, Submission
from cpcp.services import build_core

from .conftest import FPR, ROOT, Deployment, gpg_decrypt, gpg_encrypt
from .helpers import codename_of, csrf, multipart
from .servers import AGENT, Server, begin, files_containing, free_port, send, start_server


@pytest.fixture
def server(deployment: Deployment) -> Iterator[Server]:
    srv = start_server(deployment)
    yield srv
    srv.stop()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, follow_redirects=False, timeout=30,
                                 headers={"User-Agent": AGENT}) as c:
        yield c


async def test_whole_journey_and_nothing_readable_left_behind(
    deployment: Deployment, server: Server, client: httpx.AsyncClient, officer_gnupg: Path
) -> None:
    canary = f"CANARY-{secrets.token_hex(12)}"
    file_canary = secrets.token_bytes(16).hex().encode()
    attachment = b"%PDF-1.4 " + file_canary * 2000 + b" trailing bytes"
    # A first-time source, in Hindi (the deployment's default language).
    home = await client.get("/")
    assert home.status_code == 200 and 'lang="hi"' in home.text and "112" in home.text
    codename = await begin(client)
    r = await send(client, [
        ("unit", "ps-sadar-bazar"), ("kind", "information"), ("category", "illegal_trade"),
        ("place", "पुराना बाजार"), ("text", f"अवैध शराब की बिक्री {canary}"),
        ("files", "सबूत.pdf", attachment, "application/pdf"),
    ])
    assert r.status_code == 303 and r.headers["location"] == "/case"
    case_page = await client.get("/case")
    assert case_page.status_code == 200 and 'class="notice"' in case_page.text
    await client.post("/logout", data={"csrf_token": csrf(case_page.text)})
    assert (await client.get("/case")).headers["location"] == "/login"

    # The officer's side, through the core's casework (what the gateway runs for a desk).
    core = build_core(deployment.settings)
    try:
        async with core.sessions() as db:
            case = (await db.scalars(select(Case))).one()
            docs = (await db.scalars(select(Document).order_by(Document.id))).all()
            source = await db.get(Source, case.source_id)
            assert source is not None
        assert case.status is CaseStatus.RECEIVED and case.unit.slug == "ps-sadar-bazar"
        message = json.loads(gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name)))
        assert message["text"] == f"अवैध शराब की बिक्री {canary}"
        assert message["category"] == "illegal_trade" and message["files"][0]["name"] == "सबूत.pdf"
        assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == attachment
        pub = core.source_keys.export_public_key(source.reply_key_fingerprint)
        subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--import"], input=pub.encode(),
                       check=True, capture_output=True)
        reply_canary = f"REPLY-{secrets.token_hex(8)}"
        reply = f"Thank you. We acted on it. {reply_canary}".encode()
        ciphertext = gpg_encrypt(officer_gnupg, reply, [source.reply_key_fingerprint, FPR["officer-a"]])
        officer = await core.officer_auth.identity("officer-a")
        await core.casework.add_reply(officer, case.id, ciphertext)
        await core.casework.update_case(officer, case.id, CaseChanges(status=CaseStatus.ACTION_TAKEN))
    finally:
        await core.close()

    # The source comes back later, on another device, typing the codename loosely, in English.
    async with httpx.AsyncClient(base_url=server.url, follow_redirects=False, timeout=30,
                                 headers={"User-Agent": AGENT}) as later:
        await later.get("/lang/en?next=/login")
        page = (await later.get("/login")).text
        r = await later.post("/login", data={"csrf_token": csrf(page), "codename": codename.upper().replace(" ", "  ")})
        assert r.status_code == 303 and r.headers["location"] == "/case"
        case_page = await later.get("/case")
        assert reply_canary in case_page.text and "Action taken" in case_page.text
        reply_id = case_page.text.split("/replies/")[1].split("/")[0]
        r = await later.post(f"/replies/{reply_id}/delete", data={"csrf_token": csrf(case_page.text)})
        assert r.status_code == 303
        assert reply_canary not in (await later.get("/case")).text

    server.stop()
    needles = [canary.encode(), file_canary, codename.encode(), reply_canary.encode(), AGENT.encode()]
    roots = [deployment.settings.data_dir, server.tmpdir]
    control = server.tmpdir / "positive-control"
    control.write_bytes(b"x" + canary.encode())
    assert len(files_containing([server.tmpdir], needles)) == 1  # the search does find a canary
    control.unlink()
    assert files_containing(roots, needles) == []
    if deployment.settings.database_url.startswith("postgresql"):
        dump = pg_dump(deployment.settings.database_url)
        assert b"ps-sadar-bazar" in dump  # the dump is real
        assert not any(n in dump for n in needles)
    log = server.output.read_bytes()
    assert not any(n in log for n in needles)
    assert b"127.0.0.1:" not in log.replace(f"127.0.0.1:{server.port}".encode(), b"")


def pg_dump(database_url: str) -> bytes:
    from sqlalchemy.engine import make_url

    u = make_url(database_url)
    return subprocess.run(
        ["pg_dump", "-h", u.host or "127.0.0.1", "-p", str(u.port), "-U", u.username or "cpcp", u.database or ""],
        capture_output=True, check=True,
    ).stdout


async def count_rows(deployment: Deployment) -> tuple[int, int]:
    core = build_core(deployment.settings)
    try:
        async with core.sessions() as db:
            subs = int(await db.scalar(select(func.count()).select_from(Submission)) or 0)
            docs = int(await db.scalar(select(func.count()).select_from(Document)) or 0)
            return subs, docs
    finally:
        await core.close()


async def partial_upload(server: Server, client: httpx.AsyncClient) -> socket.socket:
    """Start an upload of a large file and stop half-way, keeping the socket open."""
    page = await client.get("/submit")
    if page.status_code == 303:  # the source has a case already: the follow-up form
        page = await client.get("/case")
    token = csrf(page.text)
    body, ctype = multipart([("csrf_token", token), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("text", "half"), ("files", "v.mp4", os.urandom(1_500_000), "video/mp4")])
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    head = (f"POST /submit HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nCookie: {cookie}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(head + body[: len(body) // 2])
    return sock


async def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


async def test_client_that_disconnects_mid_upload_leaves_nothing(
    deployment: Deployment, server: Server, client: httpx.AsyncClient
) -> None:
    await begin(client)
    sock = await partial_upload(server, client)
    store = deployment.settings.store_dir
    assert await wait_until(lambda: server.gpg_children() != [])  # the file is streaming into gpg
    sock.close()
    assert await wait_until(lambda: server.gpg_children() == [] and not [p for p in store.rglob("*") if p.is_file()])
    assert await count_rows(deployment) == (0, 0)
    # The server is fine and the source can still send.
    r = await send(client, [("unit", "ps-sadar-bazar"), ("kind", "information"), ("text", "complete")])
    assert r.status_code == 303
    assert await count_rows(deployment) == (1, 1)


async def test_killed_server_keeps_acknowledged_tips_and_no_half_tip(
    deployment: Deployment, server: Server, client: httpx.AsyncClient, officer_gnupg: Path
) -> None:
    await begin(client)
    r = await send(client, [("unit", "cell-cyber"), ("kind", "complaint"), ("text", "acknowledged tip")])
    assert r.status_code == 303
    sock = await partial_upload(server, client)
    assert await wait_until(lambda: server.gpg_children() != [])
    server.stop(signal.SIGKILL)
    sock.close()
    leftovers = [p for p in (deployment.settings.store_dir / ".tmp").rglob("*") if p.is_file()]
    assert leftovers  # the kill really interrupted an upload
    restarted = start_server(deployment)
    try:
        async with httpx.AsyncClient(base_url=restarted.url) as c:
            assert (await c.get("/")).status_code == 200
        assert not [p for p in (deployment.settings.store_dir / ".tmp").rglob("*") if p.is_file()]
        assert await count_rows(deployment) == (1, 1)
        core = build_core(deployment.settings)
        try:
            async with core.sessions() as db:
                doc = (await db.scalars(select(Document))).one()
            assert json.loads(gpg_decrypt(officer_gnupg, core.store.read(doc.object_name)))["text"] == "acknowledged tip"
        finally:
            await core.close()
    finally:
        restarted.stop()


def test_server_refuses_to_start_without_a_usable_oversight_key(deployment: Deployment) -> None:
    config = deployment.config.read_text().replace(FPR["oversight"], "F" * 40)
    deployment.config.write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "source_app.serve", "--config", str(deployment.config)],
        cwd=ROOT, env={**os.environ, "CPCP_SOURCE__PORT": str(free_port())},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert f"oversight key: no public key with pinned fingerprint {'F' * 40}" in done.stderr


def test_server_refuses_an_old_schema_with_a_clear_message(deployment: Deployment) -> None:
    from cpcp.migrate import downgrade

    downgrade(deployment.settings.database_url, "0001")
    done = subprocess.run(
        [sys.executable, "-m", "source_app.serve", "--config", str(deployment.config)],
        cwd=ROOT, env={**os.environ, "CPCP_SOURCE__PORT": str(free_port())},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 2
    assert "database schema is at 0001" in done.stderr and "cpcp-admin init" in done.stderr


def command_lines() -> dict[int, bytes]:
    """Every process's command line, as any local user can read it (ps, /proc)."""
    lines = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # it ended meanwhile
    return lines


async def test_a_file_name_is_on_no_command_line_while_gpg_encrypts_it(
    deployment: Deployment, server: Server, client: httpx.AsyncClient, officer_gnupg: Path
) -> None:
    name = f"IMG_20260107_Ramesh_{secrets.token_hex(4)}.jpg"
    photo = b"\xff\xd8\xff\xe0" + os.urandom(400_000)
    await begin(client)
    token = csrf((await client.get("/submit")).text)
    body, ctype = multipart([("csrf_token", token), ("unit", "ps-sadar-bazar"), ("kind", "information"),
                             ("files", name, photo, "image/jpeg")])
    half = body.index(photo) + len(photo) // 2
    scans: list[dict[int, bytes]] = []
    gpg_pids: list[int] = []

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:half]  # the file part has begun: the server is encrypting it now
        assert await wait_until(lambda: server.gpg_children() != [])
        gpg_pids.extend(server.gpg_children())
        for _ in range(5):
            scans.append(command_lines())
            await asyncio.sleep(0.05)
        yield body[half:]

    r = await client.post("/submit", content=slow_body(), headers={"Content-Type": ctype})
    assert r.status_code == 303
    # The scan saw gpg itself at work, with its command line...
    assert gpg_pids and any(b"--encrypt" in scan.get(pid, b"") for scan in scans for pid in gpg_pids)
    # ...and would see the name if anything carried it there (a process with it in argv).
    control = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)", name)
    try:
        assert await wait_until(lambda: any(name.encode() in c for c in command_lines().values()))
    finally:
        control.kill()
        await control.wait()
    assert not [pid for scan in scans for pid, line in scan.items() if name.encode() in line]
    # The name is still there for the officers, inside the encrypted message only.
    core = build_core(deployment.settings)
    try:
        async with core.sessions() as db:
            docs = (await db.scalars(select(Document).order_by(Document.id))).all()
        message = json.loads(gpg_decrypt(officer_gnupg, core.store.read(docs[0].object_name)))
        assert message["files"] == [{"name": name, "content_type": "image/jpeg", "size": len(photo)}]
        assert gpg_decrypt(officer_gnupg, core.store.read(docs[1].object_name)) == photo
        packets = subprocess.run(["gpg", "--homedir", str(officer_gnupg), "--batch", "--list-packets"],
                                 input=core.store.read(docs[1].object_name), capture_output=True, check=False)
        assert name.encode() not in packets.stdout + packets.stderr  # not in the literal packet either
    finally:
        await core.close()


async def test_a_digit_codename_logs_in_typed_in_devanagari_with_dashes_over_hypercorn(
    deployment: Deployment, server: Server, client: httpx.AsyncClient
) -> None:
    page = (await client.get("/generate", params={"kind": "digits"})).text
    codename = codename_of(page)
    assert len(codename.replace(" ", "")) == 16 and codename.replace(" ", "").isdigit()
    r = await client.post("/create", data={"csrf_token": csrf(page)})
    assert r.status_code == 303
    typed = "-".join(codename.split()).translate(str.maketrans("0123456789", "०१२३४५६७८९"))
    async with httpx.AsyncClient(base_url=server.url, follow_redirects=False, timeout=30) as later:
        login = (await later.get("/login")).text
        r = await later.post("/login", data={"csrf_token": csrf(login), "codename": f" {typed} "})
        assert r.status_code == 303 and r.headers["location"] == "/case"
        assert (await later.get("/submit")).status_code == 200  # logged in as that source
    server.stop()
    needles = [codename.encode(), codename.replace(" ", "").encode(), typed.encode()]
    assert not any(n in server.output.read_bytes() for n in needles)
    assert files_containing([deployment.settings.data_dir, server.tmpdir], needles) == []
