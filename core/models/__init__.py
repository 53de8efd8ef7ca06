"""The gateway's tables as typed SQLAlchemy mappings."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Enum, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.platform.clock import utcnow
from core.platform.db import Base
from core.platform.settings import OperatorRoute

# A caller ID as Twilio gives it: an E.164 number, but also a `sip:` URI or a `client:` identity.
# The voice webhooks keep at most this much of `From`, and the columns that store it are as wide.
CALLER_ID_CHARS = 64


class LineType(StrEnum):
    mobile = "mobile"
    fixed = "fixed"
    unknown = "unknown"


class OutboundChannel(StrEnum):
    sms = "sms"
    call = "call"
    email = "email"
    # A temporary password the cabinet may not have stored (a time-out, §11): the same PUT,
    # retried by core/accounts/http.py until the cabinet answers. Never the dispatcher's.
    cabinet = "cabinet"


class OutboxStatus(StrEnum):
    """Where an outbound message stands: the dispatcher's own states, then the provider's words."""

    # Ours (core/delivery/dispatcher.py): waiting, leased by a drain, handed to the provider.
    queued = "queued"
    claimed = "claimed"
    sending = "sending"
    # A held cabinet PUT (core/accounts/http.py): only the settler sees it, never the dispatcher.
    pending = "pending"
    expired = "expired"
    # Never sent: kept so that every path costs the same (§6.2), purged soon.
    withheld = "withheld"
    # The provider may or may not have taken it (no answer came): never sent again.
    unknown = "unknown"
    # The provider's (Twilio's status callbacks, core/delivery/outbox.py PROGRESS).
    sent = "sent"
    initiated = "initiated"
    ringing = "ringing"
    in_progress = "in-progress"
    undelivered = "undelivered"
    failed = "failed"
    busy = "busy"
    no_answer = "no-answer"
    canceled = "canceled"
    delivered = "delivered"
    completed = "completed"
    read = "read"


class OutboxPurpose(StrEnum):
    """What an outbound message is for (its secrets, deadlines and opt-out rules follow from it)."""

    code = "code"  # the one-time code by SMS
    code_call = "code_call"  # the call that speaks a code
    password = "password"  # a temporary password
    login = "login"  # a reminder of the login
    notice = "notice"  # a completed recovery told to the contacts on file (§6.8)
    optout_confirmation = "optout_confirmation"  # the answer to STOP
    cabinet_password = "cabinet_password"  # a held PUT to the cabinet (§11)


class EscalationReason(StrEnum):
    """Why a resident reached an operator (the whisper names each one)."""

    caller_request = "caller_request"
    retries_exhausted = "retries_exhausted"
    verification_capped = "verification_capped"
    limit = "limit"
    error = "error"
    # Stored by earlier releases (callback requests before escalations); never given now, still
    # read back and named by the console.
    account_retries = "account_retries"
    code_retries = "code_retries"
    rate_limited = "rate_limited"
    limited = "limited"
    no_phone = "no_phone"
    no_mobile = "no_mobile"
    undelivered = "undelivered"
    out_of_hours = "out_of_hours"
    no_answer = "no_answer"


# The reasons the channels give today; the operator's whisper names each of them.
GIVEN_REASONS = frozenset(
    {
        EscalationReason.caller_request,
        EscalationReason.retries_exhausted,
        EscalationReason.verification_capped,
        EscalationReason.limit,
        EscalationReason.error,
    }
)


class Verification(StrEnum):
    """How far the resident got in proving the phone."""

    none = "none"
    code_sent = "code_sent"
    verified = "verified"


def _enum(enum_type: type[StrEnum], name: str, length: int = 16) -> Enum:
    return Enum(enum_type, name=name, native_enum=False, length=length)


class Account(Base):
    """A personal account ("лицевой счёт") and the resident's cabinet login."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_number: Mapped[str] = mapped_column(String(32), unique=True)
    login: Mapped[str] = mapped_column(String(128))
    full_name: Mapped[str] = mapped_column(String(256), default="")
    email: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The row of the billing centre's file this account was last imported from, as a digest
    # (core/accounts/importer.py): a re-import skips a row whose digest is unchanged.
    import_digest: Mapped[str | None] = mapped_column(String(32))

    phones: Mapped[list[AccountPhone]] = relationship(
        back_populates="account",
        cascade="all, delete-orphan",
        order_by="AccountPhone.position",
        lazy="selectin",
    )
    credential: Mapped[Credential | None] = relationship(
        back_populates="account", cascade="all, delete-orphan", lazy="selectin"
    )

    def __repr__(self) -> str:
        return f"Account(id={self.id})"


