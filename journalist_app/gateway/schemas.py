"""Wire shapes of the gateway's JSON API (pydantic, so quart-schema validates and documents
them as OpenAPI). Metadata only: no field ever carries tip or reply plaintext."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["received", "under_review", "action_taken", "closed"]
Priority = Literal["low", "normal", "high", "urgent"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


HANDLE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class TokenRequest(Strict):
    handle: str = Field(pattern=HANDLE_PATTERN)
    passphrase: str = Field(min_length=1, max_length=1024)
    code: str = Field(min_length=1, max_length=12, description="6-digit TOTP code")


class TokenResponse(BaseModel):
    token: str
    expires_at: str


class ErrorResponse(BaseModel):
    error: str


class OfficerOut(BaseModel):
    id: int
    handle: str
    name: str
    fingerprint: str


class UnitOut(BaseModel):
    slug: str
    kind: str
    name_en: str
    name_hi: str
    officers: list[OfficerOut]


class UnitList(BaseModel):
    units: list[UnitOut]


class Me(BaseModel):
    id: int
    handle: str
    name: str
    is_admin: bool
    is_custodian: bool = Field(description="may approve or refuse disclosures of sealed identities")


class KeyOut(BaseModel):
    fingerprint: str
    armored: str


class DocumentOut(BaseModel):
    id: int
    role: Literal["message", "file"]
    size: int


class SubmissionOut(BaseModel):
    id: int
    received_at: str
    raises_alert: bool = Field(description="false when it arrived while the case was marked spam")
    documents: list[DocumentOut]


class ReplyOut(BaseModel):
    id: int
    sent_at: str
    size: int
    deleted_by_source: bool


class CaseOut(BaseModel):
    id: int
    public_id: str
    unit: str
    status: Status
    priority: Priority
    labels: list[str]
    assignee: int | None
    spam: bool = Field(description="marked as spam or a prank: hidden from the inbox, no alerts")
    identity_sealed: bool = Field(description="the source left contact details, sealed to the custodians")
    received_at: str
    updated_at: str
    reply_due_at: str | None = Field(
        description="ISO 8601 time the first officer reply is due, from the deployment's "
                    "response targets for the tip's kind and category; null: no target")
    overdue: bool = Field(description="past reply_due_at with no officer reply (closed and spam "
                                      "cases are never overdue)")
    submissions: list[SubmissionOut]
    replies: list[ReplyOut]


class CaseList(BaseModel):
    cases: list[CaseOut]
    next_after_id: int | None = Field(description="pass as after_id for the next page; null at the end")


class CaseQuery(BaseModel):
    after_id: int = Field(default=0, ge=0, le=2**31 - 1)
    limit: int = Field(default=500, ge=1, le=1000)


class CaseUpdate(Strict):
    status: Status | None = None
    priority: Priority | None = None
    labels: list[str] | None = Field(default=None, max_length=10)
    assignee: int | None = Field(default=None, ge=1, le=2**31 - 1, description="officer id")
    unassign: bool = False
    spam: bool | None = Field(default=None, description="mark (true) or unmark (false) as spam; audited")


class ReplyIn(Strict):
    armored: str = Field(min_length=1, max_length=5_000_000,
                         description="ASCII-armored OpenPGP message to the source's key and a unit key")


class ReplyCreated(BaseModel):
    id: int


#: A batch carries small objects only (tip messages, small photos); the rest stream alone,
#: resumable. At most 4 MiB of ciphertext per batch bounds the memory one answer takes (the
#: bytes, their base64 and the JSON: ~20 MB).
BATCH_MAX_IDS = 100
BATCH_MAX_OBJECT = 256 * 1024
BATCH_MAX_BYTES = 4 * 1024 * 1024

DocumentId = Annotated[int, Field(ge=1, le=2**31 - 1)]


class DocumentBatchIn(Strict):
    ids: list[DocumentId] = Field(min_length=1, max_length=BATCH_MAX_IDS,
                                  description=f"document ids, each at most {BATCH_MAX_OBJECT} bytes, "
                                              f"at most {BATCH_MAX_BYTES} bytes in all")


class CiphertextOut(BaseModel):
    id: int
    ciphertext: str = Field(description="the stored OpenPGP message, base64")


class DocumentBatch(BaseModel):
    documents: list[CiphertextOut]


class DocumentsMissingOut(BaseModel):
    error: str
    missing: list[int] = Field(description="ids the officer cannot have (another unit's, unknown, gone); "
                                           "ask again without them")


class AuditIn(Strict):
    action: Literal["export", "print"]
    details: dict[str, str] = Field(default_factory=dict, max_length=20)


DisclosureStatus = Literal["pending", "refused", "approved", "disclosed"]


class DisclosureRequestIn(Strict):
    reason: str = Field(max_length=1000, description="why the source must be contacted; required")


class Requester(BaseModel):
    id: int
    handle: str
    name: str
    fingerprint: str


class DisclosureOut(BaseModel):
    id: int
    case: int
    case_public_id: str
    unit: str
    requester: Requester
    reason: str
    status: DisclosureStatus
    requested_at: str
    decided_by: str | None
    decided_at: str | None
    disclosed_at: str | None
    size: int | None


class DisclosureList(BaseModel):
    requests: list[DisclosureOut] = Field(description="a custodian's: every request; an officer's: their own")


class DisclosureUpload(Strict):
    armored: str = Field(min_length=1, max_length=100_000,
                         description="the contact details, ASCII-armored OpenPGP message to the requester's key")


#: The longest wait a poll may ask for; the gateway may hold it shorter (gateway.feed_max_wait).
FEED_MAX_WAIT = 60


class ChangesQuery(BaseModel):
    since: int | None = Field(default=None, ge=0, le=2**31 - 1,
                              description="the cursor of the previous answer; omitted: answer at once "
                                          "with the current cursor only")
    wait: int = Field(default=0, ge=0, le=FEED_MAX_WAIT,
                      description="seconds to hold the poll open when nothing changed; "
                                  "held at most gateway.feed_max_wait")


class ChangesOut(BaseModel):
    cursor: int = Field(description="pass as since in the next poll (a position in a sequence, not a count)")
    cases: list[int] = Field(description="ids of the officer's cases with a new submission after since")
    counts: dict[str, int] = Field(description="per unit slug: how many of those cases raise an alert "
                                               "(spam cases are left out)")
    reset: bool = Field(description="since was ahead of the server (a restored database): sync everything")
