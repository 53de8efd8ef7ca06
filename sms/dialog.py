"""The SMS dialog: one inbound command, one short reply (or none), the hotline's recovery."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

import structlog

from core.delivery.optouts import OptOuts
from core.escalations.service import CaseService, Resident
from core.kit.phones import mask_phone
from core.kit.schedule import Schedule
from core.models import EscalationReason as Reason
from core.models import Verification
from core.platform.clock import Clock, utcnow
from core.platform.metrics import ESCALATIONS
from core.platform.settings import Settings
from core.recovery.codes import well_formed_code
from core.recovery.service import (
    Channel,
    Purpose,
    RecoveryService,
    SendOutcome,
    Sent,
    VerifyOutcome,
)
from sms.grammar import Command, Keyword
from sms.replies import ReplyGate
from sms.thread import SmsThread, SmsThreads
from voice_prompts import Language

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply by prompt key, in the sender's language."""

    key: str
    language: Language
    params: dict[str, str] = field(default_factory=dict)
    # Followed by the operators' working hours (the after-hours callback reply).
    with_hours: bool = False
    # Said as `{wait}`: when a limit or the cap lets the sender try on their own again.
    wait_seconds: int = 0
    # Sent already, as the code SMS to the sender (a mobile on file): counted as this reply
    # (sms/replies.py), rendered as none (§4: two messages per recovery by SMS).
    sent_as_code: bool = False


