"""Request smuggling: a request with both Content-Length and Transfer-Encoding, sent over a raw
socket to each real Hypercorn process (source app, gateway, desk).

Transfer-Encoding wins, so a second request can hide where a Content-Length reader sees body.
RFC 9112 §6.3: the server must close the connection after answering such a request, so the
hidden request is never served. The control (a plain chunked request, keep-alive) shows the
reader does see a second response when one is sent.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Deployment
from .servers import Server, start_desk, start_server

STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")  # bodies do not end in CRLF: no anchor


@pytest.fixture
def servers(deployment: Deployment, officer_gnupg: Path) -> Iterator[dict[str, Server]]:
    source = start_server(deployment, app="source")
    gateway = start_server(deployment, app="gateway")
    desk = start_desk(deployment.root / "desk", gateway.url, officer_gnupg)
    yield {"source": source, "gateway": gateway, "desk": desk}
    for srv in (desk, gateway, source):
        srv.stop()


# A POST each app answers without side effects (refused: no form, no token, no CSRF).
FIRST = {"source": "/login", "gateway": "/api/v1/token", "desk": "/login"}


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``data``, read until the server closes or ``timeout``; (bytes read, closed?)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return bytes(received), False
            if not chunk:
                return bytes(received), True
            received += chunk
        return bytes(received), False


def requests(port: int, path: str, hidden: str, *, content_length: bool) -> bytes:
    host = f"Host: 127.0.0.1:{port}\r\n"
    framing = "Content-Length: 48\r\n" if content_length else ""
    first = (f"POST {path} HTTP/1.1\r\n{host}Content-Type: application/json\r\n{framing}"
             "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    second = f"GET {hidden} HTTP/1.1\r\n{host}\r\n"
    return (first + second).encode()


@pytest.mark.parametrize("app", ["source", "gateway", "desk"])
def test_both_content_length_and_transfer_encoding_get_one_answer_then_eof(
    servers: dict[str, Server], app: str
) -> None:
    server = servers[app]
    hidden = f"/hidden-{secrets.token_hex(6)}"
    # Control: without Content-Length the same two requests are both answered on one
    # connection (keep-alive), so the reader below would see a served hidden request.
    data, closed = exchange(server.port, requests(server.port, FIRST[app], hidden, content_length=False),
                            timeout=2.0)
    assert len(STATUS_LINE.findall(data)) == 2 and not closed, (closed, data)

    data, closed = exchange(server.port, requests(server.port, FIRST[app], hidden, content_length=True))
    assert len(STATUS_LINE.findall(data)) == 1, data[:600]
    assert closed, "the connection stayed open after an ambiguously framed request"
    assert b"connection: close" in data.lower()
