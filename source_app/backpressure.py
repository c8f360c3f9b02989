"""Back-pressure for request bodies.

Quart copies every body chunk the server hands it into an unbounded buffer, so a fast client
and a slower gpg would make an upload's memory grow with its size. Here the ASGI receive loop
waits while more than HIGH_WATER bytes are buffered and unread; Hypercorn then stops reading
the socket, and memory stays flat whatever the file size.
"""

from __future__ import annotations

import asyncio

from hypercorn.typing import ASGIReceiveCallable
from quart.asgi import ASGIHTTPConnection
from quart.wrappers import Request
from quart.wrappers.request import Body

HIGH_WATER = 1024 * 1024


class BoundedBody(Body):
    def __init__(self, expected_content_length: int | None, max_content_length: int | None) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._room = asyncio.Event()
        self._room.set()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._room.set()
        return data

    async def wait_for_room(self) -> None:
        while len(self._data) > HIGH_WATER and not self._complete.is_set():
            self._room.clear()
            await self._room.wait()


class BoundedRequest(Request):
    body_class = BoundedBody


class BackpressureHTTPConnection(ASGIHTTPConnection):
    async def handle_messages(self, request: Request, receive: ASGIReceiveCallable) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, BoundedBody):
                    await body.wait_for_room()
            elif message["type"] == "http.disconnect":
                return
