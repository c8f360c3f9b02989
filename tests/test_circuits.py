"""Tor's PROXY lines, read by the source app's own accept loop (source_app/circuits.py), against
a real Hypercorn-served source app over real loopback sockets: a good line is read and what
follows it is served, even when the line arrives in pieces; a malformed one closes the
connection; none means the shared "direct" caller; and each circuit has its own budget of
wrong codenames, so a jammed circuit does not lock out a source on another one."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from cpcp.admin import init_deployment
from cpcp.settings import load_settings
from source_app.circuits import DIRECT, MalformedProxyLine, parse_proxy_line, read_head

from .conftest import Deployment, write_deployment
from .helpers import codename_of, csrf
from .servers import Server, start_server

LINE = b"PROXY TCP6 fc00:dead:beef:4dad::0:29a ::1 65535 42\r\n"  # what tor 0.4.9 sends


def tor_line(circuit: int) -> bytes:
    return f"PROXY TCP6 fc00:dead:beef:4dad::{circuit >> 16:x}:{circuit & 0xFFFF:x} ::1 1 80\r\n".encode()


# --- the parser alone -----------------------------------------------------------------------------


def test_a_tor_line_names_its_circuit_and_keeps_what_follows() -> None:
    assert read_head(LINE + b"GET / HTTP/1.1\r\n") == ("circuit:666", b"GET / HTTP/1.1\r\n")
    assert parse_proxy_line(tor_line(0xDEADBEEF)[:-2]) == f"circuit:{0xDEADBEEF}"
    assert parse_proxy_line(tor_line(1)[:-2]) != parse_proxy_line(tor_line(2)[:-2])


def test_no_proxy_line_is_the_direct_caller_and_a_partial_line_waits() -> None:
    assert read_head(b"POST /login HTTP/1.1\r\n") == (DIRECT, b"POST /login HTTP/1.1\r\n")
    assert read_head(b"G") == (DIRECT, b"G")
    for cut in (1, 3, 6, 20, len(LINE) - 1):
        assert read_head(LINE[:cut]) is None


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 127.0.0.1 127.0.0.1 1 80",              # tor writes TCP6
    b"PROXY TCP6 2001:db8::1 ::1 1 80",                   # not tor's circuit prefix
    b"PROXY TCP6 fc00:dead:beef:4dad::1 ::1 70000 80",    # port out of range
    b"PROXY TCP6 fc00:dead:beef:4dad::1 ::1 1",           # a field missing
    b"PROXY TCP6 fc00:dead:beef:4dad::1  ::1 1 80",       # two spaces
    b"PROXY TCP6 fc00:dead:beef:4dad::1 nowhere 1 80",
    b"PROXY UNKNOWN",
    "PROXY TCP6 fc00:dead:beef:4dad::1 ::1 ١ 80".encode(),  # not ASCII digits
])
def test_a_malformed_line_is_refused(line: bytes) -> None:
    with pytest.raises(MalformedProxyLine):
        read_head(line + b"\r\nGET / HTTP/1.1\r\n")


def test_a_line_without_crlf_within_107_bytes_is_refused() -> None:
    with pytest.raises(MalformedProxyLine):
        read_head(b"PROXY " + b"9" * 101)
    assert read_head(b"PROXY " + b"9" * 100) is None


# --- over a real socket ---------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """SQLite only: what is tested is the wire, not the database."""
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}",
                              extra="login_circuit_burst = 2\n")
    settings = load_settings(config, env={})
    init_deployment(settings)
    srv = start_server(Deployment(root=tmp_path, config=config, settings=settings))
    yield srv
    srv.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str


@dataclass
class RawClient:
    """HTTP/1.1 by hand, one connection per request, ``head`` written first (as tor does)."""

    port: int
    head: bytes = b""
    cookie: str = ""
    pieces: int = 1
    log: list[int] = field(default_factory=list)

    async def send(self, data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            step = max(1, -(-len(data) // self.pieces))
            for at in range(0, len(data), step):
                writer.write(data[at:at + step])
                await writer.drain()
                if self.pieces > 1:
                    await asyncio.sleep(0.05)  # separate TCP segments, separate reads
            return await asyncio.wait_for(reader.read(), 30)
        finally:
            writer.close()

    async def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Answer:
        body = urlencode(form or {}).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: x.onion", "Connection: close"]
        if self.cookie:
            lines.append(f"Cookie: {self.cookie}")
        if form is not None:
            lines += ["Content-Type: application/x-www-form-urlencoded", f"Content-Length: {len(body)}"]
        raw = await self.send(self.head + "\r\n".join(lines).encode() + b"\r\n\r\n" + body)
        top, _, rest = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(": ")
            headers[name.lower()] = value
            if name.lower() == "set-cookie":
                self.cookie = value.split(";", 1)[0]
        answer = Answer(int(status_line.split(" ")[1]), headers, rest.decode("utf-8", "replace"))
        self.log.append(answer.status)
        return answer

    async def login(self, codename: str) -> int:
        page = await self.request("GET", "/login")
        return (await self.request("POST", "/login", {"csrf_token": csrf(page.body), "codename": codename})).status


async def test_a_good_proxy_line_is_read_and_the_request_after_it_served(server: Server) -> None:
    page = await RawClient(server.port, head=LINE).request("GET", "/login")
    assert page.status == 200 and 'name="csrf_token"' in page.body


async def test_a_proxy_line_split_across_reads_is_put_together(server: Server) -> None:
    client = RawClient(server.port, head=LINE, pieces=12)
    assert (await client.request("GET", "/login")).status == 200
    assert await client.login("abacus " * 7) == 403  # a form body after a split line arrives whole


async def test_no_proxy_line_is_served_as_direct(server: Server) -> None:
    assert (await RawClient(server.port).request("GET", "/login")).status == 200


@pytest.mark.parametrize("head", [
    b"PROXY TCP6 2001:db8::1 ::1 1 80\r\n",
    b"PROXY TCP4 127.0.0.1 127.0.0.1 1 80\r\n",
    b"PROXY " + b"9" * 120,
])
async def test_a_malformed_proxy_line_closes_the_connection_unanswered(server: Server, head: bytes) -> None:
    raw = await RawClient(server.port).send(head + b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw == b""
    assert (await RawClient(server.port, head=LINE).request("GET", "/login")).status == 200  # still up


async def test_each_circuit_has_its_own_budget_of_wrong_codenames(server: Server) -> None:
    direct = RawClient(server.port)
    page = await direct.request("GET", "/generate")
    codename = codename_of(page.body)
    created = await direct.request("POST", "/create", {"csrf_token": csrf(page.body)})
    assert created.status == 303
    jammer = RawClient(server.port, head=tor_line(7))
    statuses = [await jammer.login(typed) for typed in ("abacus " * 7, "x", "abacus " * 7, "x")]
    assert statuses == [403, 403, 429, 429]  # garbage ("x") spends the circuit's budget too
    assert await jammer.login(codename) == 429  # the budget is the circuit's, whoever types
    assert await RawClient(server.port, head=tor_line(8)).login("abacus " * 7) == 403  # not 429
    assert await RawClient(server.port, head=tor_line(9)).login(codename) == 303
    assert await RawClient(server.port).login(codename) == 303  # direct has its own budget
    logs = [server.output, *(server.output.parent / "data" / "logs").glob("*")]
    assert not [p for p in logs if p.is_file() and re.search(r"circuit|fc00:dead", p.read_text())]
