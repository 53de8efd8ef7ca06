"""The recovery flow, channel-independent: attempt → code → verification → credential → notices."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog
from redis.asyncio import Redis

from core.accounts import AccountDirectory, AccountRecord
from core.audit import AuditLog
from core.codes import CodeCheck, CodeStore
from core.config import Settings
from core.crypto import Keyring
from core.delivery import Delivery
from core.models import OutboundChannel
from core.phones import InvalidPhoneNumber, Phone, mask_account, parse_phone
from core.ratelimit import Check, Decision, Limit, RateLimiter
from voice_prompts import Catalogue, Language

log = structlog.get_logger(__name__)

DAY_SECONDS = 24 * 3600


class Purpose(StrEnum):
    password = "password"
    login = "login"


class Channel(StrEnum):
    voice = "voice"
    sms = "sms"


class SendOutcome(StrEnum):
    # "sent" is also the answer when the account has no usable phone: callers must not tell apart.
    sent = "sent"
    cooldown = "cooldown"
    capped = "capped"
    # A rate limit (§6.4) held the code back: an apology and the operator, never an error.
    limited = "limited"


class VerifyOutcome(StrEnum):
    accepted = "accepted"
    wrong = "wrong"
    invalidated = "invalidated"
    capped = "capped"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recovery attempt: an account, a purpose and the call or message thread it belongs to."""

    id: str
    account_number: str
    purpose: Purpose
    channel: Channel
    session_ref: str
    language: Language
    # The caller number's start limit had tripped: no code is sent for this attempt.
    limited: bool = False

    def __repr__(self) -> str:
        return f"Attempt({self.id[:8]}…, {mask_account(self.account_number)}, {self.purpose})"


@dataclass(frozen=True, slots=True)
class Completion:
    """What the caller gets once verified; `secret` is the temporary password or the login."""

    purpose: Purpose
    secret: str
    sent_by_sms: bool

    def __repr__(self) -> str:
        return f"Completion({self.purpose}, sent_by_sms={self.sent_by_sms})"


