"""The recovery flow, channel-independent: attempt → code → verification → credential → notices."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import structlog
from redis.asyncio import Redis

from core.accounts.directory import (
    AccountDirectory,
    AccountRecord,
    Applied,
    PasswordNotSet,
    new_temporary_password,
)
from core.audit.log import AuditLog
from core.delivery.outbox import Delivery
from core.kit.phones import InvalidPhoneNumber, Phone, mask_account, parse_phone
from core.models import OutboundChannel
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.codes import CodeCheck, CodeStore
from core.recovery.limits import GLOBAL_LIMITS, Check, Decision, Limit, RateLimiter
from voice_prompts import Catalogue, Language

log = structlog.get_logger(__name__)


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
    # The gateway's budget for this method is spent (§6.17): offer the other method or the
    # operator.
    unavailable = "unavailable"


class VerifyOutcome(StrEnum):
    accepted = "accepted"
    wrong = "wrong"
    invalidated = "invalidated"
    capped = "capped"
    # A code typed into an SMS thread whose sender is not a mobile on file: the only code such
    # a sender can know was spoken in a call to the phone on file, and belongs to that call
    # (§6.13). Checked against nothing, counted nowhere.
    not_here = "not_here"


@dataclass(frozen=True, slots=True)
class Sent:
    """What became of a code request; `wait_seconds`: when a limit or the cap lets it again."""

    outcome: SendOutcome
    wait_seconds: int = 0
    # The code went to the requester's own number (an SMS sender that is a mobile on file):
    # that message is the reply to the request (§4), and no other reply is needed.
    to_requester: bool = False


@dataclass(frozen=True, slots=True)
class Verified:
    """A code check's outcome; `wait_seconds`: when a capped account's self-service reopens."""

    outcome: VerifyOutcome
    wait_seconds: int = 0


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
    # The requester as a limit subject (the keyed reference of its E.164 number, or of
    # "withheld:<account>" for a withheld caller ID).
    requester: str = ""
    # The requester is a mobile on file: codes and credentials may go to it (§6.3, §6.13).
    from_mobile_on_file: bool = False

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
        requester = _caller_subject(caller, account_number, self._settings.default_region)
        starts = await self._limits.acquire(Check(Limit.caller_starts, requester))
        record = await self._directory.lookup(account_number)
        attempt = Attempt(
            # 96 random bits; short, because its keys are part of every active call (§9).
            id=secrets.token_urlsafe(12),
            account_number=account_number,
            purpose=purpose,
            channel=channel,
            session_ref=session_ref,
            language=language,
            limited=not starts.allowed,
            # Kept as a keyed reference: no phone number in the attempt's Redis value.
            requester=self._keyring.reference(requester),
            from_mobile_on_file=_code_destination(record, requester) is not None,
        )
        await self._codes.open(
            attempt.id,
            # Positional and short: every active call holds one (DESIGN §9, ≤ 1 KiB a call).
            [
                attempt.account_number,
                attempt.purpose,
                attempt.channel,
                attempt.session_ref,
                attempt.language,
                int(attempt.limited),
                attempt.requester,
                int(attempt.from_mobile_on_file),
            ],
            self._settings.code_ttl_seconds + 600,
        )
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
        record = await self._codes.record(attempt_id)
        if record is None:
            return None
        account_number, purpose, channel, session_ref, language, limited, requester, on_file = (
            record
        )
        return Attempt(
            id=attempt_id,
            account_number=account_number,
            purpose=Purpose(purpose),
            channel=Channel(channel),
            session_ref=session_ref,
            language=Language(language),
            limited=limited == "1",
            requester=requester,
            from_mobile_on_file=on_file == "1",
        )

    # -- codes ------------------------------------------------------------------------------

    async def send_sms_code(self, attempt: Attempt, *, only_to: str | None = None) -> Sent:
        """SMS a code to a mobile on file; the outcome never tells whether there is one.

        Voice: the first mobile on file. SMS channel: `only_to` is the sender, who gets the code
        only when that number is itself a mobile on file — never merely for having texted (§6.3).
        That code SMS is then the reply to the request (it says to send the code back), so a
        recovery by SMS costs two messages: the code and the password (§4, §9). Fails closed:
        every Redis step (limits, cool-down, the code) comes before the SMS is queued, and a
        Redis error propagates, so the request's transaction rolls back and no code goes out
        that was not stored and counted.
        """
        clearance = await self._clear_to_send(
            attempt, "sms", lambda record: _code_destination(record, only_to)
        )
        if clearance.refused:
            return clearance.refused
        mobile = clearance.destination
        code = await self._codes.issue(attempt.id, delivered=mobile is not None)
        key = "sms.code" if only_to is None else "sms.code_reply"
        body = self._prompts.text(key, attempt.language, code=code)
        if mobile is not None:
            queued = await self._delivery.sms(
                mobile.e164, body, purpose="code", attempt_ref=attempt.id
            )
            if not queued:
                await self._codes.withheld(attempt.id)
        else:
            # The same work as a send, so that timing does not tell (§6.2).
            queued = await self._delivery.withhold(OutboundChannel.sms, body, "code")
        await self._settle(attempt, "code.sent_sms", clearance, queued)
        return Sent(SendOutcome.sent, to_requester=queued and only_to is not None)

    async def request_voice_call(
        self, attempt: Attempt, twiml_url: str, *, after_hangup: bool = False
    ) -> Sent:
        """Call the first phone on file (mobile or landline) to speak the code after a key press.

        `after_hangup`: asked for in a call, which must end first (the phone on file may be the
        one in the caller's hand): the call is held until that call's `completed` status
        callback releases it (code_calls.py), or `verification_call_wait_seconds` pass.
        """
        clearance = await self._clear_to_send(
            attempt, "call", lambda record: record.phones[0] if record and record.phones else None
        )
        if clearance.refused:
            return clearance.refused
        phone = clearance.destination
        if phone is not None:
            wait = self._settings.verification_call_wait_seconds if after_hangup else 0
            queued = await self._delivery.call(
                phone.e164,
                twiml_url,
                purpose="code_call",
                attempt_ref=attempt.id,
                not_before=utcnow() + timedelta(seconds=wait) if wait else None,
            )
        else:
            queued = await self._delivery.withhold(
                OutboundChannel.call, "", "code_call", url=twiml_url
            )
        await self._settle(attempt, "code.call_placed", clearance, queued)
        return Sent(SendOutcome.sent)

    async def _clear_to_send(
        self,
        attempt: Attempt,
        method: str,
        pick: Callable[[AccountRecord | None], Phone | None],
    ) -> _Clearance:
        """Every check before a code goes out by `method`, in the order that fails closed."""
        if attempt.limited:
            return _Clearance(Sent(SendOutcome.limited))
        if wait := await self._cap_wait(attempt.account_number):
            return _Clearance(Sent(SendOutcome.capped, wait))
        if not await self._cool_down(attempt.id, method):
            return _Clearance(
                Sent(SendOutcome.cooldown, await self._cool_down_left(attempt.id, method))
            )
        destination = pick(await self._directory.lookup(attempt.account_number))
        permit = await self._send_permit(attempt, method, destination)
        if not permit.allowed:
            await self._release_cool_down(attempt.id, method)
            await self._audit_limited(attempt, method, permit)
            if permit.tripped in GLOBAL_LIMITS:
                return _Clearance(Sent(SendOutcome.unavailable))
            return _Clearance(Sent(SendOutcome.limited, permit.wait_seconds))
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
        if not queued and clearance.destination is not None and clearance.permit is not None:
            # Withheld (country, opt-out): nothing counts as sent. (With no phone on file, the
            # permit counted the requester, and keeps counting.)
            await self._limits.release(clearance.permit)

    async def issue_spoken_code(self, attempt: Attempt, call_ref: str) -> str:
        """A fresh code to speak in the verification call, after the answerer pressed a key."""
        # Spoken to whoever answered the phone on file: a delivered code (§6.12).
        code = await self._codes.issue(attempt.id, delivered=True)
        await self._audit.record(
            "code.spoken",
            channel=Channel.voice,
            session_ref=call_ref,
            account_number=attempt.account_number,
        )
        return code

    async def verify(
        self, attempt: Attempt, code: str, session_ref: str, *, by_sms: bool = False
    ) -> Verified:
        """Check a code: the cap, the comparison and the count are one atomic step (§5).

        Wrong entries count toward the account's daily cap only against a code that reached a
        phone on file (§6.12). `by_sms`: the code was texted into the attempt's SMS thread,
        which only a mobile on file may finish (§6.13).
        """
        if by_sms and not attempt.from_mobile_on_file:
            outcome, wait = VerifyOutcome.not_here, 0
        else:
            checked = await self._codes.check(
                attempt.id, code, self._failures_key(attempt.account_number)
            )
            outcome, wait = _VERIFY_OUTCOMES[checked.result], checked.wait_seconds
        await self._audit.record(
            "code.checked",
            channel=attempt.channel,
            session_ref=session_ref,
            account_number=attempt.account_number,
            outcome=outcome,
        )
        return Verified(outcome, wait)

    # -- completion -------------------------------------------------------------------------

    async def complete(
        self,
        attempt: Attempt,
        session_ref: str,
        *,
        spoken: bool,
        deliver_to: str | None = None,
        issued_via: str | None = None,
    ) -> Completion | None:
        """Issue the temporary password (or look up the login), send it, notify the contacts.

        Only called after `verify` accepted: the code was consumed atomically, so this runs once.
        `spoken`: the secret is read out in the call in which the code was accepted. It also
        goes by SMS to `deliver_to` when that is a mobile on file (the phone that just proved
        itself), else to the first mobile on file. Nothing is changed unless the secret reaches
        the resident one way or the other (§6.13): None then, and None when the account vanished
        or the directory refused the password. `issued_via` names the channel to the directory
        (§11: voice, sms or console), the attempt's own by default.
        """
        record = await self._directory.lookup(attempt.account_number)
        if record is None:
            return None
        mobile = _code_destination(record, deliver_to) if deliver_to else record.first_mobile
        by_sms = mobile is not None and await self._delivery.deliverable(mobile.e164)
        if not spoken and not by_sms:
            await self._audit.record(
                "recovery.undeliverable",
                channel=attempt.channel,
                session_ref=session_ref,
                account_number=attempt.account_number,
                purpose=attempt.purpose,
            )
            log.warning("recovery.undeliverable", account=mask_account(attempt.account_number))
            return None
        # Redis first: if it fails here, no password was issued and nothing queued (§6.4).
        await self._codes.close(attempt.id)
        if attempt.purpose is Purpose.password:
            temporary = new_temporary_password(
                self._settings,
                channel=issued_via or attempt.channel,
                # One per recovery: the cabinet's idempotency key (§11).
                reference=f"r-{attempt.id}",
            )
            try:
                applied = await self._directory.issue_temporary_password(
                    attempt.account_number, temporary
                )
            except PasswordNotSet as refused:
                # Nothing was set: nothing is spoken or sent; the caller gets the operator.
                await self._audit.record(
                    "recovery.password_refused",
                    channel=attempt.channel,
                    session_ref=session_ref,
                    account_number=attempt.account_number,
                    reason=refused.reason,
                )
                return None
            if applied is Applied.ambiguous:
                # The cabinet may have it: deliver it (§6.13), and settle the same PUT later.
                await self._delivery.hold_for_cabinet(
                    attempt.account_number, temporary.body().decode(), temporary.expires_at
                )
            secret = temporary.password
            body = self._prompts.text(
                "sms.temporary_password",
                attempt.language,
                password=secret,
                hours=self._settings.temp_password_ttl_hours,
            )
        else:
            secret = record.login
            body = self._prompts.text("sms.login", attempt.language, login=secret)
        # Queued for the dispatcher (checked deliverable above, in this same transaction).
        sent = (
            by_sms
            and mobile is not None
            and await self._delivery.sms(mobile.e164, body, f"{attempt.purpose}")
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
            # Russian, then the same in English: one mail for whoever reads it.
            text = "\n\n".join(
                self._prompts.text(
                    "email.recovery_notice",
                    language,
                    channel=self._prompts.text(f"email.channel_{attempt.channel}", language),
                    hotline=self._settings.hotline_number,
                )
                for language in (Language.ru, Language.en)
            )
            notified += await self._delivery.email(record.email, text + "\n", purpose="notice")
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

    async def _send_permit(
        self, attempt: Attempt, method: str, destination: Phone | None
    ) -> Decision:
        """Count a code send against the account, its destination and the gateway's budget.

        A send that reaches a phone on file counts toward the account's limits (the guard
        against SMS bombing), its destination, its number range and the method's budget, of
        which destinations that had a code in the last hour share only a part (§6.17). A request
        that delivers nothing spends none of the account's limits (§6.12): it counts toward the
        same thresholds keyed by account and requester, so that its answers read as a real
        account's would, and it refuses alike when the budget is spent.
        """
        budget, repeat = (
            (Limit.global_outbound, Limit.global_outbound_repeat)
            if method == "sms"
            else (Limit.global_calls, Limit.global_calls_repeat)
        )
        if destination is None:
            subject = f"{attempt.account_number} {attempt.requester}"
            return await self._limits.acquire(
                Check(Limit.requester_account_hour, subject),
                Check(Limit.requester_account_day, subject),
                Check(budget, only_look=True),
            )
        return await self._limits.acquire(
            Check(Limit.account_sends_hour, attempt.account_number),
            Check(Limit.account_sends_day, attempt.account_number),
            Check(Limit.destination_sends, destination.e164),
            Check(Limit.prefix_sends, destination.e164[:-4]),
            Check(budget),
            Check(repeat, if_recent=Limit.destination_sends),
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

    def _failures_key(self, account_number: str) -> str:
        return f"fails:{self._keyring.reference(account_number)}"

    async def _cool_down(self, attempt_id: str, method: str) -> bool:
        """True when a code may be sent now by this method; starts its resend cool-down."""
        cooldown = self._settings.code_resend_cooldown_seconds
        if cooldown == 0:
            return True
        return await self._codes.cool_down(attempt_id, method, cooldown)

    async def _cool_down_left(self, attempt_id: str, method: str) -> int:
        """Seconds until the cool-down lets a new code go (said to the caller, §3)."""
        left = int(await self._redis.ttl(f"cooldown:{attempt_id}:{method}"))
        return left if left > 0 else self._settings.code_resend_cooldown_seconds

    async def _release_cool_down(self, attempt_id: str, method: str) -> None:
        await self._codes.end_cool_down(attempt_id, method)

    async def _cap_wait(self, account_number: str) -> int:
        """Seconds until a capped account's self-service opens again; 0 when it is not capped."""
        key = self._failures_key(account_number)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.ttl(key)
            failures, ttl = await pipe.execute()
        if int(failures or 0) < self._settings.failed_verifications_per_day:
            return 0
        return max(1, int(ttl))


