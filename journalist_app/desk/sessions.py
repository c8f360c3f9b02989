"""Desk sessions, in this process's memory only: the cookie carries a random id, the gateway
token and everything else stay here. A restart logs the officer out, which is the safe failure;
a session ends after ``idle_timeout`` seconds without a request."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from quart import Quart
from quart.sessions import SessionInterface, SessionMixin
from quart.wrappers import BaseRequestWebsocket, Response
from werkzeug.datastructures import CallbackDict
from werkzeug.wrappers import Response as WerkzeugResponse

COOKIE = "cpcp_desk"
#: Sent by the inbox's live update: such a request reads the session but does not keep it
#: alive, so an open inbox still logs the officer out after ``idle_timeout``.
PASSIVE_HEADER = "X-CPCP-Passive"


class DeskSession(CallbackDict[str, Any], SessionMixin):
    def __init__(self, sid: str | None, data: dict[str, Any] | None = None) -> None:
        def on_update(_: Any) -> None:
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.modified = False
        self.rotate = False
        self.passive = False  # asked with PASSIVE_HEADER: seen, but not renewed

    def regenerate(self) -> None:
        """A new id at the next save (at login, so a planted id is worthless)."""
        self.rotate = True
        self.modified = True


class MemorySessions(SessionInterface):
    def __init__(self, *, idle_timeout: float, max_sessions: int = 100,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._data: dict[str, tuple[float, dict[str, Any]]] = {}
        self.clock = clock
        self._idle = idle_timeout
        self._max = max_sessions

    def clear(self) -> None:
        self._data.clear()

    async def open_session(self, app: Quart, request: BaseRequestWebsocket) -> DeskSession:
        now = self.clock()
        for sid in [s for s, (seen, _) in self._data.items() if seen < now - self._idle]:
            del self._data[sid]
        sid = request.cookies.get(COOKIE) or ""
        if sid in self._data:
            seen, data = self._data[sid]
            passive = request.headers.get(PASSIVE_HEADER) == "1"
            self._data[sid] = (seen if passive else now, data)
            opened = DeskSession(sid, dict(data))
            opened.passive = passive
            return opened
        return DeskSession(None)

    async def save_session(self, app: Quart, session: SessionMixin,
                           response: Response | WerkzeugResponse | None) -> None:
        assert isinstance(session, DeskSession)
        if response is None or not session.modified:
            return
        if session.sid and (session.rotate or not session):
            self._data.pop(session.sid, None)
        if not session:
            if session.sid:
                response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
            return
        if session.sid is None or session.rotate:
            if len(self._data) >= self._max:
                del self._data[min(self._data, key=lambda s: self._data[s][0])]
            session.sid = secrets.token_urlsafe(32)
        renewed = self.clock()
        if session.passive and session.sid in self._data:
            renewed = self._data[session.sid][0]
        self._data[session.sid] = (renewed, dict(session))
        response.set_cookie(COOKIE, session.sid, path="/", httponly=True, samesite="Strict")