class RecoveryService:
    """Orchestrates one recovery: the only place that decides who gets a code or a credential."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        keyring: Keyring,
        directory: AccountDirectory,
        delivery: Delivery,
        audit: AuditLog,
        prompts: Catalogue,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._keyring = keyring
        self._directory = directory
        self._delivery = delivery
        self._audit = audit
        self._prompts = prompts
        self._codes = CodeStore(redis, settings, keyring)
        self._limits = RateLimiter(redis, settings, keyring)

    # -- attempts ---------------------------------------------------------------------------

    async def start(
        self,
        *,
        account_number: str,
        purpose: Purpose,
        channel: Channel,
        session_ref: str,
        language: Language,
        caller: str | None,
    ) -> Attempt:
        """Open an attempt; the caller ID is recorded as a risk signal only, never as a factor.

        Never refused: when the caller number has started too many recoveries, the attempt is
        marked `limited`, no code will be sent for it, and the channel decides what to say.
        """
        starts = await self._limits.acquire(
            Check(Limit.caller_starts, _caller_subject(caller, self._settings.default_region))
        )
        attempt = Attempt(
            # 96 random bits; short, because its keys are part of every active call (§9).
            id=secrets.token_urlsafe(12),
            account_number=account_number,
            purpose=purpose,
            channel=channel,
            session_ref=session_ref,
            language=language,
            limited=not starts.allowed,
        )
        await self._redis.set(
            self._attempt_key(attempt.id),
            # Positional and compact: every active call holds one (DESIGN §9, ≤ 1 KiB a call).
            json.dumps(
                [
                    attempt.account_number,
                    attempt.purpose,
                    attempt.channel,
                    attempt.session_ref,
                    attempt.language,
                    int(attempt.limited),
                ],
                separators=(",", ":"),
            ),
            ex=self._settings.code_ttl_seconds + 600,
        )
        record = await self._directory.lookup(account_number)
        await self._audit.record(
            "recovery.started",
            channel=channel,
            session_ref=session_ref,
            account_number=account_number,
            purpose=purpose,
            account_known=record is not None,
            caller_is_on_file=_caller_on_file(record, caller, self._settings.default_region),
            limit=starts.tripped,
        )
        return attempt

    async def load(self, attempt_id: str) -> Attempt | None:
        """The attempt with this id, if it is still open."""
        raw = await self._redis.get(self._attempt_key(attempt_id))
        if raw is None:
            return None
        account_number, purpose, channel, session_ref, language, limited = json.loads(raw)
        return Attempt(
            id=attempt_id,
            account_number=account_number,
            purpose=Purpose(purpose),
            channel=Channel(channel),
            session_ref=session_ref,
            language=Language(language),
            limited=bool(limited),
        )

    # -- codes ------------------------------------------------------------------------------

    async def send_sms_code(self, attempt: Attempt, *, only_to: str | None = None) -> SendOutcome:
        """SMS a code to a mobile on file; the outcome never tells whether there is one.

        Voice: the first mobile on file. SMS channel: `only_to` is the sender, who gets the code
        only when that number is itself a mobile on file — never merely for having texted (§6.3).
        Fails closed: every Redis step (limits, cool-down, the code) comes before the SMS is
        queued, and a Redis error propagates, so the request's transaction rolls back and no
        code goes out that was not stored and counted.
        """
        clearance = await self._clear_to_send(
            attempt, "sms", lambda record: _code_destination(record, only_to)
        )
        if clearance.refused:
            return clearance.refused
        code = await self._codes.issue(attempt.id)
        body = self._prompts.text("sms.code", attempt.language, code=code)
        mobile = clearance.destination
        if mobile is not None:
            queued = await self._delivery.sms(
                mobile.e164, body, purpose="code", attempt_ref=attempt.id
            )
        else:
            # The same work as a send, so that timing does not tell (§6.2).
            queued = await self._delivery.withhold(OutboundChannel.sms, body, "code")
        await self._settle(attempt, "code.sent_sms", clearance, queued)
        return SendOutcome.sent

    async def request_voice_call(self, attempt: Attempt, twiml_url: str) -> SendOutcome:
        """Call the first phone on file (mobile or landline) to speak the code after a key press."""
        clearance = await self._clear_to_send(
            attempt, "call", lambda record: record.phones[0] if record and record.phones else None
        )
        if clearance.refused:
            return clearance.refused
        phone = clearance.destination
        if phone is not None:
            queued = await self._delivery.call(
                phone.e164, twiml_url, purpose="code_call", attempt_ref=attempt.id
            )
        else:
            queued = await self._delivery.withhold(
                OutboundChannel.call, "", "code_call", url=twiml_url
            )
        await self._settle(attempt, "code.call_placed", clearance, queued)
        return SendOutcome.sent

    async def _clear_to_send(
        self,
        attempt: Attempt,
        method: str,
        pick: Callable[[AccountRecord | None], Phone | None],
    ) -> _Clearance:
        """Every check before a code goes out by `method`, in the order that fails closed."""
        if attempt.limited:
            return _Clearance(SendOutcome.limited)
        if await self._is_capped(attempt.account_number):
            return _Clearance(SendOutcome.capped)
        if not await self._cool_down(attempt.id, method):
            return _Clearance(SendOutcome.cooldown)
        destination = pick(await self._directory.lookup(attempt.account_number))
        permit = await self._send_permit(attempt, destination)
        if not permit.allowed:
            await self._release_cool_down(attempt.id, method)
            await self._audit_limited(attempt, method, permit)
            return _Clearance(SendOutcome.limited)
        return _Clearance(None, destination, permit)

    async def _settle(
        self, attempt: Attempt, event: str, clearance: _Clearance, queued: bool
    ) -> None:
        await self._audit.record(
            event,
            channel=attempt.channel,
            session_ref=attempt.session_ref,
            account_number=attempt.account_number,
            delivered=queued,
        )
        if not queued and clearance.permit is not None:
            # Withheld (country, opt-out) or no phone: nothing counts as sent.
            await self._limits.release(clearance.permit)

    async def issue_spoken_code(self, attempt: Attempt, call_ref: str) -> str:
        """A fresh code to speak in the verification call, after the answerer pressed a key."""
        code = await self._codes.issue(attempt.id)
        await self._audit.record(
            "code.spoken",
            channel=Channel.voice,
            session_ref=call_ref,
            account_number=attempt.account_number,
        )
        return code

    async def verify(self, attempt: Attempt, code: str, session_ref: str) -> VerifyOutcome:
        """Check a code; wrong ones count against the account's daily cap."""
        if await self._is_capped(attempt.account_number):
            return VerifyOutcome.capped
        check = await self._codes.check(attempt.id, code)
        outcome = {
            CodeCheck.accepted: VerifyOutcome.accepted,
            CodeCheck.wrong: VerifyOutcome.wrong,
        }.get(check, VerifyOutcome.invalidated)
        if check is not CodeCheck.accepted:
            failures = await self._count_failure(attempt.account_number)
            if failures >= self._settings.failed_verifications_per_day:
                await self._codes.discard(attempt.id)
                outcome = VerifyOutcome.capped
        await self._audit.record(
            "code.checked",
            channel=attempt.channel,
            session_ref=session_ref,
            account_number=attempt.account_number,
            outcome=outcome,
        )
        return outcome

    # -- completion -------------------------------------------------------------------------

    async def complete(
        self, attempt: Attempt, session_ref: str, *, deliver_to: str | None = None
    ) -> Completion | None:
        """Issue the temporary password (or look up the login), send it, notify the contacts.

        Only called after `verify` accepted: the code was consumed atomically, so this runs once.
        The secret goes by SMS to `deliver_to` when that is a mobile on file (the phone that just
        proved itself), else to the first mobile on file. None when the account vanished.
        """
        record = await self._directory.lookup(attempt.account_number)
        if record is None:
            return None
        # Redis first: if it fails here, no password was issued and nothing queued (§6.4).
        await self._redis.delete(self._attempt_key(attempt.id))
        if attempt.purpose is Purpose.password:
            secret = await self._directory.issue_temporary_password(attempt.account_number)
            body = self._prompts.text(
                "sms.temporary_password",
                attempt.language,
                password=secret,
                hours=self._settings.temp_password_ttl_hours,
            )
        else:
            secret = record.login
            body = self._prompts.text("sms.login", attempt.language, login=secret)
        mobile = _code_destination(record, deliver_to) if deliver_to else record.first_mobile
        # Queued for the dispatcher; False when withheld (opt-out, country).
        sent = mobile is not None and await self._delivery.sms(
            mobile.e164, body, f"{attempt.purpose}"
        )
        await self._notify_contacts(
            record, attempt, already_told=mobile.e164 if sent and mobile else None
        )
        await self._audit.record(
            "recovery.completed",
            channel=attempt.channel,
            session_ref=session_ref,
            account_number=attempt.account_number,
            purpose=attempt.purpose,
            sent_by_sms=sent,
        )
        log.info(
            "recovery.completed",
            account=mask_account(attempt.account_number),
            purpose=attempt.purpose,
        )
        return Completion(purpose=attempt.purpose, secret=secret, sent_by_sms=sent)

    async def _notify_contacts(
        self, record: AccountRecord, attempt: Attempt, already_told: str | None
    ) -> None:
        """Tell every other contact on file, by a channel other than the one used (§6.8)."""
        notified = 0
        # Voice: every mobile is another channel. SMS: every other mobile is another device.
        text = self._prompts.text(
            "sms.recovery_notice", attempt.language, hotline=self._settings.hotline_number
        )
        for mobile in record.mobiles:
            if mobile.e164 != already_told:
                notified += await self._delivery.sms(mobile.e164, text, "notice")
        if record.email:
            channel_name = self._prompts.text(f"email.channel_{attempt.channel}", attempt.language)
            text = self._prompts.text(
                "email.recovery_notice",
                attempt.language,
                channel=channel_name,
                hotline=self._settings.hotline_number,
            )
            notified += await self._delivery.email(record.email, text, purpose="notice")
        await self._audit.record(
            "recovery.notified",
            channel=attempt.channel,
            session_ref=attempt.session_ref,
            account_number=attempt.account_number,
            contacts=notified,
        )

    # -- delivery failures ------------------------------------------------------------------

    async def mark_undelivered(self, attempt_id: str, error_code: str | None) -> None:
        """The code SMS of this attempt bounced: audited. Nothing said changes (every prompt
        and reply offers the call anyway), so a bounce tells no one the account exists (§4)."""
        attempt = await self.load(attempt_id)
        if attempt is None:
            return
        await self._audit.record(
            "code.undelivered",
            channel=attempt.channel,
            session_ref=attempt.session_ref,
            account_number=attempt.account_number,
            error_code=error_code,
        )

    # -- limits -----------------------------------------------------------------------------

    async def _send_permit(self, attempt: Attempt, destination: Phone | None) -> Decision:
        """Count a code send against the account, its destination and the global budget.

        The account's limits count every request for that account number, whether it exists
        or not, so a refusal says nothing about it. The destination and the global budget count
        only messages that go somewhere (the caller releases the permit if nothing went out).
        """
        account = await self._limits.acquire(
            Check(Limit.account_sends_hour, attempt.account_number),
            Check(Limit.account_sends_day, attempt.account_number),
        )
        if not account.allowed:
            return account
        if destination is None:
            # Nothing will be sent, but an exhausted budget must refuse everybody alike, or it
            # would tell the accounts with a phone from the others.
            return Decision(await self._limits.peek(Check(Limit.global_outbound)))
        return await self._limits.acquire(
            Check(Limit.destination_sends, destination.e164), Check(Limit.global_outbound)
        )

    async def _audit_limited(self, attempt: Attempt, method: str, decision: Decision) -> None:
        await self._audit.record(
            "code.limited",
            channel=attempt.channel,
            session_ref=attempt.session_ref,
            account_number=attempt.account_number,
            method=method,
            limit=decision.tripped,
        )

    def _attempt_key(self, attempt_id: str) -> str:
        return f"attempt:{attempt_id}"

    def _failures_key(self, account_number: str) -> str:
        return f"fails:{self._keyring.reference(account_number)}"

    async def _cool_down(self, attempt_id: str, method: str) -> bool:
        """True when a code may be sent now by this method; starts its resend cool-down."""
        cooldown = self._settings.code_resend_cooldown_seconds
        if cooldown == 0:
            return True
        key = f"cooldown:{attempt_id}:{method}"
        return bool(await self._redis.set(key, 1, nx=True, ex=cooldown))

    async def _release_cool_down(self, attempt_id: str, method: str) -> None:
        await self._redis.delete(f"cooldown:{attempt_id}:{method}")

    async def _is_capped(self, account_number: str) -> bool:
        failures = await self._redis.get(self._failures_key(account_number))
        return int(failures or 0) >= self._settings.failed_verifications_per_day

    async def _count_failure(self, account_number: str) -> int:
        key = self._failures_key(account_number)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, DAY_SECONDS, nx=True)
            count, _ = await pipe.execute()
        return int(count)


