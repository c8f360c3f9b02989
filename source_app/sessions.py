"""Server-side sessions kept in this process's memory only.

A logged-in source's session holds the passphrase of its reply key, so it must never be written
to disk or sent to the client: the cookie carries only a random id. A restart logs everyone
out, which is the safe failure. Sessions end after ``idle_timeout`` without a request.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from quart import Quart
from quart.sessions import SessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.datastructures import CallbackDict
from werkzeug.wrappers import Response as WerkzeugResponse

COOKIE_NAME = "cpcp_session"


class ServerSession(CallbackDict[str, Any], SessionMixin):
    def __init__(self, sid: str | None, data: dict[str, Any] | None = None) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.modified = False
        self.rotate = False

    def regenerate(self) -> None:
        """Issue a new id at the next save (on login: a planted id becomes worthless)."""
        self.rotate = True
        self.modified = True


class MemorySessionInterface(SessionInterface):
    def __init__(self, *, idle_timeout: float, secure: bool, max_sessions: int = 20_000) -> None:
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}
        self._idle = idle_timeout
        self._secure = secure
        self._max = max_sessions

    def __len__(self) -> int:
        return len(self._data)

    def _expire(self, now: float) -> None:
        cutoff = now - self._idle
        for sid in [s for s, (seen, _) in self._data.items() if seen < cutoff]:
            del self._data[sid]

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> ServerSession:
        now = time.monotonic()
        self._expire(now)
        sid = request.cookies.get(COOKIE_NAME)
        if sid and sid in self._data:
            _, data = self._data[sid]
            self._data[sid] = (now, data)
            return ServerSession(sid, dict(data))
        return ServerSession(None)

    async def save_session(
        self, app: Quart, session: SessionMixin, response: Response | WerkzeugResponse | None
    ) -> None:
        assert isinstance(session, ServerSession)
        if response is None:
            return
        if not session.modified:
            return
        if session.sid and (session.rotate or not session):
            self._data.pop(session.sid, None)
        if not session:
            if session.sid:
                response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict")
            return
        if session.sid is None or session.rotate:
            if len(self._data) >= self._max:
                # Drop the longest-idle session rather than grow without bound.
                oldest = min(self._data.items(), key=lambda item: item[1][0])[0]
                del self._data[oldest]
            session.sid = secrets.token_urlsafe(32)
        self._data[session.sid] = (time.monotonic(), dict(session))
        response.set_cookie(
            COOKIE_NAME, session.sid, path="/", httponly=True, samesite="Strict",
            secure=self._secure,
        )