class AccountPhone(Base):
    """A phone on file for an account, normalised to E.164."""

    __tablename__ = "account_phones"
    __table_args__ = (UniqueConstraint("account_id", "e164"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    e164: Mapped[str] = mapped_column(String(20), index=True)
    line_type: Mapped[LineType] = mapped_column(_enum(LineType, "line_type"))
    position: Mapped[int] = mapped_column(default=0)

    account: Mapped[Account] = relationship(back_populates="phones")

    def __repr__(self) -> str:
        return f"AccountPhone(id={self.id}, line_type={self.line_type})"


class Credential(Base):
    """The cabinet password of an account: only ever an Argon2id hash."""

    __tablename__ = "credentials"

    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(String(256))
    is_temporary: Mapped[bool] = mapped_column(default=False)
    expires_at: Mapped[datetime | None] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    account: Mapped[Account] = relationship(back_populates="credential")

    def __repr__(self) -> str:
        return f"Credential(account_id={self.account_id}, is_temporary={self.is_temporary})"


class OutboxMessage(Base):
    """An outbound SMS or call, kept in the database instead of being sent (or as its record)."""

    __tablename__ = "outbox"
    # The dispatcher's question: which queued rows are due?
    __table_args__ = (Index("ix_outbox_status_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[OutboundChannel] = mapped_column(_enum(OutboundChannel, "outbound_channel"))
    to_number: Mapped[str] = mapped_column(String(256), index=True)
    from_number: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text, default="")
    url: Mapped[str | None] = mapped_column(Text)
    purpose: Mapped[OutboxPurpose] = mapped_column(_enum(OutboxPurpose, "outbox_purpose", 32))
    status: Mapped[OutboxStatus] = mapped_column(
        _enum(OutboxStatus, "outbox_status"), default=OutboxStatus.queued
    )
    error_code: Mapped[str | None] = mapped_column(String(16))
    provider_sid: Mapped[str | None] = mapped_column(String(64), index=True)
    # The recovery attempt a code message belongs to, so a failed delivery can offer a call.
    attempt_ref: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)
    # Delivery bookkeeping (core/delivery/). Our own id for the message: it rides in the
    # StatusCallback URL, so a status callback names the row even when the create request timed
    # out and we never learnt the provider's sid. Random, so it says nothing about anyone.
    idempotency_key: Mapped[str | None] = mapped_column(String(32), unique=True)
    # Requests made to the provider so far, and when the next may be made (None: at once).
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    # Not sent after this: a code must never arrive after it stopped being valid.
    send_before: Mapped[datetime | None] = mapped_column()
    # The claim of one dispatcher: a token and a lease; a dead process's claim runs out.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None] = mapped_column()
    # Why the row stopped where it did: retrying, gave_up, permanent, expired, ambiguous, ...
    reason: Mapped[str | None] = mapped_column(String(32))

    def __repr__(self) -> str:
        # The body can carry a code or a password: never part of the repr.
        return (
            f"OutboxMessage(id={self.id}, channel={self.channel}, purpose={self.purpose}, "
            f"status={self.status})"
        )


class AuditEvent(Base):
    """One recovery step, with masked or keyed-hashed references only."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    event: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(16))
    session_ref: Mapped[str] = mapped_column(String(64), default="")
    account_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    account_masked: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    # The hash chain (§6.7): `seq` numbers the links without gaps, `hash` is a keyed HMAC over the
    # row and `prev_hash`. Null only on rows written before the chain existed.
    seq: Mapped[int | None] = mapped_column(unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return f"AuditEvent(id={self.id}, seq={self.seq}, event={self.event})"


class SmsOptOut(Base):
    """A number that texted STOP: nothing goes to it until it texts START."""

    __tablename__ = "sms_opt_outs"

    e164: Mapped[str] = mapped_column(String(20), primary_key=True)
    opted_out_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return "SmsOptOut(...)"


class EscalationKind(StrEnum):
    transfer = "transfer"  # a live call handed to an operator (Dial or Enqueue)
    callback = "callback"  # the resident asked to be called back


class EscalationStatus(StrEnum):
    waiting = "waiting"
    in_progress = "in_progress"
    resolved = "resolved"
    abandoned = "abandoned"


class Escalation(Base):
    """A case for an operator: a transfer or a callback request, with what already happened.

    `context` is JSON without secrets (the flow's own notes); the audit history of the case is
    found by `session_ref` (the CallSid or SMS thread) and `account_ref`.
    """

    __tablename__ = "escalations"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    updated_at: Mapped[datetime | None] = mapped_column(onupdate=utcnow)
    kind: Mapped[EscalationKind] = mapped_column(_enum(EscalationKind, "escalation_kind"))
    channel: Mapped[str] = mapped_column(String(16))
    session_ref: Mapped[str] = mapped_column(String(64), default="", index=True)
    # The resident's number, to call back; shown masked except to the operator working the case.
    phone: Mapped[str] = mapped_column(String(CALLER_ID_CHARS), default="")
    account_ref: Mapped[str | None] = mapped_column(String(64), index=True)
    account_masked: Mapped[str | None] = mapped_column(String(32))
    purpose: Mapped[str | None] = mapped_column(String(16))
    verification: Mapped[Verification] = mapped_column(
        _enum(Verification, "verification"), default=Verification.none
    )
    attempts: Mapped[int] = mapped_column(default=0)
    reason: Mapped[EscalationReason] = mapped_column(
        _enum(EscalationReason, "escalation_reason", 32)
    )
    # How a transfer reached the operators (None: a callback request that never was one).
    route: Mapped[OperatorRoute | None] = mapped_column(_enum(OperatorRoute, "escalation_route"))
    context: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[EscalationStatus] = mapped_column(
        _enum(EscalationStatus, "escalation_status"), default=EscalationStatus.waiting, index=True
    )
    # What the transfer came to: answered, no_answer, hung_up, callback_requested, ...
    outcome: Mapped[str | None] = mapped_column(String(32))
    operator: Mapped[str | None] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    taken_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    # Temporary passwords or logins the console sent for this case (§6.15: one, a second
    # only by a supervisor).
    credential_sends: Mapped[int] = mapped_column(default=0)

    def __repr__(self) -> str:
        return (
            f"Escalation(id={self.id}, kind={self.kind}, channel={self.channel}, "
            f"status={self.status})"
        )


class OperatorRole(StrEnum):
    operator = "operator"
    supervisor = "supervisor"


class Operator(Base):
    """A person who signs in to the operator console; the password only as an Argon2id hash."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[OperatorRole] = mapped_column(
        _enum(OperatorRole, "operator_role"), default=OperatorRole.operator
    )
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column()
    # The PIN keyed at the operators' desk phone (§6.11), as an Argon2id hash; None: not set.
    desk_pin_hash: Mapped[str | None] = mapped_column(String(256))

    def __repr__(self) -> str:
        return f"Operator(id={self.id}, username={self.username!r}, role={self.role})"
