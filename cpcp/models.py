"""Database models. Only the metadata docs/architecture.md lists is in clear; everything else is ciphertext
in the store, referred to by object name.

Every change here needs an Alembic migration (tests/test_migrations.py keeps them in agreement).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow_minute() -> dt.datetime:
    """Now, to the minute: received times need no finer grain, and finer helps correlation."""
    return dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UnitKind(enum.StrEnum):
    POLICE_STATION = "police_station"
    CELL = "cell"
    CONTROL_ROOM = "control_room"


class CaseStatus(enum.StrEnum):
    RECEIVED = "received"
    UNDER_REVIEW = "under_review"
    ACTION_TAKEN = "action_taken"
    CLOSED = "closed"


class CasePriority(enum.StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class DisclosureStatus(enum.StrEnum):
    PENDING = "pending"  # asked by the case officer, waiting for a custodian
    REFUSED = "refused"
    APPROVED = "approved"  # a custodian said yes; their desk is re-encrypting
    DISCLOSED = "disclosed"  # the re-encrypted details are stored for the requester


class DocumentRole(enum.StrEnum):
    MESSAGE = "message"  # the structured answers and free text, as JSON
    FILE = "file"


unit_officers = Table(
    "unit_officers",
    Base.metadata,
    Column("unit_id", ForeignKey("units.id", ondelete="CASCADE"), primary_key=True),
    Column("officer_id", ForeignKey("officers.id", ondelete="CASCADE"), primary_key=True),
)


class Unit(Base):
    """A police station, a cell or the control room; tips are routed to one."""

    __tablename__ = "units"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[UnitKind] = mapped_column(
        Enum(UnitKind, native_enum=False, length=20, create_constraint=True,
             values_callable=lambda e: [m.value for m in e], name="unit_kind")
    )
    name_en: Mapped[str] = mapped_column(String(200))
    name_hi: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    officers: Mapped[list[Officer]] = relationship(
        secondary=unit_officers, back_populates="units", lazy="selectin"
    )


class Officer(Base):
    """A designated officer; only the public key's pinned fingerprint is known to the server."""

    __tablename__ = "officers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(40), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    units: Mapped[list[Unit]] = relationship(
        secondary=unit_officers, back_populates="officers", lazy="selectin"
    )
    # Gateway login; an officer without a passphrase hash cannot log in yet.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    passphrase_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Sealed with the gateway's key (cpcp/gateway_secrets.py): the source app shares this
    # database but cannot read or plant a TOTP secret.
    totp_secret: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The last accepted TOTP time step: a code is good once (RFC 6238 section 5.2).
    totp_last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A custodian (the SP, a designated ASP): contact details are sealed to custodians' keys,
    # and only a custodian may approve their disclosure to a case officer.
    is_custodian: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Source(Base):
    """A codename holder. The codename itself is nowhere; only its slow keyed hash."""

    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lookup_id: Mapped[str] = mapped_column(String(64), unique=True)
    reply_key_fingerprint: Mapped[str] = mapped_column(String(40), unique=True)
    # The reply key's public half (armored), written by the source app, which alone holds the
    # key pair: the gateway checks and hands out reply keys from here, with no access to the
    # source app's keyring. None only for sources made before the column, until the source
    # app's next start fills it in.
    reply_public_key: Mapped[str | None] = mapped_column(Text, nullable=True)


