"""What the caller (or the operator) hears in each state of a call, as a screen to render."""

from __future__ import annotations

import math
import re
from urllib.parse import urlencode

import phonenumbers

from core.kit.phones import mask_account
from core.kit.schedule import Schedule
from core.models import GIVEN_REASONS, Escalation, EscalationReason, Verification
from core.operators.repository import MAX_DESK_NUMBER_DIGITS, MAX_DESK_PIN
from core.platform.crypto import Keyring
from core.platform.settings import OperatorRoute, Settings
from core.recovery.codes import CODE_DIGITS
from core.recovery.service import Purpose
from ivr.menu import MENU, Entry, Final, State
from ivr.session import CallSession
from ivr.twiml import (
    Break,
    DialSpec,
    Ending,
    EnqueueSpec,
    GatherSpec,
    Part,
    Pause,
    QueueDialSpec,
    Screen,
    Speech,
    Sub,
    Utterance,
)
from voice_prompts import Catalogue, Language
from voice_prompts.recordings import AUDIO_PATH, load_recordings

PASSWORD_GROUP = 5
# The pause between the characters of a secret (SSML <break>): time to write each one down.
CHARACTER_BREAK_MS = 250
_DIGIT_GROUPS = re.compile(r"\d+")


class Screens:
    """Builds screens from call sessions; pure, no I/O."""

    def __init__(self, *, settings: Settings, keyring: Keyring, prompts: Catalogue) -> None:
        self._settings = settings
        self._keyring = keyring
        self._prompts = prompts
        self._schedule = Schedule.from_settings(settings)
        base = settings.prompt_audio_url or settings.public_base_url.rstrip("/") + AUDIO_PATH
        self._recordings = load_recordings(settings.prompt_audio_dir, base)

    def apology(self, call_sid: str, *, desk_open: bool = True) -> Screen:
        """A stateless apology and transfer, for when anything behind a webhook failed.

        Outside working hours there is nobody to transfer to, and no state to take a callback
        request with: the hours, and a goodbye.
        """
        if not desk_open:
            lang = Language.ru
            return Screen(
                lines=[
                    self._say("voice.error_apology", lang),
                    self._say("voice.after_hours_call_later", lang, hours=self.hours(lang)),
                    self._say("voice.goodbye", lang),
                ],
                ending=Ending.hangup,
            )
        call = CallSession(call_sid=call_sid, state=State.operator, reason=EscalationReason.error)
        call.notices = ["voice.error_apology"]
        return self.screen(call)

    def fallback(self) -> Screen:
        """The TwiML for Twilio's "primary handler fails" URL: an apology and the operator.

        It is served by Twilio (a TwiML Bin) when the gateway cannot answer at all, so it needs
        nothing of the gateway: no state, no whisper, no callback URLs.
        """
        lang = Language.ru
        return Screen(
            lines=[
                Speech(self._prompts.text("voice.error_apology", lang), lang),
                Speech(self._prompts.text("voice.operator_transfer", lang), lang),
            ],
            dial=DialSpec(number=self._settings.operator_number),
        )

    def hours(self, language: Language) -> str:
        """The operators' working hours in words."""
        return self._schedule.describe(self._prompts, language)

    # -- output -----------------------------------------------------------------------------

    def screen(self, call: CallSession) -> Screen:
        """What the caller hears in the call's current state."""
        spec = MENU[call.state]
        lang = call.language
        params: dict[str, object] = {"seconds": self._prompts.seconds(call.cooldown, lang)}
        if call.wait_seconds:
            params["wait"] = self._prompts.wait(call.wait_seconds, lang)
        notices: list[Utterance] = [self._say(key, lang, **params) for key in call.notices]
        secret = self._secret_lines(call)
        if spec.final is not None:
            lines = notices + self._state_lines(call)
            if spec.final is Final.dial:
                if self._settings.operator_route is OperatorRoute.enqueue:
                    return Screen(lines=lines, enqueue=self._enqueue(call))
                return Screen(lines=lines, dial=self._dial(call))
            if call.state is not State.goodbye:
                lines.append(self._say("voice.goodbye", lang))
            return Screen(lines=lines, ending=Ending.hangup)
        # A secret is said before the Gather, where a stray key cannot cut it off (§3); the
        # notices go first (before it, or inside the Gather with the prompt).
        before = tuple(notices + secret) if secret else ()
        lines = self._state_lines(call, brief=bool(call.tries and call.notices))
        gather = GatherSpec(
            action=f"/ivr/step?{urlencode({'s': call.step})}",
            language=lang,
            speech=spec.speech,
            # Keys end with the finish key, or on their own once the entry is full (§3).
            num_digits={
                None: 1,
                Entry.code: CODE_DIGITS,
                Entry.account_number: self._settings.account_number_max_length,
            }[spec.entry],
            finish_on_key=spec.finish_on_key,
            timeout=self._settings.entry_timeout_seconds if spec.entry else None,
            before=before,
        )
        # After the tries run out, or silence after a secret was read, the call moves on by itself.
        return Screen(lines=lines if secret else notices + lines, gather=gather)

    def sentence(self, key: str, language: Language, **params: object) -> Speech:
        """One catalogue sentence as it is said (recording, SSML marks): for `prompts report`."""
        return self._say(key, language, **params)

    def _say(self, key: str, language: Language, **params: object) -> Speech:
        """A sentence from the catalogue: a recording when there is one, else TTS (§3)."""
        template = self._prompts.text(key, language)
        text = self._prompts.text(key, language, **params) if "{" in template else template
        audio = None if "{" in template else self._recordings.url(key, language.value)
        return Speech(text, language, parts=self._marked(text, language), audio=audio)

    def _marked(self, text: str, language: Language) -> tuple[Part, ...]:
        """The text with its abbreviations as SSML <sub> ("ЕИРЦ" said "е-и-эр-цэ")."""
        subs = {k: v for k, v in self._prompts.substitutions(language).items() if k in text}
        if not subs:
            return ()
        pattern = re.compile("|".join(re.escape(k) for k in sorted(subs, key=len, reverse=True)))
        parts: list[Part] = []
        position = 0
        for match in pattern.finditer(text):
            parts += [text[position : match.start()], Sub(match.group(), subs[match.group()])]
            position = match.end()
        parts.append(text[position:])
        return tuple(part for part in parts if part != "")

    def _spelled(self, key: str, language: Language, secret: str, **params: object) -> Speech:
        """A sentence with a secret in it, character by character with breaks, a little slower."""
        template = self._prompts.text(key, language, **params, characters="\0")
        head, _, tail = template.partition("\0")
        names = self._prompts.spelled(secret, language)
        separator = self._prompts.text("spelling.separator", language)
        parts: list[Part] = [head]
        for index, name in enumerate(names):
            if index:
                parts += [separator, Break(CHARACTER_BREAK_MS)]
            parts.append(name)
        parts.append(tail)
        text = head + separator.join(names) + tail
        return Speech(text, language, parts=tuple(p for p in parts if p != ""), slow=True)

    def _state_lines(self, call: CallSession, *, brief: bool = False) -> list[Utterance]:
        lang = call.language
        spec = MENU[call.state]
        match call.state:
            case State.main_menu:
                offer = (
                    [] if lang is Language.en else [self._say("voice.english_offer", Language.en)]
                )
                key = spec.reprompt if brief and spec.reprompt else spec.prompt
                return [self._say(key, lang), *offer]
            case State.account_confirm if not brief:
                digits = self._prompts.digits(call.account or "", lang)
                return [self._say("voice.account_confirm", lang, digits=digits)]
            case State.after_hours:
                return [self._say("voice.after_hours", lang, hours=self.hours(lang))]
            case State.call_arranged:
                # The code call comes from the hotline's number: the caller is told which.
                number = spoken_number(self._settings.hotline_number, self._prompts, lang)
                return [self._say("voice.call_arranged", lang, number=number)]
            case _:
                key = spec.reprompt if brief and spec.reprompt else spec.prompt
                return [self._say(key, lang)]

    def _secret_lines(self, call: CallSession) -> list[Utterance]:
        """The code, password or login of this state (said outside any Gather), or nothing."""
        if call.state not in (State.secret_ready, State.verify_code):
            return []
        lang = call.language
        secret = self._keyring.unseal(call.sealed or "") or ""
        if call.state is State.verify_code:
            spoken = self._prompts.digits(secret, lang)
            line = self._say("voice.verify_code", lang, code=spoken)
            return [Speech(line.text, lang, parts=line.parts, slow=True)]
        lines: list[Utterance] = []
        if call.purpose == Purpose.password:
            length = self._prompts.count("hours.characters", len(secret), lang)
            lines.append(self._say("voice.password_ready", lang, length=length))
            groups = [secret[i : i + PASSWORD_GROUP] for i in range(0, len(secret), PASSWORD_GROUP)]
            for index, group in enumerate(groups):
                number = self._prompts.group_number(index, lang)
                lines.append(self._spelled("voice.password_group", lang, group, number=number))
            lines.append(
                self._say(
                    "voice.password_rules",
                    lang,
                    hours=self._prompts.count(
                        "hours.hours", self._settings.temp_password_ttl_hours, lang
                    ),
                )
            )
        else:
            lines.append(self._spelled("voice.login_ready", lang, secret))
        if call.secret_by_sms:
            lines.append(self._say("voice.also_sent_sms", lang))
        return lines

    def _dial(self, call: CallSession) -> DialSpec:
        return DialSpec(
            number=self._settings.operator_number,
            whisper_url="/ivr/whisper?"
            + urlencode({"c": call.call_sid, "r": call.reason or "caller_request"}),
            action=f"/ivr/dial-result?{urlencode({'c': call.call_sid})}",
            timeout=self._settings.operator_dial_timeout_seconds,
        )

    def _enqueue(self, call: CallSession) -> EnqueueSpec:
        query = urlencode({"c": call.call_sid, "l": call.language.value})
        return EnqueueSpec(
            queue=self._settings.operator_queue,
            wait_url=f"/ivr/queue-wait?{query}",
            action=f"/ivr/queue-result?{query}",
        )

    def queue_wait(
        self, call_sid: str, language: Language, position: int | None, average_seconds: int
    ) -> Screen:
        """The hold prompt: place in the queue, expected wait, and `*` for a callback instead.

        Twilio runs it again when it ends (the Gather's timeout is the pause between repeats).
        """
        lines: list[Utterance] = []
        if position:
            lines.append(self._say("voice.queue_position", language, position=position))
        if average_seconds > 0:
            minutes = max(1, math.ceil(average_seconds / 60))
            wait = self._prompts.count("hours.minutes", minutes, language)
            lines.append(self._say("voice.queue_wait", language, wait=wait))
        lines.append(self._say("voice.queue_hold", language))
        gather = GatherSpec(
            action="/ivr/queue-wait?" + urlencode({"c": call_sid, "l": language.value}),
            language=language,
            num_digits=1,
            finish_on_key="",
            on_empty=False,
            timeout=self._settings.operator_queue_repeat_seconds,
        )
        return Screen(lines=lines, gather=gather)

    def queue_connecting(self, language: Language) -> Screen:
        """What the queued caller hears as an operator takes the call."""
        return Screen(lines=[self._say("voice.queue_connecting", language)])

    def callback_taken(self, language: Language) -> Screen:
        """The caller's callback request is stored: a confirmation and a goodbye."""
        return Screen(
            lines=[
                self._say("voice.callback_accepted", language),
                self._say("voice.goodbye", language),
            ],
            ending=Ending.hangup,
        )

    def desk_sign_in(self) -> Screen:
        """The desk phone, not signed in yet: the operator's number first (§6.11)."""
        lang = Language.ru
        gather = GatherSpec(
            action="/ivr/operator-desk/number",
            language=lang,
            num_digits=MAX_DESK_NUMBER_DIGITS,
            finish_on_key="#",
        )
        return Screen(lines=[self._say("whisper.desk_number", lang)], gather=gather)

    def desk_pin(self, desk_number: str) -> Screen:
        """Then the PIN: asked alike whether or not the number belongs to anyone."""
        lang = Language.ru
        gather = GatherSpec(
            action="/ivr/operator-desk/pin?" + urlencode({"o": desk_number}),
            language=lang,
            num_digits=MAX_DESK_PIN,
            finish_on_key="#",
        )
        return Screen(lines=[self._say("whisper.desk_pin", lang)], gather=gather)

    def desk_signed_in(self) -> Screen:
        """The PIN matched: on to the queue."""
        lang = Language.ru
        return Screen(
            lines=[self._say("whisper.desk_signed_in", lang)], redirect="/ivr/operator-desk"
        )

    def desk_refused(self, *, limited: bool = False) -> Screen:
        """A wrong number or PIN (or too many of them): a polite goodbye, nothing about a case."""
        lang = Language.ru
        key = "whisper.desk_limited" if limited else "whisper.desk_refused"
        return Screen(lines=[self._say(key, lang)], ending=Ending.hangup)

    def operator_desk(self, waiting: int, head: Escalation | None) -> Screen:
        """The operator's phone: the first waiting caller's case, then that caller (enqueue route).

        Twilio plays the <Queue> noun's `url` to the *caller* (Play/Say/Pause/Redirect only), so
        the operator's summary is spoken here, before the operator's call takes the queue's
        first caller. With nobody waiting, the desk holds and looks again.
        """
        lang = Language.ru
        desk = "/ivr/operator-desk"
        if head is None:
            return Screen(
                lines=[
                    self._say("whisper.desk_empty", lang),
                    Pause(self._settings.operator_queue_repeat_seconds),
                ],
                redirect=desk,
            )
        summary = self.case_summary(head.account_masked, head.verification, head.reason)
        return Screen(
            lines=[self._say("whisper.desk_waiting", lang, count=waiting), Speech(summary, lang)],
            dial_queue=QueueDialSpec(
                queue=self._settings.operator_queue,
                url="/ivr/queue-connect",
                action=desk,
                timeout=self._settings.operator_dial_timeout_seconds,
            ),
        )

    def case_summary(self, account_masked: str | None, verification: str, reason: str) -> str:
        """The whisper for a stored case (masked account, verification state, reason)."""
        lang = Language.ru
        if account_masked and account_masked != "-":
            digits = self._prompts.digits(account_masked[-3:], lang)
            account = self._prompts.text("whisper.account", lang, digits=digits)
        else:
            account = self._prompts.text("whisper.no_account", lang)
        state = {
            Verification.verified.value: "whisper.verified",
            Verification.code_sent.value: "whisper.code_sent",
        }.get(verification, "whisper.not_verified")
        reason = reason if reason in GIVEN_REASONS else "error"
        return self._prompts.text(
            "whisper.summary",
            lang,
            account=account,
            verification=self._prompts.text(state, lang),
            reason=self._prompts.text(f"whisper.reason_{reason}", lang),
        )

    def whisper(self, call: CallSession | None, reason: str | None = None) -> str:
        """The case summary the operator hears before the caller is connected (always Russian).

        `reason` comes from the transfer itself: after a failure the stored session may not
        know why the call was transferred (or may be unreachable).
        """
        lang = Language.ru
        reason = reason if reason in GIVEN_REASONS else None
        reason = (
            reason or (call.reason if call else None) or ("caller_request" if call else "error")
        )
        if call is not None and call.account:
            digits = self._prompts.digits(mask_account(call.account)[-3:], lang)
            account = self._prompts.text("whisper.account", lang, digits=digits)
        else:
            account = self._prompts.text("whisper.no_account", lang)
        verification = {
            Verification.none: "whisper.not_verified",
            Verification.code_sent: "whisper.code_sent",
            Verification.verified: "whisper.verified",
        }[call.verification if call else Verification.none]
        return self._prompts.text(
            "whisper.summary",
            lang,
            account=account,
            verification=self._prompts.text(verification, lang),
            reason=self._prompts.text(f"whisper.reason_{reason}", lang),
        )


def spoken_number(e164: str, prompts: Catalogue, language: Language) -> str:
    """A phone number as people say it: in the national format's groups ("8, 800, 555, ноль,
    один, ноль, ноль"); a group that starts with 0 is said digit by digit."""
    try:
        national = phonenumbers.format_number(
            phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.NATIONAL
        )
    except phonenumbers.NumberParseException:
        national = e164
    groups = _DIGIT_GROUPS.findall(national)
    return ", ".join(
        prompts.digits(group, language) if group.startswith("0") else group for group in groups
    )
