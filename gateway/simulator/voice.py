"""A simulated phone call: executes the gateway's TwiML verb by verb, as Twilio would."""

from __future__ import annotations

import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import httpx

from gateway.simulator.terminal import CallerHungUp, SimulatorIO
from gateway.simulator.transport import (
    API_VERSION,
    COUNTRY,
    WebhookClient,
    WebhookRequest,
    element_text,
    new_sid,
    parse_twiml,
    resolve,
    send_or_explain,
    verb_method,
)

SPEECH_PREFIX = "s:"
SPEECH_CONFIDENCE = "0.9"
DTMF_KEYS = frozenset("0123456789*#")

EndedBy: TypeAlias = Literal["hangup", "dial", "enqueue", "end", "error", "caller"]
TranscriptKind: TypeAlias = Literal["say", "play", "input", "info", "sms", "error"]
Direction: TypeAlias = Literal["inbound", "outbound-api"]


@dataclass
class CallResult:
    """What happened during one simulated call."""

    call_sid: str
    direction: Direction
    ended_by: EndedBy = "end"
    # HTTP requests made for this call: TwiML documents, whispers, Dial actions, status callback.
    requests: int = 0
    status: str = "completed"
    dialed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    followup_calls: list[CallResult] = field(default_factory=list)
    # Spoken codes and passwords end up here: kept out of the repr.
    transcript: list[tuple[TranscriptKind, str]] = field(default_factory=list, repr=False)

    def texts(self, kind: TranscriptKind) -> list[str]:
        """The transcript entries of one kind, in order."""
        return [text for entry_kind, text in self.transcript if entry_kind == kind]


@dataclass
class SimulatedCall:
    """One call in progress: its result so far and the params every webhook of it carries."""

    result: CallResult
    base_params: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    ringing: bool = True

    def log(self, kind: TranscriptKind, text: str) -> None:
        self.result.transcript.append((kind, text))


_Outcome: TypeAlias = WebhookRequest | EndedBy | None