@dataclass(frozen=True, slots=True)
class _Clearance:
    """Why a code may not go out, or where it goes and the limit permit it holds."""

    refused: SendOutcome | None
    destination: Phone | None = None
    permit: Decision | None = None


def _code_destination(record: AccountRecord | None, only_to: str | None) -> Phone | None:
    if record is None:
        return None
    if only_to is None:
        return record.first_mobile
    return next((mobile for mobile in record.mobiles if mobile.e164 == only_to), None)


def _caller_subject(caller: str | None, region: str) -> str:
    """The caller number as one limit subject: E.164 when it parses, else the raw value.

    A withheld or malformed caller ID ("anonymous", "") is one shared subject, so hiding the
    number is no way around the limit.
    """
    raw = (caller or "").strip()[:32]
    try:
        return parse_phone(raw, region).e164
    except InvalidPhoneNumber:
        return raw.lower()


def _caller_on_file(record: AccountRecord | None, caller: str | None, region: str) -> bool:
    if record is None or not caller:
        return False
    try:
        e164 = parse_phone(caller, region).e164
    except InvalidPhoneNumber:
        return False
    return any(phone.e164 == e164 for phone in record.phones)


__all__ = [
    "Attempt",
    "Channel",
    "Completion",
    "Purpose",
    "RecoveryService",
    "SendOutcome",
    "VerifyOutcome",
]
