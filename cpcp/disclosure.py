"""Disclosing a source's sealed contact details: asked by a case officer with a reason, decided
by a custodian, re-encrypted on the custodian's desk; every step in the audit log.

Threat answered: an officer (or a stolen officer token) unmasking a source at will. Contact
details are sealed to the custodians' keys only (cpcp/intake.py), so the server cannot read
them and a unit's officers cannot either. A custodian's desk decrypts them locally and encrypts
them to the requesting officer's pinned key; the server accepts that upload only if gpg lists
the requester's key among its recipients, and no key but the requester's and custodians'. The
server never holds a private key and never sees the details in clear.

Scoping: a request is only possible on a case of the officer's units; only the requester reads
the disclosure; only a custodian lists, approves or refuses requests, and not their own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .audit import AuditLog
from .errors import CPCPError, NotFound
from .models import (
    Case,
    DisclosureRequest,
    DisclosureStatus,
    Officer,
    SealedIdentity,
    utcnow_minute,
)
from .officers import OfficerIdentity
from .pgp import Keyring
from .store import Store

MAX_REASON_CHARS = 1000


class DisclosureRejected(CPCPError):
    """The request or the upload is refused as given (no reason, wrong recipients)."""


class Forbidden(CPCPError):
    """Only a custodian may do this."""


class Conflict(CPCPError):
    """The request is not in the state this step needs (already decided, not approved)."""


def request_summary(req: DisclosureRequest, case: Case, requester: Officer,
                    decided_by: Officer | None) -> dict[str, Any]:
    return {
        "id": req.id,
        "case": case.id,
        "case_public_id": case.public_id,
        "unit": case.unit.slug,
        "requester": {"id": requester.id, "handle": requester.handle, "name": requester.display_name,
                      "fingerprint": requester.fingerprint},
        "reason": req.reason,
        "status": req.status.value,
        "requested_at": req.requested_at.isoformat(),
        "decided_by": decided_by.handle if decided_by else None,
        "decided_at": req.decided_at.isoformat() if req.decided_at else None,
        "disclosed_at": req.disclosed_at.isoformat() if req.disclosed_at else None,
        "size": req.size,
    }


class Disclosures:
    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        store: Store,
        officer_keys: Keyring,
        audit: AuditLog,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._officer_keys = officer_keys
        self._audit = audit

    async def _summary(self, db: AsyncSession, req: DisclosureRequest) -> dict[str, Any]:
        case = await db.get(Case, req.case_id)
        requester = await db.get(Officer, req.requester_id)
        decided_by = await db.get(Officer, req.decided_by_id) if req.decided_by_id else None
        assert case is not None and requester is not None
        return request_summary(req, case, requester, decided_by)

    async def request(self, officer: OfficerIdentity, case_id: int, reason: str) -> dict[str, Any]:
        """A case officer asks for the sealed contact details of a case of their units."""
        reason = reason.strip()
        if not reason:
            raise DisclosureRejected("a reason is required")
        if len(reason) > MAX_REASON_CHARS:
            raise DisclosureRejected(f"the reason is limited to {MAX_REASON_CHARS} characters")
        async with self._audit.transaction() as db:
            case = await db.get(Case, case_id)
            if case is None or case.unit_id not in officer.unit_ids:
                raise NotFound("no such case")  # another unit's case: as if missing
            if await db.scalar(select(SealedIdentity.id).where(SealedIdentity.case_id == case.id)) is None:
                raise NotFound("the source left no contact details on this case")
            pending = await db.scalar(select(DisclosureRequest.id).where(
                DisclosureRequest.case_id == case.id, DisclosureRequest.requester_id == officer.id,
                DisclosureRequest.status.in_([DisclosureStatus.PENDING, DisclosureStatus.APPROVED])))
            if pending is not None:
                raise Conflict(f"you already have an open request ({pending}) on this case")
            req = DisclosureRequest(case_id=case.id, requester_id=officer.id, reason=reason)
            db.add(req)
            await db.flush()
            await self._audit.record(db, officer_id=officer.id, action="disclosure_request",
                                     case=case.id, request=req.id, reason=reason)
            return await self._summary(db, req)

    async def listing(self, officer: OfficerIdentity) -> list[dict[str, Any]]:
        """A custodian sees every request of the district; an officer their own."""
        async with self._sessions() as db:
            query = select(DisclosureRequest).order_by(DisclosureRequest.id)
            if not officer.is_custodian:
                query = query.where(DisclosureRequest.requester_id == officer.id)
            return [await self._summary(db, r) for r in (await db.scalars(query)).all()]

    async def _as_custodian(self, db: AsyncSession, officer: OfficerIdentity, request_id: int,
                            state: DisclosureStatus) -> DisclosureRequest:
        if not officer.is_custodian:
            raise Forbidden("only a custodian may decide on a disclosure")
        req = await db.get(DisclosureRequest, request_id)
        if req is None:
            raise NotFound("no such disclosure request")
        if req.requester_id == officer.id:
            raise Forbidden("a custodian cannot decide on their own request")
        if req.status != state:
            raise Conflict(f"the request is {req.status.value}, not {state.value}")
        return req

    async def decide(self, officer: OfficerIdentity, request_id: int, *, approve: bool) -> dict[str, Any]:
        async with self._audit.transaction() as db:
            req = await self._as_custodian(db, officer, request_id, DisclosureStatus.PENDING)
            req.status = DisclosureStatus.APPROVED if approve else DisclosureStatus.REFUSED
            req.decided_by_id = officer.id
            req.decided_at = utcnow_minute()
            await db.flush()
            await self._audit.record(db, officer_id=officer.id,
                                     action="disclosure_approve" if approve else "disclosure_refuse",
                                     case=req.case_id, request=req.id)
            return await self._summary(db, req)

    async def sealed_path(self, officer: OfficerIdentity, request_id: int) -> Path:
        """The sealed ciphertext, for the approving custodian's desk to re-encrypt."""
        async with self._audit.transaction() as db:
            req = await self._as_custodian(db, officer, request_id, DisclosureStatus.APPROVED)
            if req.decided_by_id != officer.id:
                raise Forbidden("only the custodian who approved it completes a disclosure")
            sealed = await db.scalar(select(SealedIdentity).where(SealedIdentity.case_id == req.case_id))
            if sealed is None:
                raise NotFound("the sealed contact details are gone")
            await self._audit.record(db, officer_id=officer.id, action="disclosure_download_sealed",
                                     case=req.case_id, request=req.id)
            return self._store.path(sealed.object_name)

    async def upload(self, officer: OfficerIdentity, request_id: int, ciphertext: bytes) -> dict[str, Any]:
        """Store the details re-encrypted to the requester. gpg must list the requester's key
        as a recipient, and no key but the requester's and the custodians'."""
        async with self._sessions() as db:
            req = await self._as_custodian(db, officer, request_id, DisclosureStatus.APPROVED)
            if req.decided_by_id != officer.id:
                raise Forbidden("only the custodian who approved it completes a disclosure")
            requester = await db.get(Officer, req.requester_id)
            assert requester is not None
            custodians = (await db.scalars(select(Officer.fingerprint).where(Officer.is_custodian))).all()
        ring = self._officer_keys
        recipients = await asyncio.to_thread(ring.message_recipients, ciphertext)
        if not recipients:
            raise DisclosureRejected("not an encrypted OpenPGP message")
        wanted = await asyncio.to_thread(ring.encryption_key_ids, requester.fingerprint)
        if not recipients & wanted:
            raise DisclosureRejected("not encrypted to the requesting officer's key")
        allowed = set(wanted)
        for fpr in custodians:
            allowed |= await asyncio.to_thread(ring.encryption_key_ids, fpr)
        if recipients - allowed:
            raise DisclosureRejected("encrypted to keys other than the requester's and the custodians'")
        async with self._audit.transaction() as db:
            req = await self._as_custodian(db, officer, request_id, DisclosureStatus.APPROVED)
            case = await db.get(Case, req.case_id)
            assert case is not None
            name = self._store.write_bytes(ciphertext, case_public_id=case.public_id, role="disclosure")
            try:
                req.object_name = name
                req.size = len(ciphertext)
                req.status = DisclosureStatus.DISCLOSED
                req.disclosed_at = utcnow_minute()
                await db.flush()
                await self._audit.record(db, officer_id=officer.id, action="disclosure_upload",
                                         case=case.id, request=req.id)
                return await self._summary(db, req)
            except BaseException:
                self._store.delete(name)
                raise

    async def disclosure_path(self, officer: OfficerIdentity, request_id: int) -> Path:
        """The re-encrypted details, for the requester only (and while the case is theirs)."""
        async with self._audit.transaction() as db:
            req = await db.get(DisclosureRequest, request_id)
            case = await db.get(Case, req.case_id) if req is not None else None
            if (req is None or case is None or req.requester_id != officer.id
                    or case.unit_id not in officer.unit_ids):
                raise NotFound("no such disclosure request")
            if req.status != DisclosureStatus.DISCLOSED or req.object_name is None:
                raise Conflict(f"the request is {req.status.value}: nothing disclosed yet")
            await self._audit.record(db, officer_id=officer.id, action="disclosure_view",
                                     case=case.id, request=req.id)
            return self._store.path(req.object_name)
