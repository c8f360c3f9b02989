"""Closing the connection after a request framed two ways (RFC 9112 §6.3).

A request with both Content-Length and Transfer-Encoding is how request smuggling starts: h11
(Hypercorn's HTTP/1 parser) lets Transfer-Encoding win, as the RFC says, but then keeps the
connection open, so a second request hidden where a Content-Length reader sees body is served
too. The RFC requires closing the connection after answering such a request. This ASGI
wrapper adds ``Connection: close`` to that one response; h11 then ends the connection once it
is sent and never reads what follows. Hypercorn has no setting for it, so serve.py wraps the
desk in it. The server apps have the same wrapper in cpcp/framing.py; the desk imports
nothing of the server, hence this copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypercorn.typing import (
    ASGIFramework,
    ASGIReceiveCallable,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)


def ambiguous_framing(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Both a Content-Length and a Transfer-Encoding header are present."""
    names = {name.lower() for name, _ in headers}
    return b"content-length" in names and b"transfer-encoding" in names


def close_after_ambiguous_framing(app: ASGIFramework) -> ASGIFramework:
    """``app``, answering an ambiguously framed HTTP/1 request with ``Connection: close``."""

    async def wrapped(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if (scope["type"] != "http" or scope.get("http_version") not in ("1.0", "1.1")
                or not ambiguous_framing(scope["headers"])):
            await app(scope, receive, send)
            return

        async def send_closing(message: ASGISendEvent) -> None:
            if message["type"] == "http.response.start":
                start: dict[str, Any] = dict(message)
                kept = [(n, v) for n, v in start.get("headers", ()) if n.lower() != b"connection"]
                start["headers"] = [*kept, (b"connection", b"close")]
                message = start  # type: ignore[assignment]
            await send(message)

        await app(scope, receive, send_closing)

    return wrapped