@dataclass(frozen=True, slots=True)
class _Clearance:
    """Why a code may not go out, or where it goes and the limit permit it holds."""

    refused: Sent | None
    destination: Phone | None = None
    permit: Decision | None = None


_VERIFY_OUTCOMES = {
    CodeCheck.accepted: VerifyOutcome.accepted,
    CodeCheck.wrong: VerifyOutcome.wrong,
    CodeCheck.exhausted: VerifyOutcome.invalidated,
    CodeCheck.missing: VerifyOutcome.invalidated,
    CodeCheck.capped: VerifyOutcome.capped,
}


def _code_destination(record: AccountRecord | None, only_to: str | None) -> Phone | None:
    if record is None:
        return None
    if only_to is None:
        return record.first_mobile
    return next((mobile for mobile in record.mobiles if mobile.e164 == only_to), None)


def _caller_subject(caller: str | None, account_number: str, region: str) -> str:
    """The requester as one limit subject: its E.164 number when it parses.

    A withheld or malformed caller ID ("anonymous", "", a SIP URI) is no number to count: it
    counts as "withheld, asking for this account", so hiding the number is no way around the
    limit, and one attacker hiding theirs does not lock out every other withheld caller (§6.12).
    """
    raw = (caller or "").strip()[:32]
    try:
        return parse_phone(raw, region).e164
    except InvalidPhoneNumber:
        return f"withheld:{account_number}"


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
    "Sent",
    "Verified",
    "VerifyOutcome",
]
