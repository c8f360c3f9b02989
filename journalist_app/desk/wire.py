"""What the gateway's API sends and takes, as the desk reads it (pydantic, so an answer that
does not fit is refused at the boundary). Written from the gateway's OpenAPI document, not
imported from the gateway: the desk shares no code with the server. Metadata only."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Base64Bytes, BaseModel, ConfigDict, Field

Status = Literal["received", "under_review", "action_taken", "closed"]
Priority = Literal["low", "normal", "high", "urgent"]

STATUSES: tuple[Status, ...] = ("received", "under_review", "action_taken", "closed")
PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high", "urgent")


class Wire(BaseModel):
    # Unknown fields from a newer gateway are ignored; known ones are checked.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Token(Wire):
    token: str = Field(min_length=16)
    expires_at: str


class Me(Wire):
    id: int
    handle: str
    name: str
    is_admin: bool
    is_custodian: bool = False


class Officer(Wire):
    id: int
    handle: str
    name: str
    fingerprint: str = Field(pattern=r"^[0-9A-F]{40}$")


class Unit(Wire):
    slug: str
    kind: str
    name_en: str
    name_hi: str
    officers: list[Officer]


class UnitList(Wire):
    units: list[Unit]


class Key(Wire):
    fingerprint: str = Field(pattern=r"^[0-9A-F]{40}$")
    armored: str


class Document(Wire):
    id: int
    role: Literal["message", "file"]
    size: int = Field(ge=0)


class Submission(Wire):
    id: int
    received_at: dt.datetime
    documents: list[Document]


class Reply(Wire):
    id: int
    sent_at: dt.datetime
    size: int = Field(ge=0)
    deleted_by_source: bool


class Case(Wire):
    id: int
    public_id: str = Field(pattern=r"^[A-Za-z0-9-]{1,64}$")
    unit: str
    status: Status
    priority: Priority
    labels: list[str]
    assignee: int | None
    received_at: dt.datetime
    updated_at: dt.datetime
    submissions: list[Submission]
    replies: list[Reply]
    spam: bool = False
    identity_sealed: bool = False
    # From the deployment's response targets: when the first reply is due, and whether that
    # time has passed unanswered. Optional, so a gateway without targets is read as before.
    reply_due_at: dt.datetime | None = None
    overdue: bool = False


class CasePage(Wire):
    cases: list[Case]
    next_after_id: int | None


class Changes(Wire):
    """An answer of the change feed: ids and counts only."""

    cursor: int = Field(ge=0)
    cases: list[int]
    counts: dict[str, int]
    reset: bool = False


class ReplyCreated(Wire):
    id: int


class Ciphertext(Wire):
    id: int
    ciphertext: Base64Bytes


class DocumentBatch(Wire):
    documents: list[Ciphertext]


class DocumentsMissingAnswer(Wire):
    error: str
    missing: list[int]


DisclosureStatus = Literal["pending", "refused", "approved", "disclosed"]


class Requester(Wire):
    id: int
    handle: str
    name: str
    fingerprint: str = Field(pattern=r"^[0-9A-F]{40}$")


class Disclosure(Wire):
    """A request for a case's sealed contact details, as the gateway reports it."""

    id: int
    case: int
    case_public_id: str
    unit: str
    requester: Requester
    reason: str
    status: DisclosureStatus
    requested_at: dt.datetime
    decided_by: str | None
    decided_at: dt.datetime | None
    disclosed_at: dt.datetime | None


class DisclosureList(Wire):
    requests: list[Disclosure]


class CaseChanges(BaseModel):
    """A PATCH body; only the fields set are sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Status | None = None
    priority: Priority | None = None
    labels: list[str] | None = None
    assignee: int | None = None
    unassign: bool = False
    spam: bool | None = None
