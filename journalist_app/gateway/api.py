"""The gateway's JSON API for desks (``/api/v1``). Every route but the token one needs a
bearer token; every case route is scoped to the officer's units."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from quart import Quart, Response, current_app, g, request, send_file
from quart_schema import (
    RequestSchemaValidationError,
    security_scheme,
    validate_querystring,
    validate_request,
    validate_response,
)
from werkzeug.exceptions import HTTPException

from cpcp.casework import BatchTooLarge, CaseChanges, DocumentsMissing, ReplyRejected
from cpcp.disclosure import Conflict, Forbidden
from cpcp.errors import CPCPError, NotFound, StoreError
from cpcp.feed import ChangeFeed, TooManyPolls
from cpcp.models import CasePriority, CaseStatus
from cpcp.officers import AccountLocked, LoginFailed, OfficerIdentity
from cpcp.services import CoreServices

from .schemas import (
    BATCH_MAX_BYTES,
    BATCH_MAX_OBJECT,
    AuditIn,
    CaseList,
    CaseOut,
    CaseQuery,
    CaseUpdate,
    ChangesOut,
    ChangesQuery,
    CiphertextOut,
    DisclosureList,
    DisclosureOut,
    DisclosureRequestIn,
    DisclosureUpload,
    DocumentBatch,
    DocumentBatchIn,
    DocumentsMissingOut,
    ErrorResponse,
    KeyOut,
    Me,
    ReplyCreated,
    ReplyIn,
    TokenRequest,
    TokenResponse,
    UnitList,
)

PREFIX = "/api/v1"
PUBLIC = {"token", "openapi"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def core() -> CoreServices:
    result: CoreServices = current_app.extensions["cpcp_core"]
    return result


def officer() -> OfficerIdentity:
    who: OfficerIdentity = g.officer
    return who


def error(status: int, message: str, **headers: str) -> Response:
    response = Response(ErrorResponse(error=message).model_dump_json(), status=status,
                        content_type="application/json")
    response.headers.update(headers)
    return response


def feed() -> ChangeFeed:
    found: ChangeFeed = current_app.extensions["cpcp_feed"]
    return found


def install(app: Quart) -> None:
    @app.before_request
    async def authenticate() -> Response | None:
        g.officer = None
        endpoint = (request.endpoint or "").rsplit(".", 1)[-1]
        if endpoint in PUBLIC or not request.path.startswith(PREFIX):
            return None
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        identity = await core().officer_auth.authenticate(token.strip()) if scheme.lower() == "bearer" and token else None
        if identity is None:
            return error(401, "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"})
        g.officer = identity
        return None

    @app.before_request
    async def require_utf8_json() -> Response | None:
        # JSON is UTF-8 (RFC 8259). Quart decodes the body strictly inside get_json, so any
        # other bytes were an unhandled UnicodeDecodeError (a 500) on every JSON route. The
        # body is bounded by MAX_CONTENT_LENGTH and cached for the view's own get_json.
        if request.method in ("POST", "PUT", "PATCH") and request.is_json:
            body = await request.get_data(cache=True, as_text=False, parse_form_data=False)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return error(400, "the request body is not valid UTF-8; JSON must be UTF-8")
        return None

    @app.after_request
    async def headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        response.headers.pop("Server", None)
        return response

    @app.post(f"{PREFIX}/token")
    @security_scheme([])
    @validate_request(TokenRequest)
    @validate_response(TokenResponse, 200)
    @validate_response(ErrorResponse, 401)
    @validate_response(ErrorResponse, 423)
    async def token(data: TokenRequest) -> Any:
        """Log in with handle, passphrase and a TOTP code; get a short-lived bearer token."""
        try:
            identity = await core().officer_auth.login(data.handle, data.passphrase, data.code)
        except AccountLocked as exc:
            return ErrorResponse(error=f"account locked until {exc.until.isoformat(timespec='minutes')}"), 423
        except LoginFailed:
            return ErrorResponse(error="wrong handle, passphrase or code"), 401
        value, expires = await core().officer_auth.issue_token(identity)
        return TokenResponse(token=value, expires_at=expires.isoformat()), 200

    @app.delete(f"{PREFIX}/token")
    async def logout() -> Any:
        """Revoke the token used for this request."""
        await core().officer_auth.revoke_token(request.headers["Authorization"].partition(" ")[2].strip())
        return "", 204

    @app.get(f"{PREFIX}/me")
    @validate_response(Me, 200)
    async def me() -> Any:
        who = officer()
        return Me(id=who.id, handle=who.handle, name=who.display_name, is_admin=who.is_admin,
                  is_custodian=who.is_custodian), 200

    @app.get(f"{PREFIX}/units")
    @validate_response(UnitList, 200)
    async def units() -> Any:
        """The officer's units with their designated officers (for reply recipients)."""
        return UnitList.model_validate({"units": await core().casework.units(officer())}), 200

    @app.get(f"{PREFIX}/officers/<fingerprint>/key")
    @validate_response(KeyOut, 200)
    @validate_response(ErrorResponse, 404)
    async def officer_key(fingerprint: str) -> Any:
        """The public key of an officer of one of your units."""
        try:
            armored = await core().casework.officer_public_key(officer(), fingerprint)
        except (NotFound, CPCPError):
            return ErrorResponse(error="no such officer key"), 404
        return KeyOut(fingerprint=fingerprint, armored=armored), 200

    @app.get(f"{PREFIX}/cases")
    @validate_querystring(CaseQuery)
    @validate_response(CaseList, 200)
    async def cases(query_args: CaseQuery) -> Any:
        """Cases of your units, metadata only, by id; page with after_id."""
        rows, more = await core().casework.cases_page(officer(), after_id=query_args.after_id,
                                                      limit=query_args.limit)
        next_after = rows[-1]["id"] if more else None
        return CaseList.model_validate({"cases": rows, "next_after_id": next_after}), 200

    @app.get(f"{PREFIX}/changes")
    @validate_querystring(ChangesQuery)
    @validate_response(ChangesOut, 200)
    @validate_response(ErrorResponse, 429)
    async def changes(query_args: ChangesQuery) -> Any:
        """The change feed (a long poll): ids of your units' cases with a new submission
        after ``since`` and per-unit counts, nothing else. Answers at once if there are any,
        else after up to ``wait`` seconds, empty. Not audited (it discloses no content);
        downloading the ciphertext is."""
        who = officer()
        wait = min(query_args.wait, core().settings.gateway.feed_max_wait)
        try:
            found = await feed().changes(who.id, who.unit_ids, query_args.since, wait)
        except TooManyPolls as exc:
            return ErrorResponse(error=str(exc)), 429, {"Retry-After": "5"}
        return ChangesOut(cursor=found.cursor, cases=found.cases, counts=found.counts, reset=found.reset), 200

    @app.get(f"{PREFIX}/cases/<id:case_id>")
    @validate_response(CaseOut, 200)
    @validate_response(ErrorResponse, 404)
    async def case(case_id: int) -> Any:
        try:
            return CaseOut.model_validate(await core().casework.get_case(officer(), case_id)), 200
        except NotFound:
            return ErrorResponse(error="no such case"), 404

    @app.patch(f"{PREFIX}/cases/<id:case_id>")
    @validate_request(CaseUpdate)
    @validate_response(CaseOut, 200)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 422)
    async def update_case(case_id: int, data: CaseUpdate) -> Any:
        """Change status, priority, labels or assignee; audited."""
        changes = CaseChanges(
            status=CaseStatus(data.status) if data.status else None,
            priority=CasePriority(data.priority) if data.priority else None,
            labels=data.labels, assignee_id=data.assignee, unassign=data.unassign, spam=data.spam,
        )
        try:
            return CaseOut.model_validate(await core().casework.update_case(officer(), case_id, changes)), 200
        except NotFound as exc:
            return ErrorResponse(error=str(exc)), 404
        except CPCPError as exc:
            return ErrorResponse(error=str(exc)), 422

    @app.get(f"{PREFIX}/cases/<id:case_id>/source-key")
    @validate_response(KeyOut, 200)
    @validate_response(ErrorResponse, 404)
    async def source_key(case_id: int) -> Any:
        """The source's public reply key: encrypt replies to it (and to the unit's keys)."""
        try:
            fpr, armored = await core().casework.source_key(officer(), case_id)
        except NotFound:
            return ErrorResponse(error="no such case"), 404
        return KeyOut(fingerprint=fpr, armored=armored), 200

    @app.post(f"{PREFIX}/cases/<id:case_id>/replies")
    @validate_request(ReplyIn)
    @validate_response(ReplyCreated, 201)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 422)
    async def reply(case_id: int, data: ReplyIn) -> Any:
        """Upload a reply that is already ciphertext; anything else is refused and not stored."""
        try:
            reply_id = await core().casework.add_reply(officer(), case_id, data.armored.encode("utf-8"))
        except NotFound:
            return ErrorResponse(error="no such case"), 404
        except ReplyRejected as exc:
            return ErrorResponse(error=str(exc)), 422
        return ReplyCreated(id=reply_id), 201

    @app.post(f"{PREFIX}/cases/<id:case_id>/audit")
    @validate_request(AuditIn)
    @validate_response(ErrorResponse, 404)
    async def audit(case_id: int, data: AuditIn) -> Any:
        """Record a desk-side action (an export) in the audit log."""
        try:
            await core().casework.record(officer(), case_id, data.action, **data.details)
        except NotFound:
            return ErrorResponse(error="no such case"), 404
        return "", 204

    # -- sealed identities (cpcp/disclosure.py) ---------------------------------------------

    def disclosure_error(exc: CPCPError) -> Any:
        status = {NotFound: 404, Forbidden: 403, Conflict: 409}.get(type(exc), 422)
        return ErrorResponse(error=str(exc)), status

    @app.post(f"{PREFIX}/cases/<id:case_id>/disclosure-requests")
    @validate_request(DisclosureRequestIn)
    @validate_response(DisclosureOut, 201)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 409)
    @validate_response(ErrorResponse, 422)
    async def request_disclosure(case_id: int, data: DisclosureRequestIn) -> Any:
        """Ask a custodian for the source's sealed contact details, with a reason; audited."""
        try:
            return DisclosureOut.model_validate(
                await core().disclosures.request(officer(), case_id, data.reason)), 201
        except CPCPError as exc:
            return disclosure_error(exc)

    @app.get(f"{PREFIX}/disclosure-requests")
    @validate_response(DisclosureList, 200)
    async def disclosure_requests() -> Any:
        """A custodian: every request of the district. An officer: their own requests."""
        return DisclosureList.model_validate({"requests": await core().disclosures.listing(officer())}), 200

    async def decide(request_id: int, approve: bool) -> Any:
        try:
            return DisclosureOut.model_validate(
                await core().disclosures.decide(officer(), request_id, approve=approve)), 200
        except CPCPError as exc:
            return disclosure_error(exc)

    @app.post(f"{PREFIX}/disclosure-requests/<id:request_id>/approve")
    @validate_response(DisclosureOut, 200)
    @validate_response(ErrorResponse, 403)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 409)
    async def approve_disclosure(request_id: int) -> Any:
        """Custodians only: approve a pending request (then re-encrypt and upload); audited."""
        return await decide(request_id, True)

    @app.post(f"{PREFIX}/disclosure-requests/<id:request_id>/refuse")
    @validate_response(DisclosureOut, 200)
    @validate_response(ErrorResponse, 403)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 409)
    async def refuse_disclosure(request_id: int) -> Any:
        """Custodians only: refuse a pending request; audited."""
        return await decide(request_id, False)

    @app.get(f"{PREFIX}/disclosure-requests/<id:request_id>/sealed")
    async def sealed_identity(request_id: int) -> Any:
        """The approving custodian: the sealed ciphertext (to the custodians' keys); audited."""
        try:
            path = await core().disclosures.sealed_path(officer(), request_id)
        except CPCPError as exc:
            body, status = disclosure_error(exc)
            return error(status, body.error)
        return await _ciphertext(path)

    @app.put(f"{PREFIX}/disclosure-requests/<id:request_id>/disclosure")
    @validate_request(DisclosureUpload)
    @validate_response(DisclosureOut, 200)
    @validate_response(ErrorResponse, 403)
    @validate_response(ErrorResponse, 404)
    @validate_response(ErrorResponse, 409)
    @validate_response(ErrorResponse, 422)
    async def upload_disclosure(request_id: int, data: DisclosureUpload) -> Any:
        """The approving custodian uploads the details re-encrypted to the requester's key;
        refused unless gpg lists that key (and only it and custodians') as recipient."""
        try:
            return DisclosureOut.model_validate(
                await core().disclosures.upload(officer(), request_id, data.armored.encode("utf-8"))), 200
        except CPCPError as exc:
            return disclosure_error(exc)

    @app.get(f"{PREFIX}/disclosure-requests/<id:request_id>/disclosure")
    async def disclosure(request_id: int) -> Any:
        """The requester: the disclosed details' ciphertext (to their key); audited."""
        try:
            path = await core().disclosures.disclosure_path(officer(), request_id)
        except CPCPError as exc:
            body, status = disclosure_error(exc)
            return error(status, body.error)
        return await _ciphertext(path)

    @app.get(f"{PREFIX}/documents/<id:document_id>")
    async def document(document_id: int) -> Any:
        """A submission's ciphertext (application/pgp-encrypted)."""
        try:
            path = await core().casework.document_path(officer(), document_id)
        except (NotFound, StoreError):
            return error(404, "no such document")
        return await _ciphertext(path)

    # Batches are read and encoded whole in memory: two at a time bound what a flood of them
    # (a stolen token, a desk gone wrong) can take, ~20 MB each.
    batch_gate = asyncio.Semaphore(2)

    @app.post(f"{PREFIX}/documents/batch")
    @validate_request(DocumentBatchIn)
    @validate_response(DocumentBatch, 200)
    @validate_response(DocumentsMissingOut, 404)
    @validate_response(ErrorResponse, 413)
    async def document_batch(data: DocumentBatchIn) -> Any:
        """Several small ciphertexts in one answer and one audit entry (a desk's sync)."""
        try:
            paths = await core().casework.document_paths(
                officer(), data.ids, max_size=BATCH_MAX_OBJECT, max_total=BATCH_MAX_BYTES)
        except DocumentsMissing as exc:
            return DocumentsMissingOut(error=str(exc), missing=exc.missing), 404
        except BatchTooLarge as exc:
            return ErrorResponse(error=str(exc)), 413
        async with batch_gate:
            try:
                blobs = await asyncio.to_thread(lambda: {i: p.read_bytes() for i, p in paths.items()})
            except OSError:  # removed since the check: recorded, as a single download would be
                return DocumentsMissingOut(error="a document is gone from the store", missing=[]), 404
            return DocumentBatch(documents=[
                CiphertextOut(id=i, ciphertext=base64.b64encode(blob).decode("ascii"))
                for i, blob in blobs.items()
            ]), 200

    @app.get(f"{PREFIX}/replies/<id:reply_id>")
    async def reply_ciphertext(reply_id: int) -> Any:
        """A reply's ciphertext (application/pgp-encrypted)."""
        try:
            path = await core().casework.reply_path(officer(), reply_id)
        except (NotFound, StoreError):
            return error(404, "no such reply")
        return await _ciphertext(path)

    async def _ciphertext(path: Any) -> Response:
        if not await asyncio.to_thread(path.exists):
            return error(404, "gone")
        response = await send_file(path, mimetype="application/pgp-encrypted", conditional=False)
        return response

    @app.errorhandler(RequestSchemaValidationError)
    async def invalid(exc: RequestSchemaValidationError) -> Response:
        return error(400, "request does not match the API schema")

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, exc.name)

    @app.errorhandler(Exception)
    async def crash(exc: Exception) -> Response:
        current_app.logger.error("unhandled %s in %s", type(exc).__name__, request.endpoint,
                                 exc_info=current_app.debug)
        return error(500, "internal error")