class Case(Base):
    """What a source sent to one unit, and what happened to it."""

    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Random public id: names the case's store folder and is the tip ID officers quote.
    public_id: Mapped[str] = mapped_column(String(36), unique=True, default=lambda: str(uuid.uuid4()))
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), unique=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), index=True)
    status: Mapped[CaseStatus] = mapped_column(
        Enum(CaseStatus, native_enum=False, length=20, create_constraint=True,
             values_callable=lambda e: [m.value for m in e], name="case_status"),
        default=CaseStatus.RECEIVED,
    )
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow_minute)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow_minute)
    assignee_id: Mapped[int | None] = mapped_column(
        ForeignKey("officers.id", ondelete="SET NULL"), nullable=True
    )
    priority: Mapped[CasePriority] = mapped_column(
        Enum(CasePriority, native_enum=False, length=20, create_constraint=True,
             values_callable=lambda e: [m.value for m in e], name="case_priority"),
        default=CasePriority.NORMAL, server_default=CasePriority.NORMAL.value,
    )
    labels: Mapped[list[str]] = mapped_column(JSON, default=list, server_default="[]")
    # Marked as spam or a prank by an officer (audited, reversible): hidden from the inbox,
    # and later messages raise no alert.
    spam: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When the first officer reply is due (cpcp/targets.py; set at intake from the tip's kind
    # and category, which themselves stay encrypted); null: no target applies.
    reply_due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The overdue stages cpcp-alerts went through, once each: the reminder to the unit's
    # head, then the escalation to the oversight.
    reminded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    escalated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    unit: Mapped[Unit] = relationship(lazy="joined")
    submissions: Mapped[list[Submission]] = relationship(
        back_populates="case", order_by="Submission.id", lazy="selectin"
    )
    replies: Mapped[list[Reply]] = relationship(
        back_populates="case", order_by="Reply.id", lazy="selectin"
    )
    sealed_identity: Mapped[SealedIdentity | None] = relationship(lazy="selectin", uselist=False)


class Submission(Base):
    """One sending from the source: a message and any files, stored all or nothing."""

    __tablename__ = "submissions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow_minute)
    # Decided when it arrives (false in a spam case): the flag the alert code reads, so that
    # unmarking a case later does not alert for what came while it was spam.
    raises_alert: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # cpcp-alerts has sent the alert that counted it. A flag per row, not a highest-id cursor:
    # on PostgreSQL a lower id can commit after a higher one (a large upload still writing).
    alerted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    case: Mapped[Case] = relationship(back_populates="submissions")
    documents: Mapped[list[Document]] = relationship(
        back_populates="submission", order_by="Document.id", lazy="selectin"
    )


class Document(Base):
    """One ciphertext object in the store."""

    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    submission_id: Mapped[int] = mapped_column(
        ForeignKey("submissions.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[DocumentRole] = mapped_column(
        Enum(DocumentRole, native_enum=False, length=20, create_constraint=True,
             values_callable=lambda e: [m.value for m in e], name="document_role")
    )
    object_name: Mapped[str] = mapped_column(String(200), unique=True)
    size: Mapped[int] = mapped_column(Integer)  # ciphertext bytes
    submission: Mapped[Submission] = relationship(back_populates="documents")


class Reply(Base):
    """An officer's reply, encrypted at the desk to the source's key and the unit's keys."""

    __tablename__ = "replies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    object_name: Mapped[str | None] = mapped_column(String(200), unique=True)
    size: Mapped[int] = mapped_column(Integer)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow_minute)
    # The source deleted it: the ciphertext is gone, the row tells officers it was read and removed.
    deleted_by_source: Mapped[bool] = mapped_column(Boolean, default=False)
    case: Mapped[Case] = relationship(back_populates="replies")


class SealedIdentity(Base):
    """A source's contact details: one ciphertext object encrypted to the custodians' keys
    only, never to the unit. The server cannot read it; officers never download it."""

    __tablename__ = "sealed_identities"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), unique=True)
    object_name: Mapped[str] = mapped_column(String(200), unique=True)
    size: Mapped[int] = mapped_column(Integer)


class DisclosureRequest(Base):
    """A case officer asks for a sealed identity, with a reason; a custodian decides. On
    approval the custodian's desk re-encrypts the details to the requester's key and the
    ciphertext is kept here (``object_name``). The reason is the officer's own words, in
    clear: custodians must read it, and it is part of the record."""

    __tablename__ = "disclosure_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("officers.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[DisclosureStatus] = mapped_column(
        Enum(DisclosureStatus, native_enum=False, length=20, create_constraint=True,
             values_callable=lambda e: [m.value for m in e], name="disclosure_status"),
        default=DisclosureStatus.PENDING,
    )
    requested_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow_minute)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"), nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    object_name: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    size: Mapped[int | None] = mapped_column(Integer, nullable=True)
    disclosed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiToken(Base):
    """A desk's short-lived bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    officer_id: Mapped[int] = mapped_column(ForeignKey("officers.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Event(Base):
    """A festival, gathering or procession the source side offers for feedback."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title_en: Mapped[str] = mapped_column(String(200))
    title_hi: Mapped[str] = mapped_column(String(200))
    place: Mapped[str] = mapped_column(String(200), default="")
    starts_on: Mapped[dt.date] = mapped_column(Date)
    ends_on: Mapped[dt.date] = mapped_column(Date)
    open: Mapped[bool] = mapped_column(Boolean, default=True)


class ResponseTarget(Base):
    """The deployment file's ``[targets]``, copied by ``cpcp-admin deploy`` (cpcp/targetstore.py):
    the source app reads them here, so it needs nothing of that file (which holds alert URLs)."""

    __tablename__ = "response_targets"
    rule: Mapped[str] = mapped_column(String(64), primary_key=True)  # "default", "kind[.category]"
    minutes: Mapped[int] = mapped_column(Integer)


class AlertCursor(Base):
    """Per unit, the newest submission when cpcp-alerts first saw it: what came before is not
    alerted for (turning alerts on does not announce the whole history)."""

    __tablename__ = "alert_cursors"
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"), primary_key=True)
    last_submission_id: Mapped[int] = mapped_column(Integer)


class AuditEntry(Base):
    """One officer action. Each entry's hash covers the previous entry's hash, so deleting or
    altering any entry breaks the chain from there on (``cpcp-admin audit-verify``)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    officer_id: Mapped[int | None] = mapped_column(ForeignKey("officers.id"), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text)  # canonical JSON
    # Unique: two entries can never claim the same predecessor, so the chain cannot fork.
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)
