"""The voice flow: applies one caller input to a call session, with the recovery service's help."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import urlencode

import structlog

from core.escalations.service import CaseService, Resident
from core.kit.schedule import Schedule
from core.models import EscalationReason as Reason
from core.models import Verification
from core.platform.clock import Clock, utcnow
from core.platform.crypto import Keyring
from core.platform.metrics import ESCALATIONS
from core.platform.settings import Settings
from core.recovery.codes import well_formed_code
from core.recovery.service import (
    Attempt,
    Channel,
    Purpose,
    RecoveryService,
    SendOutcome,
    Sent,
    VerifyOutcome,
)
from ivr.menu import MENU, Action, Entry, State
from ivr.session import CallSession
from ivr.speech import speech_to_digits
from voice_prompts import Catalogue, Language

log = structlog.get_logger(__name__)

OPERATOR_WORDS = ("оператор", "operator", "человек")
PASSWORD_GROUP = 4


@dataclass(frozen=True, slots=True)
class CallerInput:
    """What Twilio posted for a Gather: keys, or speech, or nothing."""

    digits: str = ""
    speech: str = ""

    @property
    def empty(self) -> bool:
        """No key and no speech: the caller stayed silent."""
        return not self.digits and not self.speech.strip()


class Unclaimed(Exception):
    """A dry run came to a step that acts (the recovery, a case, a transfer): the step must be
    claimed first, and decided again on the session Redis holds."""


class VoiceFlow:
    """Decides the next state of a call and the screen the caller hears.

    A dry flow (`dry=True`) only moves the session through the menu: where a step would act,
    it raises `Unclaimed` before anything has happened outside the session it was given.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        recovery: Callable[[], RecoveryService],
        keyring: Keyring,
        prompts: Catalogue,
        cases: Callable[[], CaseService],
        schedule: Schedule,
        clock: Clock = utcnow,
        dry: bool = False,
    ) -> None:
        # The recovery service and the cases are made when a step first needs them (most menu
        # steps do not): with them, the request's database session.
        self._settings = settings
        self._make_recovery = recovery
        self._keyring = keyring
        self._prompts = prompts
        self._make_cases = cases
        self._clock = clock
        self._schedule = schedule
        self._base = settings.public_base_url.rstrip("/")
        self._dry = dry

    def _acting(self) -> None:
        if self._dry:
            raise Unclaimed

    @cached_property
    def _recovery(self) -> RecoveryService:
        self._acting()
        return self._make_recovery()

    @cached_property
    def _cases(self) -> CaseService:
        self._acting()
        return self._make_cases()

    # -- input ------------------------------------------------------------------------------

    async def handle(self, call: CallSession, given: CallerInput) -> None:
        """Apply one input to the call; the session is changed in place."""
        # A bounced code SMS changes nothing said here: the code prompt offers the call to
        # everyone in the same words ("если СМС не пришло…"), so a bounce never tells that the
        # account exists (§4, §10).
        await self._apply(call, given)

    async def _apply(self, call: CallSession, given: CallerInput) -> None:
        call.notices = []
        spec = MENU[call.state]
        if spec.final:
            return
        keys = given.digits.rstrip("#")
        if given.empty:
            if spec.on_silence:
                self._go(call, spec.on_silence)
                return
            if spec.silence_ends:
                self._go(call, spec.exhausted)
                return
            await self._retry(call, "voice.no_input")
            return
        if keys in spec.keys:
            await self._act(call, spec.keys[keys])
            return
        if given.speech and any(word in given.speech.lower() for word in OPERATOR_WORDS):
            await self._to_operator(call, Reason.caller_request)
            return
        if spec.entry is None:
            await self._retry(call, "voice.invalid_key")
            return
        digits = keys or self._spoken_digits(call, given)
        if not digits and given.speech:
            # Speech that was not understood is not a wrong number: say so, not "не бывает".
            await self._retry(call, "voice.speech_unclear")
        elif spec.entry is Entry.account_number:
            await self._account_entered(call, digits)
        else:
            await self._code_entered(call, digits)

    def _spoken_digits(self, call: CallSession, given: CallerInput) -> str:
        return speech_to_digits(given.speech, call.language) or "" if given.speech else ""

    async def _retry(self, call: CallSession, notice: str) -> None:
        call.tries += 1
        call.failures += 1
        if call.tries >= self._settings.menu_max_tries:
            spec = MENU[call.state]
            if spec.exhausted is State.operator:
                await self._to_operator(
                    call, Reason.retries_exhausted, notice="voice.too_many_tries"
                )
            else:
                self._go(call, spec.exhausted, *filter(None, [spec.exhausted_notice]))
            return
        call.notices = [notice]

    def _go(self, call: CallSession, state: State, *notices: str) -> None:
        call.state = state
        call.tries = 0
        call.notices = list(notices)

    async def _to_operator(
        self, call: CallSession, reason: Reason, notice: str | None = None
    ) -> None:
        """A transfer, stored as a case for the operator; outside working hours, the offer."""
        self._acting()
        call.reason = reason
        came_from = call.state
        notices = [notice] if notice else []
        if call.wait_seconds:
            # A limit or the cap: when self-service opens again (§6.12), then the operator.
            notices.append("voice.self_service_reopens")
        ESCALATIONS.labels(channel="voice", reason=reason).inc()
        if not self._schedule.is_open(self._clock()):
            self._go(call, State.after_hours, *notices)
            log.info("ivr.after_hours", call=call.call_sid, reason=reason)
            return
        self._go(call, State.operator, *notices)
        await self._record_transfer(call, came_from)
        log.info("ivr.escalated", call=call.call_sid, reason=reason)

    def _case_context(self, call: CallSession, came_from: State) -> dict[str, str | int | bool]:
        return {
            "state": came_from.value,
            "language": call.language.value,
            "wrong_codes": call.wrong_codes,
            "failed_inputs": call.failures,
        }

    @staticmethod
    def _resident(call: CallSession) -> Resident:
        return Resident(
            channel="voice",
            session_ref=call.call_sid,
            phone=call.caller,
            account_number=call.account,
            purpose=call.purpose,
            verification=call.verification,
            attempts=call.failures,
        )

    async def _record_transfer(self, call: CallSession, came_from: State) -> None:
        """One case per call: a second transfer in the same call reopens the first."""
        escalation = await self._cases.transfer(
            self._resident(call),
            call.reason or Reason.caller_request,
            route=self._settings.operator_route,
            case_id=call.escalation_id,
            **self._case_context(call, came_from),
        )
        call.escalation_id = escalation.id

    async def _leave_callback(self, call: CallSession) -> None:
        """The caller asked to be called back (after hours, or when nobody answered)."""
        after_hours = call.state is State.after_hours
        escalation = await self._cases.callback(
            self._resident(call),
            call.reason or Reason.caller_request,
            route=self._settings.operator_route,
            case_id=call.escalation_id,
            history=self._case_context(call, call.state),
            after_hours=after_hours,
        )
        call.escalation_id = escalation.id
        log.info("ivr.callback_requested", call=call.call_sid, after_hours=after_hours)
        self._go(call, State.callback_done)

    async def _limit_reached(self, call: CallSession) -> None:
        """A rate limit held the code back (§6.4): an apology and the operator, not an error."""
        await self._to_operator(call, Reason.limit, notice="voice.limit_reached")

    async def _act(self, call: CallSession, action: Action) -> None:
        match action:
            case Action.repeat:
                pass
            case Action.operator:
                await self._to_operator(call, Reason.caller_request)
            case Action.english:
                call.language = Language.en
                self._go(call, State.main_menu)
            case Action.restore_password | Action.recover_login:
                call.purpose = (
                    Purpose.password if action is Action.restore_password else Purpose.login
                )
                self._go(call, State.account_entry)
            case Action.reenter_account:
                call.account = None
                self._go(call, State.account_entry)
            case Action.confirm_account:
                await self._start_attempt(call)
            case Action.send_sms_code | Action.resend_code:
                await self._send_sms_code(call, resend=action is Action.resend_code)
            case Action.call_me:
                await self._call_me(call)
            case Action.reveal_code:
                await self._reveal_code(call)
            case Action.finish:
                self._go(call, State.goodbye)
            case Action.leave_callback:
                await self._leave_callback(call)
            case Action.code_options:
                self._go(call, State.code_options)

    # -- steps of the recovery --------------------------------------------------------------

    async def _account_entered(self, call: CallSession, digits: str) -> None:
        if len(digits) > self._settings.account_number_max_length or not (
            self._settings.account_number_regex.fullmatch(digits)
        ):
            await self._retry(call, "voice.account_invalid")
            return
        call.account = digits
        self._go(call, State.account_confirm)

    async def _start_attempt(self, call: CallSession) -> None:
        assert call.account and call.purpose
        attempt = await self._recovery.start(
            account_number=call.account,
            purpose=Purpose(call.purpose),
            channel=Channel.voice,
            session_ref=call.call_sid,
            language=call.language,
            caller=call.caller,
        )
        call.attempt_id = attempt.id
        if attempt.limited:
            # Too many starts from this number: no point offering a code that will not come.
            await self._limit_reached(call)
            return
        self._go(call, State.method_choice)

    async def _attempt(self, call: CallSession) -> Attempt | None:
        attempt = await self._recovery.load(call.attempt_id) if call.attempt_id else None
        if attempt is None:
            await self._to_operator(call, Reason.error, notice="voice.error_apology")
        return attempt

    async def _send_sms_code(self, call: CallSession, *, resend: bool) -> None:
        attempt = await self._attempt(call)
        if attempt is None:
            return
        sent = await self._recovery.send_sms_code(attempt)
        if sent.outcome is SendOutcome.unavailable:
            # The SMS budget is spent (§6.17): the code by call still works.
            self._go(call, State.method_choice, "voice.sms_unavailable")
            return
        if await self._held_back(call, sent):
            return
        if sent.outcome is SendOutcome.cooldown:
            # Said in seconds, and back to the code: the first code may still come (§3).
            call.cooldown = sent.wait_seconds
            self._go(call, State.code_entry, "voice.code_resend_wait")
        else:
            call.verification = Verification.code_sent
            self._go(call, State.code_entry, "voice.code_resent" if resend else "voice.code_sent")

    async def _held_back(self, call: CallSession, sent: Sent) -> bool:
        """A rate limit or the failure cap held the code back: the operator, not an error."""
        if sent.outcome in (SendOutcome.limited, SendOutcome.unavailable, SendOutcome.capped):
            call.wait_seconds = sent.wait_seconds
        if sent.outcome in (SendOutcome.limited, SendOutcome.unavailable):
            await self._limit_reached(call)
        elif sent.outcome is SendOutcome.capped:
            await self._to_operator(
                call, Reason.verification_capped, notice="voice.verification_capped"
            )
        else:
            return False
        return True

    async def _call_me(self, call: CallSession) -> None:
        attempt = await self._attempt(call)
        if attempt is None:
            return
        url = f"{self._base}/ivr/verify?{urlencode({'a': attempt.id})}"
        # Placed once this call has ended (the caller is told to hang up): recovery/code_calls.py.
        sent = await self._recovery.request_voice_call(attempt, url, after_hangup=True)
        if await self._held_back(call, sent):
            return
        if sent.outcome is SendOutcome.cooldown:
            call.cooldown = sent.wait_seconds
            self._go(call, call.state, "voice.code_resend_wait")
        else:
            call.verification = Verification.code_sent
            self._go(call, State.call_arranged)

    async def _reveal_code(self, call: CallSession) -> None:
        attempt = await self._attempt(call)
        if attempt is None:
            return
        code = await self._recovery.issue_spoken_code(attempt, call.call_sid)
        call.sealed = self._keyring.seal(code)
        call.verification = Verification.code_sent
        self._go(call, State.verify_code)

    async def _code_entered(self, call: CallSession, digits: str) -> None:
        if not well_formed_code(digits):
            await self._retry(call, "voice.code_malformed")
            return
        attempt = await self._attempt(call)
        if attempt is None:
            return
        verified = await self._recovery.verify(attempt, digits, call.call_sid)
        outcome = verified.outcome
        if outcome is VerifyOutcome.accepted:
            # Read out in this call: the call in which the code was accepted (§6.13).
            completion = await self._recovery.complete(attempt, call.call_sid, spoken=True)
            if completion is None:
                await self._to_operator(call, Reason.error, notice="voice.error_apology")
                return
            call.verification = Verification.verified
            call.sealed = self._keyring.seal(completion.secret)
            call.secret_by_sms = completion.sent_by_sms
            self._go(call, State.secret_ready)
        elif outcome is VerifyOutcome.capped:
            call.wait_seconds = verified.wait_seconds
            await self._to_operator(
                call, Reason.verification_capped, notice="voice.verification_capped"
            )
        elif outcome is VerifyOutcome.invalidated:
            if call.outbound:
                self._go(call, State.goodbye, "voice.verify_expired")
            else:
                await self._retry(call, "voice.code_expired")
        else:
            call.wrong_codes += 1
            await self._retry(call, "voice.code_wrong")

    async def open_verification_call(self, call_sid: str, attempt_id: str) -> CallSession:
        """The session of the outbound call to the phone on file, or a goodbye if it expired."""
        attempt = await self._recovery.load(attempt_id)
        if attempt is None:
            call = CallSession(call_sid=call_sid, state=State.goodbye, outbound=True)
            call.notices = ["voice.verify_expired"]
            return call
        return CallSession(
            call_sid=call_sid,
            state=State.verify_greeting,
            language=attempt.language,
            purpose=attempt.purpose,
            account=attempt.account_number,
            attempt_id=attempt.id,
            outbound=True,
        )


def offer_callback(call: CallSession) -> bool:
    """Nobody took the transfer: the call moves on to the callback offer, once (True if it did)."""
    if call.state is not State.operator:
        return False
    call.state, call.tries, call.notices = State.callback_offer, 0, []
    call.step += 1
    return True