class SmsDialog:
    """Decides what an inbound SMS does and what to answer."""

    def __init__(
        self,
        *,
        settings: Settings,
        recovery: RecoveryService,
        opt_outs: OptOuts,
        cases: CaseService,
        threads: SmsThreads,
        replies: ReplyGate,
        clock: Clock = utcnow,
    ) -> None:
        self._settings = settings
        self._recovery = recovery
        self._opt_outs = opt_outs
        self._cases = cases
        self._threads = threads
        self._replies = replies
        self._clock = clock
        self._schedule = Schedule.from_settings(settings)

    async def handle(self, sender: str, message_sid: str, command: Command) -> Reply | None:
        """Apply one command from `sender` (E.164); None means no reply at all.

        A sender we may not text (§6.14) is not answered, nor served: nothing happens at all.
        Every reply is counted (sms/replies.py); over a limit the command still takes effect
        and the answer is silence.
        """
        if not self._replies.answers(sender):
            log.info("sms.sender_refused", sender=mask_phone(sender))
            return None
        thread = await self._threads.load(sender)
        before = thread.attempt_id
        recovery = await self._recovery_in_progress(before)
        reply = await self._answer(thread, message_sid, command)
        if reply is None:
            return None
        if thread.attempt_id != before:
            # The message started a recovery: its reply is that recovery's first. One held back
            # by the start limit is no recovery: the reply stays with the one in progress, if
            # any, else with the sender.
            recovery = await self._recovery_in_progress(thread.attempt_id) or recovery
        return reply if await self._replies.admit(sender, recovery) else None

    async def _recovery_in_progress(self, attempt_id: str | None) -> str | None:
        """The attempt, if it is still open and was not held back by the start limit."""
        attempt = await self._recovery.load(attempt_id) if attempt_id else None
        return attempt.id if attempt is not None and not attempt.limited else None

    async def _answer(self, thread: SmsThread, message_sid: str, command: Command) -> Reply | None:
        if command.keyword is Keyword.stop:
            # One confirmation, once; after that the number hears nothing from us.
            if not await self._opt_outs.opt_out(thread.sender):
                return None
            await self._threads.clear(thread.sender)
            return self._reply("sms.reply_stopped", command)
        if command.keyword is Keyword.start:
            await self._opt_outs.opt_in(thread.sender)
            return self._reply("sms.reply_started", command)
        if await self._opt_outs.is_opted_out(thread.sender):
            return None

        if command.keyword is not Keyword.code and command.keyword is not Keyword.unknown:
            thread.language = Language(command.language)
        # A bounced code SMS changes no reply: the request's reply offers the call to everyone
        # in the same words, so a bounce never tells that the account exists (§4).
        match command.keyword:
            case Keyword.restore | Keyword.login:
                return await self._request(thread, message_sid, command)
            case Keyword.code:
                return await self._code(thread, message_sid, command.argument)
            case Keyword.call:
                return await self._call(thread)
            case Keyword.operator:
                return await self._operator(thread, message_sid)
            case Keyword.cancel:
                await self._threads.clear(thread.sender)
                return self._reply("sms.reply_cancelled", thread)
            case Keyword.help:
                return self._reply("sms.reply_help", thread)
            case _:
                return self._reply("sms.reply_unknown", thread)

    def _reply(self, key: str, source: Command | SmsThread, wait_seconds: int = 0) -> Reply:
        language = Language(source.language)
        params = {"hotline": self._settings.hotline_number}
        return Reply(key, language, params, wait_seconds=wait_seconds)

    async def _request(self, thread: SmsThread, message_sid: str, command: Command) -> Reply:
        account = command.argument
        if not account:
            return self._reply("sms.reply_account_needed", thread)
        if len(account) > self._settings.account_number_max_length or not (
            self._settings.account_number_regex.fullmatch(account)
        ):
            return self._reply("sms.reply_account_invalid", thread)
        purpose = Purpose.password if command.keyword is Keyword.restore else Purpose.login
        attempt = await self._recovery.start(
            account_number=account,
            purpose=purpose,
            channel=Channel.sms,
            session_ref=message_sid,
            language=thread.language,
            caller=thread.sender,
        )
        thread.attempt_id, thread.purpose = attempt.id, purpose
        await self._threads.save(thread)
        outcome = await self._recovery.send_sms_code(attempt, only_to=thread.sender)
        return self._after_send(thread, outcome, "sms.reply_requested")

    def _after_send(self, thread: SmsThread, sent: Sent, sent_key: str) -> Reply:
        if sent.outcome is SendOutcome.capped:
            ESCALATIONS.labels(channel="sms", reason=Reason.verification_capped).inc()
            return self._reply("sms.reply_capped", thread, sent.wait_seconds)
        if sent.outcome is SendOutcome.limited:
            # A rate limit (§6.4): an apology and the way to the operator, not an error.
            return self._reply(
                "sms.reply_limited_until" if sent.wait_seconds else "sms.reply_limited",
                thread,
                sent.wait_seconds,
            )
        if sent.outcome is SendOutcome.unavailable:
            # The budget of this method is spent (§6.17): the other method, or the operator.
            by_sms = sent_key == "sms.reply_requested"
            key = "sms.reply_sms_unavailable" if by_sms else "sms.reply_limited"
            return self._reply(key, thread)
        if sent.to_requester:
            # Only the mobile on file gets this: the code SMS, which says to send it back.
            # Every other sender reads the same uniform reply, account or no account (§4).
            return Reply("sms.code_reply", Language(thread.language), sent_as_code=True)
        # A cool-down answers like a send: the earlier code is still on its way.
        return self._reply(sent_key, thread)

    async def _code(self, thread: SmsThread, message_sid: str, code: str) -> Reply | None:
        attempt = await self._recovery.load(thread.attempt_id) if thread.attempt_id else None
        if attempt is None:
            return self._reply("sms.reply_no_request", thread)
        if not well_formed_code(code):
            return self._reply("sms.reply_code_malformed", thread)
        verified = await self._recovery.verify(attempt, code, message_sid, by_sms=True)
        outcome = verified.outcome
        if outcome is VerifyOutcome.not_here:
            # Only the mobile on file finishes a thread by SMS; a code heard in a call is keyed
            # into that call (§6.13). The same words whether or not the account exists.
            return self._reply("sms.reply_wrong_phone", thread)
        if outcome is VerifyOutcome.accepted:
            await self._threads.clear(thread.sender)
            completion = await self._recovery.complete(
                attempt, message_sid, spoken=False, deliver_to=thread.sender
            )
            if completion is None:
                # Nothing was changed: the password could not have reached this phone.
                return self._reply("sms.reply_not_changed", thread)
            # The password (or login) SMS is the answer; no second message.
            return None
        if outcome is VerifyOutcome.capped:
            ESCALATIONS.labels(channel="sms", reason=Reason.verification_capped).inc()
            return self._reply("sms.reply_capped", thread, verified.wait_seconds)
        if outcome is VerifyOutcome.invalidated:
            await self._threads.clear(thread.sender)
            return self._reply("sms.reply_code_expired", thread)
        return self._reply("sms.reply_code_wrong", thread)

    async def _call(self, thread: SmsThread) -> Reply:
        attempt = await self._recovery.load(thread.attempt_id) if thread.attempt_id else None
        if attempt is None:
            return self._reply("sms.reply_no_request", thread)
        base = self._settings.public_base_url.rstrip("/")
        url = f"{base}/ivr/verify?{urlencode({'a': attempt.id})}"
        outcome = await self._recovery.request_voice_call(attempt, url)
        return self._after_send(thread, outcome, "sms.reply_call_arranged")

    async def _operator(self, thread: SmsThread, message_sid: str) -> Reply:
        """A callback request; outside working hours the reply also gives the hours."""
        desk_open = self._schedule.is_open(self._clock())

        async def resident() -> Resident:
            attempt = await self._recovery.load(thread.attempt_id) if thread.attempt_id else None
            return Resident(
                channel="sms",
                session_ref=message_sid,
                phone=thread.sender,
                account_number=attempt.account_number if attempt else None,
                purpose=thread.purpose,
                verification=Verification.code_sent if attempt else Verification.none,
            )

        opened = await self._cases.callback_by_sms(
            thread.sender,
            resident,
            language=thread.language.value,
            after_hours=not desk_open,
        )
        if opened is not None:
            ESCALATIONS.labels(channel="sms", reason=Reason.caller_request).inc()
        log.info("sms.callback_requested", repeated=opened is None, desk_open=desk_open)
        if desk_open:
            return self._reply("sms.reply_callback", thread)
        reply = self._reply("sms.reply_callback_closed", thread)
        return Reply(reply.key, reply.language, reply.params, with_hours=True)