class CallRunner:
    """Runs calls against the gateway: fetches TwiML, executes it, posts the status callback."""

    def __init__(
        self,
        client: WebhookClient,
        io: SimulatorIO,
        *,
        account_sid: str,
        max_requests: int,
        after_request: Callable[[SimulatedCall], Awaitable[None]],
    ) -> None:
        self._client = client
        self._io = io
        self._account_sid = account_sid
        self._max_requests = max_requests
        # Called after every webhook of a call (the phone looks at its outbox then).
        self._after_request = after_request

    def new_call(
        self, direction: Direction, from_number: str, to_number: str, sid: str | None = None
    ) -> SimulatedCall:
        call_sid = sid or new_sid("CA")
        params = {
            "AccountSid": self._account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call_sid,
            "Direction": direction,
            "From": from_number,
            "To": to_number,
            "Caller": from_number,
            "Called": to_number,
            "FromCountry": COUNTRY,
            "ToCountry": COUNTRY,
        }
        return SimulatedCall(
            result=CallResult(call_sid=call_sid, direction=direction), base_params=params
        )

    async def run(self, call: SimulatedCall, request: WebhookRequest) -> None:
        """Fetch TwiML and execute it, following actions and redirects, until the call ends."""
        next_request: WebhookRequest | None = request
        try:
            while next_request is not None:
                if call.result.requests >= self._max_requests:
                    self.error(
                        call, f"[simulator stopped after {self._max_requests} requests: a loop?]"
                    )
                    call.result.ended_by = "error"
                    return
                root = await self._fetch(call, next_request)
                if root is None:
                    call.result.ended_by = "error"
                    return
                outcome = await self._execute(call, root, next_request.url)
                if isinstance(outcome, WebhookRequest):
                    next_request = outcome
                else:
                    call.result.ended_by = outcome
                    next_request = None
        except CallerHungUp:
            self.info(call, "[you hung up]")
            call.result.ended_by = "caller"

    async def _fetch(self, call: SimulatedCall, request: WebhookRequest) -> ET.Element | None:
        status = "ringing" if call.ringing else "in-progress"
        call.ringing = False
        params = {**call.base_params, "CallStatus": status, **request.params}
        response = await self._webhook(call, WebhookRequest(request.url, request.method, params))
        if response is None:
            return None
        root = parse_twiml(response.content)
        if isinstance(root, str):
            self.error(call, root)
            return None
        return root

    async def _webhook(self, call: SimulatedCall, request: WebhookRequest) -> httpx.Response | None:
        """Send one signed request for a call, count it, then look at the outbox."""
        call.result.requests += 1
        response = await send_or_explain(self._client, request)
        await self._after_request(call)
        if isinstance(response, str):
            self.error(call, response)
            return None
        return response

    async def _execute(
        self, call: SimulatedCall, root: ET.Element, document_url: str
    ) -> WebhookRequest | EndedBy:
        for verb in root:
            outcome = await self._verb(call, verb, document_url)
            if outcome is not None:
                return outcome
        return "end"

    async def _verb(self, call: SimulatedCall, verb: ET.Element, document_url: str) -> _Outcome:
        match verb.tag:
            case "Say":
                self._say(call, verb)
            case "Play":
                self._play(call, verb)
            case "Pause":
                pass
            case "Gather":
                return self._gather(call, verb, document_url)
            case "Record":
                return self._record(call, verb, document_url)
            case "Redirect":
                target = element_text(verb)
                if not target:
                    self.error(call, "[<Redirect> without a URL]")
                    return "error"
                return WebhookRequest(resolve(document_url, target), verb_method(verb), {})
            case "Dial":
                return await self._dial(call, verb, document_url)
            case "Enqueue":
                return await self._enqueue(call, verb, document_url)
            case "Hangup":
                self.info(call, "[the gateway hung up]")
                return "hangup"
            case "Reject":
                self.info(call, "[the gateway rejected the call]")
                call.result.status = "busy"
                return "hangup"
            case _:
                self.info(call, f"[<{verb.tag}> is not simulated: skipped]")
        return None

    async def _enqueue(self, call: SimulatedCall, verb: ET.Element, document_url: str) -> _Outcome:
        """Wait in the queue: the hold prompt (waitUrl) once, as the first caller in line.

        Nobody dequeues a simulated call; a key that makes the hold prompt answer <Leave/> takes
        the caller out of the queue, and Twilio then requests the Enqueue action (QueueResult
        leave), as it would.
        """
        self.info(call, f"[waiting in the operator queue {element_text(verb)!r}]")
        queue = {"QueueSid": new_sid("QU"), "QueueTime": "0"}
        wait_url = verb.get("waitUrl")
        if wait_url:
            wait = WebhookRequest(
                resolve(document_url, wait_url),
                verb.get("waitUrlMethod") or "POST",
                {**queue, "QueuePosition": "1", "CurrentQueueSize": "1", "AvgQueueTime": "0"},
            )
            if await self._hold(call, wait) and verb.get("action"):
                self.info(call, "[you left the queue]")
                params = {**queue, "QueueResult": "leave"}
                return WebhookRequest(
                    resolve(document_url, verb.get("action") or ""), verb_method(verb), params
                )
        self.info(call, "[the simulator does not answer queued calls: the call ends here]")
        return "enqueue"

    async def _hold(self, call: SimulatedCall, request: WebhookRequest) -> bool:
        """Play one round of the hold prompt; True when it made the caller leave the queue."""
        root = await self._fetch(call, request)
        while root is not None:
            for verb in root:
                if verb.tag == "Leave":
                    return True
                if verb.tag in {"Say", "Play", "Pause"}:
                    await self._verb(call, verb, request.url)
                elif verb.tag == "Gather":
                    answer = self._gather(call, verb, request.url)
                    if not isinstance(answer, WebhookRequest) or not answer.params.get("Digits"):
                        return False
                    request = answer
                    break
                else:
                    self.info(call, f"[<{verb.tag}> in the hold prompt: skipped]")
            else:
                return False
            root = await self._fetch(call, request)
        return False

    def _say(self, call: SimulatedCall, verb: ET.Element) -> None:
        text = element_text(verb)
        language = verb.get("language") or "en-US"
        for _ in range(_loop_count(verb)):
            call.log("say", text)
            self._io.say(text, language)

    def _play(self, call: SimulatedCall, verb: ET.Element) -> None:
        digits = verb.get("digits")
        shown = f"[plays keys {digits}]" if digits else f"[plays audio {element_text(verb)}]"
        for _ in range(_loop_count(verb)):
            call.log("play", shown)
            self._io.info(shown)

    def _gather(self, call: SimulatedCall, verb: ET.Element, document_url: str) -> _Outcome:
        for child in verb:
            if child.tag == "Say":
                self._say(call, child)
            elif child.tag == "Play":
                self._play(call, child)
        inputs = set((verb.get("input") or "dtmf").split())
        finish_on_key = verb.get("finishOnKey", "#")
        num_digits = positive_int(verb.get("numDigits"))
        language = verb.get("language") or "en-US"
        action = resolve(document_url, verb.get("action") or "")
        prompt = _gather_prompt(inputs, finish_on_key, num_digits, language)
        params = self._gather_input(call, self._io.ask(prompt), inputs, finish_on_key, num_digits)
        if params is not None:
            return WebhookRequest(action, verb_method(verb), params)
        call.log("input", "(silence)")
        if verb.get("actionOnEmptyResult", "").lower() == "true":
            return WebhookRequest(action, verb_method(verb), {"Digits": ""})
        return None  # Twilio goes on with the verbs after <Gather>

    def _gather_input(
        self,
        call: SimulatedCall,
        answer: str | None,
        inputs: set[str],
        finish_on_key: str,
        num_digits: int | None,
    ) -> dict[str, str] | None:
        text = (answer or "").strip()
        if not text:
            return None
        if text[: len(SPEECH_PREFIX)].lower() == SPEECH_PREFIX:
            speech = text[len(SPEECH_PREFIX) :].strip()
            if "speech" not in inputs:
                self.info(call, "[this prompt listens to keys only: speech ignored]")
                return None
            if not speech:
                return None
            call.log("input", f"speech: {speech}")
            return {"SpeechResult": speech, "Confidence": SPEECH_CONFIDENCE}
        if "dtmf" not in inputs:
            self.info(call, "[this prompt listens to speech only: keys ignored]")
            return None
        digits, ignored = _collect_keys(text, finish_on_key, num_digits)
        if ignored:
            self.info(call, f"[not keypad keys, ignored: {ignored}]")
        if not digits:
            return None
        call.log("input", f"keys: {digits}")
        return {"Digits": digits}

    def _record(self, call: SimulatedCall, verb: ET.Element, document_url: str) -> _Outcome:
        answer = self._io.ask("recording: say something (type it), empty for silence")
        text = (answer or "").strip()
        if not text:
            # Twilio does not request the action URL for an empty recording.
            call.log("input", "(silence)")
            return None
        call.log("input", f"recorded: {text}")
        recording_sid = new_sid("RE")
        params = {
            "RecordingSid": recording_sid,
            "RecordingUrl": (
                f"https://api.twilio.com/{API_VERSION}/Accounts/{self._account_sid}"
                f"/Recordings/{recording_sid}"
            ),
            "RecordingDuration": str(max(1, len(text) // 12)),
        }
        return WebhookRequest(
            resolve(document_url, verb.get("action") or ""), verb_method(verb), params
        )

    async def _dial(self, call: SimulatedCall, verb: ET.Element, document_url: str) -> _Outcome:
        targets: list[tuple[str, ET.Element | None]] = []
        for child in verb:
            name = element_text(child)
            if child.tag in {"Number", "Sip", "Client"}:
                targets.append((name, child))
            elif child.tag in {"Queue", "Conference"}:
                targets.append((f"{child.tag.lower()} {name}", child))
        if not targets and element_text(verb):
            targets.append((element_text(verb), None))
        if not targets:
            self.error(call, "[<Dial> without a number]")
            return "error"
        labels = [label for label, _ in targets]
        call.result.dialed.extend(labels)
        self.info(call, f"[transfer to {', '.join(labels)}]")
        child_sid = new_sid("CA")
        # Twilio rings every target at once; the simulated operator is the first one.
        label, element = targets[0]
        whisper_url = element.get("url") if element is not None else None
        if element is not None and whisper_url:
            caller_id = verb.get("callerId") or call.base_params["From"]
            await self._whisper(
                call,
                WebhookRequest(resolve(document_url, whisper_url), verb_method(element), {}),
                child_sid=child_sid,
                caller_id=caller_id,
                target=label,
            )
        action = verb.get("action")
        if not action:
            return "dial"
        self.info(call, "[the operator hung up]")
        params = {
            "DialCallStatus": "completed",
            "DialCallSid": child_sid,
            "DialCallDuration": "1",
        }
        return WebhookRequest(resolve(document_url, action), verb_method(verb), params)

    async def _whisper(
        self,
        call: SimulatedCall,
        request: WebhookRequest,
        *,
        child_sid: str,
        caller_id: str,
        target: str,
    ) -> None:
        """Fetch the TwiML the operator hears before being connected, as Twilio would."""
        params = {
            "AccountSid": self._account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": child_sid,
            "ParentCallSid": call.result.call_sid,
            "CallStatus": "in-progress",
            "Direction": "outbound-dial",
            "From": caller_id,
            "To": target,
            "Caller": caller_id,
            "Called": target,
            "FromCountry": COUNTRY,
            "ToCountry": COUNTRY,
            **request.params,
        }
        response = await self._webhook(call, WebhookRequest(request.url, request.method, params))
        if response is None:
            self.info(call, "[the operator's whisper failed]")
            return
        root = parse_twiml(response.content)
        if isinstance(root, str):
            self.error(call, f"[whisper: {root.strip('[]')}]")
            return
        spoken = " ".join(element_text(say) for say in root.iter("Say") if element_text(say))
        self.info(call, f"[operator hears: {spoken}]" if spoken else "[operator hears nothing]")

    async def finish(
        self, call: SimulatedCall, *, status: str | None = None, duration: int | None = None
    ) -> None:
        """Post the final call status callback, as Twilio does when a call ends."""
        if status is not None:
            call.result.status = status
        seconds = duration if duration is not None else math.ceil(time.monotonic() - call.started)
        params = {
            **call.base_params,
            "CallStatus": call.result.status,
            "CallDuration": str(seconds),
        }
        await self._webhook(
            call, WebhookRequest(self._client.public_url("/ivr/status"), "POST", params)
        )

    def info(self, call: SimulatedCall, text: str) -> None:
        call.log("info", text)
        self._io.info(text)

    def error(self, call: SimulatedCall, text: str) -> None:
        call.log("error", text)
        call.result.errors.append(text)
        self._io.info(text)


def positive_int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    number = int(value)
    return number if number > 0 else None


def _loop_count(element: ET.Element) -> int:
    # loop="0" means "until the caller hangs up"; once is enough to read it.
    return min(positive_int(element.get("loop")) or 1, 10)


def _collect_keys(text: str, finish_on_key: str, num_digits: int | None) -> tuple[str, str]:
    """The Digits Twilio would send for what was typed, and the characters that are not keys."""
    digits: list[str] = []
    ignored: list[str] = []
    for char in text:
        if char.isspace():
            continue
        if char not in DTMF_KEYS:
            ignored.append(char)
            continue
        if finish_on_key and char == finish_on_key:
            break
        digits.append(char)
        if num_digits is not None and len(digits) >= num_digits:
            break
    return "".join(digits), "".join(ignored)


def _gather_prompt(
    inputs: set[str], finish_on_key: str, num_digits: int | None, language: str
) -> str:
    parts: list[str] = []
    if "dtmf" in inputs:
        if num_digits == 1:
            parts.append("press a key")
        elif num_digits is not None:
            parts.append(f"press {num_digits} keys")
        else:
            parts.append("press keys")
        if finish_on_key and num_digits != 1:
            parts.append(f"end with {finish_on_key}")
    if "speech" in inputs:
        parts.append(
            f"or s:<speech> ({language})" if "dtmf" in inputs else f"s:<speech> ({language})"
        )
    return ", ".join(parts) + "; empty = silence"
