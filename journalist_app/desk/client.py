"""The gateway's JSON API over HTTP (through Tor's SOCKS port in production): the desk's only
way to the server. Answers are checked against ``wire`` models; errors become ``DeskError``
subclasses; ciphertext downloads stream to a temporary file and are renamed into place only
when complete, so an interrupted sync never leaves a half object under its final name."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from httpx_socks import AsyncProxyTransport
from pydantic import BaseModel, ValidationError
from python_socks import ProxyType

from ._fs import in_thread_to_the_end, write_all
from .errors import (
    AccountLocked,
    DocumentsMissing,
    GatewayError,
    GatewayUnreachable,
    NotFound,
    Rejected,
    Unauthorized,
)
from .settings import DeskSettings
from .wire import (
    Case,
    CaseChanges,
    CasePage,
    Changes,
    Disclosure,
    DisclosureList,
    DocumentBatch,
    DocumentsMissingAnswer,
    Key,
    Me,
    ReplyCreated,
    Token,
    Unit,
    UnitList,
)

API = "/api/v1"
CHUNK = 64 * 1024
#: What one call of the gateway's batch endpoint may ask for (its OpenAPI document says so).
BATCH_MAX_IDS = 100
BATCH_MAX_OBJECT = 256 * 1024
BATCH_MAX_BYTES = 4 * 1024 * 1024
M = TypeVar("M", bound=BaseModel)


def build_http(settings: DeskSettings) -> httpx.AsyncClient:
    """An httpx client for the gateway: through the SOCKS proxy when one is set (names are
    resolved by Tor), with no environment proxies, no redirects and no cookies kept."""
    transport: httpx.AsyncBaseTransport
    if settings.socks_proxy:
        proxy = urlsplit(settings.socks_proxy)
        assert proxy.hostname is not None and proxy.port is not None  # validated settings
        transport = AsyncProxyTransport(proxy_type=ProxyType.SOCKS5, proxy_host=proxy.hostname,
                                        proxy_port=proxy.port, rdns=True, trust_env=False)
    else:
        transport = httpx.AsyncHTTPTransport(trust_env=False)
    return httpx.AsyncClient(
        base_url=settings.gateway_url.rstrip("/"), transport=transport, trust_env=False,
        follow_redirects=False, timeout=httpx.Timeout(settings.request_timeout),
        headers={"User-Agent": "cpcp-desk", "Accept": "application/json"},
    )


class GatewayClient:
    """One officer's view of the gateway. ``with_token`` gives a client for a logged-in
    officer sharing the same connection pool; the token lives only in memory."""

    def __init__(self, *, http: httpx.AsyncClient, token: str | None = None) -> None:
        self._http = http
        self._token = token

    @classmethod
    def from_settings(cls, settings: DeskSettings) -> GatewayClient:
        return cls(http=build_http(settings))

    def with_token(self, token: str) -> GatewayClient:
        return GatewayClient(http=self._http, token=token)

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- plumbing ----------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            raise Unauthorized("not logged in")
        return {"Authorization": f"Bearer {self._token}"}

    async def _request(self, method: str, path: str, *, auth: bool = True,
                       answered: frozenset[int] = frozenset(), **kwargs: Any) -> httpx.Response:
        """The response; an error status raises, unless it is one the caller reads itself."""
        headers = self._headers() if auth else {}
        try:
            response = await self._http.request(method, API + path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayUnreachable(f"cannot reach the gateway ({type(exc).__name__})") from exc
        if response.status_code not in answered:
            _raise_for(response)
        return response

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise GatewayError(f"the gateway's answer does not fit its API ({exc.error_count()} errors)",
                               status=response.status_code) from exc

    # -- endpoints ---------------------------------------------------------------------------

    async def login(self, handle: str, passphrase: str, code: str) -> Token:
        """Exchange handle, passphrase and a TOTP code for a short-lived bearer token."""
        response = await self._request("POST", "/token", auth=False,
                                       json={"handle": handle, "passphrase": passphrase, "code": code})
        return self._parse(Token, response)

    async def logout(self) -> None:
        """Revoke this client's token at the gateway."""
        await self._request("DELETE", "/token")

    async def me(self) -> Me:
        return self._parse(Me, await self._request("GET", "/me"))

    async def units(self) -> list[Unit]:
        return self._parse(UnitList, await self._request("GET", "/units")).units

    async def officer_key(self, fingerprint: str) -> Key:
        return self._parse(Key, await self._request("GET", f"/officers/{fingerprint}/key"))

    async def cases_page(self, *, after_id: int = 0, limit: int = 500) -> CasePage:
        response = await self._request("GET", "/cases", params={"after_id": after_id, "limit": limit})
        return self._parse(CasePage, response)

    async def all_cases(self, *, page_size: int = 500) -> AsyncIterator[Case]:
        """Every case of the officer's units, page by page (``after_id``)."""
        after = 0
        while True:
            page = await self.cases_page(after_id=after, limit=page_size)
            for case in page.cases:
                yield case
            if page.next_after_id is None or not page.cases:
                return
            after = page.next_after_id

    async def changes(self, since: int | None = None, *, wait: int = 0) -> Changes:
        """The change feed: held by the gateway up to ``wait`` seconds when nothing changed
        after ``since`` (so the read timeout allows for the wait)."""
        params = {"wait": wait} if since is None else {"since": since, "wait": wait}
        response = await self._request("GET", "/changes", params=params,
                                       timeout=httpx.Timeout(60.0, read=wait + 60.0))
        return self._parse(Changes, response)

    async def case(self, case_id: int) -> Case:
        return self._parse(Case, await self._request("GET", f"/cases/{case_id}"))

    async def update_case(self, case_id: int, changes: CaseChanges) -> Case:
        body = changes.model_dump(exclude_defaults=True)
        return self._parse(Case, await self._request("PATCH", f"/cases/{case_id}", json=body))

    async def source_key(self, case_id: int) -> Key:
        return self._parse(Key, await self._request("GET", f"/cases/{case_id}/source-key"))

    async def post_reply(self, case_id: int, armored: str) -> int:
        """Upload a reply that is already an OpenPGP message; returns its id."""
        response = await self._request("POST", f"/cases/{case_id}/replies", json={"armored": armored})
        return self._parse(ReplyCreated, response).id

    async def post_audit(self, case_id: int, action: str, details: dict[str, str]) -> None:
        """Record a desk-side action (an export) in the server's audit log."""
        await self._request("POST", f"/cases/{case_id}/audit", json={"action": action, "details": details})

    # -- sealed identities ---------------------------------------------------------------------

    async def request_disclosure(self, case_id: int, reason: str) -> Disclosure:
        """Ask a custodian for the case's sealed contact details (a reason is required)."""
        response = await self._request("POST", f"/cases/{case_id}/disclosure-requests", json={"reason": reason})
        return self._parse(Disclosure, response)

    async def disclosures(self) -> list[Disclosure]:
        """A custodian: every request of the district; an officer: their own."""
        return self._parse(DisclosureList, await self._request("GET", "/disclosure-requests")).requests

    async def decide_disclosure(self, request_id: int, *, approve: bool) -> Disclosure:
        verb = "approve" if approve else "refuse"
        return self._parse(Disclosure, await self._request("POST", f"/disclosure-requests/{request_id}/{verb}"))

    async def sealed_identity(self, request_id: int) -> bytes:
        """The sealed ciphertext (small: contact details), for the approving custodian."""
        return (await self._request("GET", f"/disclosure-requests/{request_id}/sealed")).content

    async def upload_disclosure(self, request_id: int, armored: str) -> Disclosure:
        response = await self._request("PUT", f"/disclosure-requests/{request_id}/disclosure",
                                       json={"armored": armored})
        return self._parse(Disclosure, response)

    async def disclosure(self, request_id: int) -> bytes:
        """The disclosed details' ciphertext, to the requester's key."""
        return (await self._request("GET", f"/disclosure-requests/{request_id}/disclosure")).content

    async def download_document(self, document_id: int, dest: Path, *, tmp_dir: Path,
                                expected_size: int | None = None) -> int:
        return await self._download(f"/documents/{document_id}", dest, tmp_dir, expected_size)

    async def document_batch(self, ids: list[int]) -> dict[int, bytes]:
        """Several small ciphertexts in one round trip (at most BATCH_MAX_IDS, each at most
        BATCH_MAX_OBJECT bytes, BATCH_MAX_BYTES in all). DocumentsMissing names those the
        officer cannot have; a 413 (too large) is a GatewayError."""
        response = await self._request("POST", "/documents/batch", json={"ids": ids}, answered=frozenset({404}))
        if response.status_code == 404:
            answer = self._parse(DocumentsMissingAnswer, response)
            raise DocumentsMissing(answer.error, missing=answer.missing)
        got = {doc.id: doc.ciphertext for doc in self._parse(DocumentBatch, response).documents}
        if set(got) != set(ids):
            raise GatewayError("the gateway's batch does not hold the documents asked for")
        return got

    async def download_reply(self, reply_id: int, dest: Path, *, tmp_dir: Path,
                             expected_size: int | None = None) -> int:
        return await self._download(f"/replies/{reply_id}", dest, tmp_dir, expected_size)

    async def _download(self, path: str, dest: Path, tmp_dir: Path, expected_size: int | None) -> int:
        """Stream a ciphertext into ``tmp_dir`` and rename it to ``dest`` once complete and of
        the expected size; on any failure the partial file is removed. Returns its size."""
        tmp = tmp_dir / f"{dest.name}.{secrets.token_hex(4)}.part"
        # Opened here, not in a thread: a sync cancelled during a threaded open left the
        # created file behind with nobody to remove it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        size = 0
        try:
            try:
                async with self._http.stream("GET", API + path, headers=self._headers()) as response:
                    if response.status_code != 200:
                        await response.aread()
                        _raise_for(response)
                        raise GatewayError(f"unexpected status {response.status_code}",
                                           status=response.status_code)
                    async for chunk in response.aiter_raw(CHUNK):
                        size += len(chunk)
                        if expected_size is not None and size > expected_size:
                            raise GatewayError("the gateway sent more bytes than the object has")
                        # Written here, not in a thread: a cancelled sync must not leave a
                        # thread writing to a descriptor the clean-up below closes.
                        write_all(fd, chunk)
            except httpx.TransportError as exc:
                raise GatewayUnreachable(f"download interrupted ({type(exc).__name__})") from exc
            if expected_size is not None and size != expected_size:
                raise GatewayError(f"incomplete download: {size} of {expected_size} bytes")
            owned, fd = fd, -1  # from here the thread owns the descriptor, even if we are cancelled
            await in_thread_to_the_end(_finish, owned, tmp, dest)
        finally:
            if fd != -1:
                _discard(fd, tmp)  # close and unlink: quick, and certain to run
        return size


def _finish(fd: int, tmp: Path, dest: Path) -> None:
    os.fsync(fd)
    os.close(fd)
    os.replace(tmp, dest)


def _discard(fd: int, tmp: Path) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # already closed by a failed _finish
    tmp.unlink(missing_ok=True)


def _raise_for(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    try:
        message = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    message = message or response.reason_phrase
    if status == 401:
        raise Unauthorized(message, status=status)
    if status == 423:
        raise AccountLocked(message, status=status)
    if status == 404:
        raise NotFound(message, status=status)
    if status in (400, 403, 409, 422):
        raise Rejected(message, status=status)
    raise GatewayError(f"gateway error {status}: {message}", status=status)
