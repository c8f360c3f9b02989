"""Serving the source app so that it can tell tor circuits apart (PROXY protocol v1).

Every onion visitor reaches the app from 127.0.0.1, so there is no address to budget wrong
codenames by, and one site-wide budget let anyone lock every source out (issue 8). Tor can say
which rendezvous circuit a stream came on: with ``HiddenServiceExportCircuitID haproxy`` (set on
the source onion by onion/services.py) it writes one PROXY protocol v1 line first on each
connection, ``PROXY TCP6 fc00:dead:beef:4dad::<id> ::1 <port> <port>\\r\\n``, whose source
address carries the circuit's global id in its low 32 bits. A client gets a new circuit only by
building one, which costs it a rendezvous with the service.

Hypercorn does not read PROXY lines, so the source app has its own accept loop: a
StreamReaderProtocol that holds back the first bytes until the line is read and checked, then
feeds everything after it to the same StreamReader Hypercorn's TCPServer reads (no extra copy
of the body: only the first segment is sliced once). The circuit reaches the app as an ASGI
scope extension; :func:`caller_of` turns it into the opaque caller key the core throttles by.
A malformed line closes the connection. A connection without a PROXY line (loopback: the demo,
tests) belongs to the one shared caller :data:`DIRECT`; on the onion tor always sends the line
first, so a visitor cannot choose to be "direct" nor forge a circuit.

Circuit ids are never logged, stored or sent anywhere: they live in memory, as throttle keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from typing import Any

from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.typing import AppWrapper, ASGIReceiveCallable, ASGISendCallable, LifespanState, Scope
from hypercorn.utils import wrap_app

#: The ASGI scope extension that carries the caller key.
EXTENSION = "cpcp.caller"
#: The caller of every connection that came without a PROXY line.
DIRECT = "direct"

PREFIX = b"PROXY "
#: The longest PROXY v1 line, CRLF included (the protocol's own limit).
MAX_LINE = 107
#: Tor's source addresses: this /64, the circuit's global id in the low 32 bits.
TOR_CIRCUITS = ipaddress.IPv6Network("fc00:dead:beef:4dad::/64")
#: A connection that has not sent its first bytes by then is closed.
HEAD_TIMEOUT = 10.0


class MalformedProxyLine(ValueError):
    """The connection's first line looks like PROXY protocol but is not a valid tor line."""


def caller_of(scope: Mapping[str, Any]) -> str:
    """The throttle key of the request's connection: its tor circuit, or :data:`DIRECT`."""
    extensions = scope.get("extensions") or {}
    caller = extensions.get(EXTENSION)
    return caller if isinstance(caller, str) else DIRECT


def parse_proxy_line(line: bytes) -> str:
    """The caller key of one PROXY v1 line (without its CRLF), as tor writes it."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedProxyLine("not ASCII") from exc
    parts = text.split(" ")
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] != "TCP6":
        raise MalformedProxyLine("not 'PROXY TCP6 src dst sport dport'")
    try:
        source = ipaddress.IPv6Address(parts[2])
        ipaddress.IPv6Address(parts[3])
    except ValueError as exc:
        raise MalformedProxyLine("bad address") from exc
    for port in parts[4:]:
        if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535):
            raise MalformedProxyLine("bad port")
    if source not in TOR_CIRCUITS:
        raise MalformedProxyLine("source address is not tor's circuit prefix")
    return f"circuit:{int(source) & 0xFFFFFFFF}"


def read_head(head: bytes) -> tuple[str, bytes] | None:
    """What the first bytes of a connection say: (caller, bytes after the PROXY line), or None
    while more bytes are needed. Raises MalformedProxyLine."""
    if not head.startswith(PREFIX[: len(head)]):
        return DIRECT, head  # not PROXY: an ordinary HTTP request, from loopback
    if len(head) < len(PREFIX):
        return None
    end = head.find(b"\r\n", 0, MAX_LINE)
    if end < 0:
        if len(head) >= MAX_LINE:
            raise MalformedProxyLine("no CRLF within 107 bytes")
        return None
    return parse_proxy_line(head[:end]), head[end + 2:]


class _CallerApp:
    """The app, with the connection's caller in every request's scope."""

    def __init__(self, app: AppWrapper, caller: str) -> None:
        self._app = app
        self._caller = caller

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable,
                       sync_spawn: Callable[..., Any], call_soon: Callable[..., Any]) -> None:
        extensions: dict[str, Any] = dict(scope.get("extensions") or {})  # type: ignore[call-overload]
        extensions[EXTENSION] = self._caller
        await self._app({**scope, "extensions": extensions}, receive, send,  # type: ignore[arg-type]
                        sync_spawn, call_soon)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


class ProxyLineProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that reads the PROXY line itself and passes on only what follows."""

    def __init__(self, *, handler: Handler, loop: asyncio.AbstractEventLoop) -> None:
        self._head = b""
        self._caller: asyncio.Future[str | None] = loop.create_future()
        self._handler = handler
        self._transport: asyncio.BaseTransport | None = None
        super().__init__(asyncio.StreamReader(loop=loop), self._connected, loop=loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._caller.done():
            super().data_received(data)
            return
        self._head += data
        try:
            verdict = read_head(self._head)
        except MalformedProxyLine:
            self._caller.set_result(None)
            if self._transport is not None:
                self._transport.close()
            return
        if verdict is None:
            return
        caller, rest = verdict
        self._head = b""
        self._caller.set_result(caller)
        if rest:
            super().data_received(rest)

    def eof_received(self) -> bool:
        if not self._caller.done():
            self._caller.set_result(None)
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._caller.done():
            self._caller.set_result(None)
        super().connection_lost(exc)

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            caller = await asyncio.wait_for(asyncio.shield(self._caller), HEAD_TIMEOUT)
        except TimeoutError:
            caller = None
        if caller is None:
            writer.close()
            return
        await self._handler(reader, writer, caller)


async def serve_with_circuits(app: Any, config: Config, *,
                              shutdown_trigger: Callable[[], Awaitable[Any]]) -> None:
    """Like ``hypercorn.asyncio.serve`` (plain HTTP/1.1 and h2c, one worker), but every
    connection first goes through :class:`ProxyLineProtocol`."""
    loop = asyncio.get_running_loop()
    wrapped = wrap_app(app, config.wsgi_max_body_size, "asgi")
    state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, loop, state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and lifespan_task.exception() is not None:
        raise lifespan_task.exception()  # type: ignore[misc]
    context = WorkerContext(None)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, caller: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await TCPServer(_CallerApp(wrapped, caller), loop, config, context, state, reader, writer)

    sockets = config.create_sockets()
    servers = [
        await loop.create_server(lambda: ProxyLineProtocol(handler=handle, loop=loop),
                                 sock=sock, backlog=config.backlog)
        for sock in sockets.insecure_sockets
    ]
    try:
        await shutdown_trigger()
    finally:
        await context.terminated.set()
        for server in servers:
            server.close()
            await server.wait_closed()
        if tasks:
            await asyncio.wait(tasks, timeout=config.graceful_timeout)
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        with suppress(asyncio.CancelledError):
            await lifespan_task
