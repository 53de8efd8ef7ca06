"""Phone simulator: a Twilio-like phone that drives a running gateway from a terminal or a test.

It signs every webhook exactly as Twilio does (against the public URL, not the address it posts
to), executes the TwiML it gets back verb by verb, and shows SMS and calls that the gateway put in
its outbox as if they arrived on the simulated phone.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self, TextIO, TypeAlias
from urllib.parse import urlencode, urljoin

import httpx
from rich.console import Console
from rich.markup import escape
from twilio.request_validator import RequestValidator

from core.segments import sms_segments as sms_segments  # re-exported for callers and tests

API_VERSION = "2010-04-01"
SIGNATURE_HEADER = "X-Twilio-Signature"
USER_AGENT = "TwilioProxy/1.1"
# Twilio gives up on a webhook after 15 s; so does the simulator.
TWILIO_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_REQUESTS = 200
# A gateway that keeps calling back must not keep the simulator busy forever either.
MAX_INCOMING_CALLS = 10
SPEECH_PREFIX = "s:"
SPEECH_CONFIDENCE = "0.9"
DTMF_KEYS = frozenset("0123456789*#")
COUNTRY = "RU"
DECLINE_ANSWERS = frozenset({"n", "no", "н", "нет"})
HANGUP_ANSWERS = frozenset({"h", "hangup"})

OutboxChannel: TypeAlias = Literal["sms", "call"]
EndedBy: TypeAlias = Literal["hangup", "dial", "enqueue", "end", "error", "caller"]
TranscriptKind: TypeAlias = Literal["say", "play", "input", "info", "sms", "error"]
Direction: TypeAlias = Literal["inbound", "outbound-api"]
ScriptedAnswer: TypeAlias = str | Callable[[], str | None] | None


@dataclass(frozen=True)
class OutboxItem:
    """An SMS or call the gateway sent (or kept in its outbox) towards a phone."""

    id: int
    channel: OutboxChannel
    to_number: str
    from_number: str
    # The body can carry a code or a password: never part of the repr.
    body: str = field(repr=False)
    url: str | None
    # The CallSid/MessageSid the gateway was given when it placed the call, if any.
    sid: str | None = None


class OutboxReader(Protocol):
    """Where the simulator finds the SMS and calls addressed to the simulated phone."""

    async def messages_for(self, phone_number: str, after_id: int) -> list[OutboxItem]:
        """Items to `phone_number` with an id greater than `after_id`, oldest first."""
        ...


class CallerHungUp(Exception):
    """Raised by `SimulatorIO.ask` when the simulated caller hangs up instead of answering."""


class SimulatorIO(Protocol):
    """The ear, eye and keypad of the simulated phone."""

    def say(self, text: str, language: str) -> None:
        """Let the caller hear one `<Say>`."""
        ...

    def info(self, text: str) -> None:
        """Show a stage direction such as "[transfer to +7…]"."""
        ...

    def ask(self, prompt: str) -> str | None:
        """Read keys (`123#`) or speech (`s:…`); None is silence; may raise CallerHungUp."""
        ...


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


class RichConsoleIO:
    """A human at the terminal: prints what the phone says, reads keys; can speak via espeak-ng."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        speak: bool = False,
        stdin: TextIO | None = None,
    ) -> None:
        self._console = console if console is not None else Console(highlight=False)
        self._stdin = stdin
        self._espeak = shutil.which("espeak-ng") if speak else None

    def say(self, text: str, language: str) -> None:
        """Print the sentence and, when asked for, speak it."""
        self._console.print(f"[bold cyan]🔊 {escape(language)}[/] {escape(text)}")
        if self._espeak is not None:
            self._speak(self._espeak, text, language)

    def info(self, text: str) -> None:
        """Print a stage direction."""
        self._console.print(text, style="yellow", markup=False)

    def ask(self, prompt: str) -> str | None:
        """Read one line: keys, `s:` speech, empty for silence, `h` or end of input to hang up."""
        try:
            line = self._console.input(f"[bold green]☎ {escape(prompt)}[/] > ", stream=self._stdin)
        except EOFError:
            raise CallerHungUp from None
        if self._stdin is not None and not line:
            raise CallerHungUp
        answer = line.strip()
        if answer.lower() in HANGUP_ANSWERS:
            raise CallerHungUp
        return answer or None

    @staticmethod
    def _speak(espeak: str, text: str, language: str) -> None:
        voice = "ru" if language.lower().startswith("ru") else "en"
        # Speech is best effort: a broken or missing synthesiser must not end the call.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(  # noqa: S603 - fixed argv; the text goes through stdin
                [espeak, "-v", voice, "--stdin"],
                input=text.encode(),
                capture_output=True,
                check=False,
                timeout=120,
            )


class ScriptedIO:
    """Answers prompts from a script and records everything; hangs up when the script runs out.

    An answer may be a callable, evaluated when the prompt comes (for a code that only arrives
    during the call).
    """

    def __init__(self, answers: Iterable[ScriptedAnswer] = ()) -> None:
        self._answers: deque[ScriptedAnswer] = deque(answers)
        self.events: list[tuple[str, str]] = []
        self.said: list[tuple[str, str]] = []
        self.infos: list[str] = []
        self.prompts: list[str] = []

    @property
    def remaining(self) -> int:
        """Answers not used yet."""
        return len(self._answers)

    def say(self, text: str, language: str) -> None:
        """Record a `<Say>` with its language."""
        self.said.append((text, language))
        self.events.append(("say", text))

    def info(self, text: str) -> None:
        """Record a stage direction."""
        self.infos.append(text)
        self.events.append(("info", text))

    def ask(self, prompt: str) -> str | None:
        """Give the next scripted answer; hang up when there is none left."""
        self.prompts.append(prompt)
        self.events.append(("ask", prompt))
        if not self._answers:
            raise CallerHungUp
        scripted = self._answers.popleft()
        answer = scripted() if callable(scripted) else scripted
        self.events.append(("answer", "(silence)" if answer is None else answer))
        return answer


@dataclass(frozen=True)
class _Request:
    """A webhook request Twilio is about to make: public URL, method, verb-specific params."""

    url: str
    method: str
    params: Mapping[str, str]


@dataclass
class _Call:
    result: CallResult
    base_params: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    ringing: bool = True

    def log(self, kind: TranscriptKind, text: str) -> None:
        self.result.transcript.append((kind, text))


_Outcome: TypeAlias = _Request | EndedBy | None


class PhoneSimulator:
    """A phone that calls and texts the gateway the way Twilio delivers calls and texts."""

    def __init__(
        self,
        *,
        gateway_url: str,
        public_base_url: str,
        account_sid: str,
        auth_token: str,
        phone_number: str,
        service_number: str,
        io: SimulatorIO,
        outbox: OutboxReader | None = None,
        client: httpx.AsyncClient | None = None,
        sms_number: str | None = None,
        outbox_after_id: int | None = None,
        auto_answer: bool = True,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        self._gateway_url = gateway_url.rstrip("/")
        self._public_base_url = public_base_url.rstrip("/")
        self._account_sid = account_sid
        self._validator = RequestValidator(auth_token)
        self.phone_number = phone_number
        self.service_number = service_number
        self.sms_number = sms_number or service_number
        self._io = io
        self._outbox = outbox
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=TWILIO_TIMEOUT_SECONDS)
        # None: skip whatever the outbox already holds for this phone when the simulator starts.
        self._outbox_cursor = outbox_after_id
        self._auto_answer = auto_answer
        self._max_requests = max_requests
        self._incoming: deque[OutboxItem] = deque()
        self.inbox: list[OutboxItem] = []

    def __repr__(self) -> str:
        return f"PhoneSimulator(gateway={self._gateway_url!r}, public={self._public_base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the simulator created it."""
        if self._owns_client:
            await self._client.aclose()

    # --- public operations -------------------------------------------------------------------

    async def call(self) -> CallResult:
        """Call the hotline, follow the TwiML until the call ends, then answer any call-back."""
        await self._prime_outbox()
        call = self._new_call("inbound", self.phone_number, self.service_number)
        await self._run(call, _Request(self._public("/ivr/voice"), "POST", {}))
        await self._finish(call)
        if self._auto_answer:
            call.result.followup_calls = await self.answer_incoming_calls()
        return call.result

    async def answer_incoming_calls(self) -> list[CallResult]:
        """Ring the phone for every call the gateway placed to it, and run the answered ones."""
        await self._prime_outbox()
        await self._poll_outbox(None)
        results: list[CallResult] = []
        while self._incoming and len(results) < MAX_INCOMING_CALLS:
            results.append(await self._incoming_call(self._incoming.popleft()))
        return results

    async def sms(self, body: str) -> list[str]:
        """Text the short number; return the replies and show SMS that arrive afterwards."""
        await self._prime_outbox()
        sid = _new_sid("SM")
        params = {
            "AccountSid": self._account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": sid,
            "SmsSid": sid,
            "SmsMessageSid": sid,
            "SmsStatus": "received",
            "From": self.phone_number,
            "To": self.sms_number,
            "Body": body,
            "NumSegments": str(sms_segments(body)),
            "NumMedia": "0",
            "FromCountry": COUNTRY,
            "ToCountry": COUNTRY,
        }
        replies: list[str] = []
        request: _Request | None = _Request(self._public("/sms/inbound"), "POST", params)
        hops = 0
        while request is not None and hops < self._max_requests:
            hops += 1
            request = await self._sms_step(request, replies)
            # The replies come first; SMS the gateway sent through the outbox arrive after them.
            await self._poll_outbox(None)
        if self._auto_answer:
            await self.answer_incoming_calls()
        return replies

    # --- calls ---------------------------------------------------------------------------------

    def _new_call(
        self, direction: Direction, from_number: str, to_number: str, sid: str | None = None
    ) -> _Call:
        call_sid = sid or _new_sid("CA")
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
        return _Call(result=CallResult(call_sid=call_sid, direction=direction), base_params=params)

    async def _incoming_call(self, item: OutboxItem) -> CallResult:
        from_number = item.from_number or self.service_number
        call = self._new_call("outbound-api", from_number, self.phone_number, item.sid)
        call.ringing = False  # Twilio fetches the TwiML of an outbound call once it is answered
        self._info(call, f"[incoming call from {from_number}]")
        try:
            answer = self._io.ask("answer the call? (y/n)")
        except CallerHungUp:
            answer = None
        if answer is None or answer.strip().lower() in DECLINE_ANSWERS | {""}:
            self._info(call, "[call not answered]")
            call.result.ended_by = "caller"
            await self._finish(call, status="no-answer", duration=0)
            return call.result
        if not item.url:
            self._error(call, "[the gateway placed a call without a TwiML URL]")
            call.result.ended_by = "error"
        else:
            url = urljoin(self._public_base_url + "/", item.url)
            await self._run(call, _Request(url, "POST", {}))
        await self._finish(call)
        return call.result

    async def _run(self, call: _Call, request: _Request) -> None:
        """Fetch TwiML and execute it, following actions and redirects, until the call ends."""
        next_request: _Request | None = request
        try:
            while next_request is not None:
                if call.result.requests >= self._max_requests:
                    self._error(
                        call, f"[simulator stopped after {self._max_requests} requests: a loop?]"
                    )
                    call.result.ended_by = "error"
                    return
                root = await self._fetch(call, next_request)
                if root is None:
                    call.result.ended_by = "error"
                    return
                outcome = await self._execute(call, root, next_request.url)
                if isinstance(outcome, _Request):
                    next_request = outcome
                else:
                    call.result.ended_by = outcome
                    next_request = None
        except CallerHungUp:
            self._info(call, "[you hung up]")
            call.result.ended_by = "caller"

    async def _fetch(self, call: _Call, request: _Request) -> ET.Element | None:
        status = "ringing" if call.ringing else "in-progress"
        call.ringing = False
        params = {**call.base_params, "CallStatus": status, **request.params}
        response = await self._webhook(call, _Request(request.url, request.method, params))
        if response is None:
            return None
        root = _parse_twiml(response.content)
        if isinstance(root, str):
            self._error(call, root)
            return None
        return root

    async def _webhook(self, call: _Call, request: _Request) -> httpx.Response | None:
        """Send one signed request for a call, count it, then look at the outbox."""
        call.result.requests += 1
        response = await self._send(request)
        await self._poll_outbox(call)
        if isinstance(response, str):
            self._error(call, response)
            return None
        return response

    async def _execute(
        self, call: _Call, root: ET.Element, document_url: str
    ) -> _Request | EndedBy:
        for verb in root:
            outcome = await self._verb(call, verb, document_url)
            if outcome is not None:
                return outcome
        return "end"

    async def _verb(self, call: _Call, verb: ET.Element, document_url: str) -> _Outcome:
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
                target = _text(verb)
                if not target:
                    self._error(call, "[<Redirect> without a URL]")
                    return "error"
                return _Request(_resolve(document_url, target), _method(verb), {})
            case "Dial":
                return await self._dial(call, verb, document_url)
            case "Enqueue":
                return await self._enqueue(call, verb, document_url)
            case "Hangup":
                self._info(call, "[the gateway hung up]")
                return "hangup"
            case "Reject":
                self._info(call, "[the gateway rejected the call]")
                call.result.status = "busy"
                return "hangup"
            case _:
                self._info(call, f"[<{verb.tag}> is not simulated: skipped]")
        return None

    async def _enqueue(self, call: _Call, verb: ET.Element, document_url: str) -> _Outcome:
        """Wait in the queue: the hold prompt (waitUrl) once, as the first caller in line.

        Nobody dequeues a simulated call; a key that makes the hold prompt answer <Leave/> takes
        the caller out of the queue, and Twilio then requests the Enqueue action (QueueResult
        leave), as it would.
        """
        self._info(call, f"[waiting in the operator queue {_text(verb)!r}]")
        queue = {"QueueSid": _new_sid("QU"), "QueueTime": "0"}
        wait_url = verb.get("waitUrl")
        if wait_url:
            wait = _Request(
                _resolve(document_url, wait_url),
                verb.get("waitUrlMethod") or "POST",
                {**queue, "QueuePosition": "1", "CurrentQueueSize": "1", "AvgQueueTime": "0"},
            )
            if await self._hold(call, wait) and verb.get("action"):
                self._info(call, "[you left the queue]")
                params = {**queue, "QueueResult": "leave"}
                return _Request(
                    _resolve(document_url, verb.get("action") or ""), _method(verb), params
                )
        self._info(call, "[the simulator does not answer queued calls: the call ends here]")
        return "enqueue"

    async def _hold(self, call: _Call, request: _Request) -> bool:
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
                    if not isinstance(answer, _Request) or not answer.params.get("Digits"):
                        return False
                    request = answer
                    break
                else:
                    self._info(call, f"[<{verb.tag}> in the hold prompt: skipped]")
            else:
                return False
            root = await self._fetch(call, request)
        return False

    def _say(self, call: _Call, verb: ET.Element) -> None:
        text = _text(verb)
        language = verb.get("language") or "en-US"
        for _ in range(_loop_count(verb)):
            call.log("say", text)
            self._io.say(text, language)

    def _play(self, call: _Call, verb: ET.Element) -> None:
        digits = verb.get("digits")
        shown = f"[plays keys {digits}]" if digits else f"[plays audio {_text(verb)}]"
        for _ in range(_loop_count(verb)):
            call.log("play", shown)
            self._io.info(shown)

    def _gather(self, call: _Call, verb: ET.Element, document_url: str) -> _Outcome:
        for child in verb:
            if child.tag == "Say":
                self._say(call, child)
            elif child.tag == "Play":
                self._play(call, child)
        inputs = set((verb.get("input") or "dtmf").split())
        finish_on_key = verb.get("finishOnKey", "#")
        num_digits = _positive_int(verb.get("numDigits"))
        language = verb.get("language") or "en-US"
        action = _resolve(document_url, verb.get("action") or "")
        prompt = _gather_prompt(inputs, finish_on_key, num_digits, language)
        params = self._gather_input(call, self._io.ask(prompt), inputs, finish_on_key, num_digits)
        if params is not None:
            return _Request(action, _method(verb), params)
        call.log("input", "(silence)")
        if verb.get("actionOnEmptyResult", "").lower() == "true":
            return _Request(action, _method(verb), {"Digits": ""})
        return None  # Twilio goes on with the verbs after <Gather>

    def _gather_input(
        self,
        call: _Call,
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
                self._info(call, "[this prompt listens to keys only: speech ignored]")
                return None
            if not speech:
                return None
            call.log("input", f"speech: {speech}")
            return {"SpeechResult": speech, "Confidence": SPEECH_CONFIDENCE}
        if "dtmf" not in inputs:
            self._info(call, "[this prompt listens to speech only: keys ignored]")
            return None
        digits, ignored = _collect_keys(text, finish_on_key, num_digits)
        if ignored:
            self._info(call, f"[not keypad keys, ignored: {ignored}]")
        if not digits:
            return None
        call.log("input", f"keys: {digits}")
        return {"Digits": digits}

    def _record(self, call: _Call, verb: ET.Element, document_url: str) -> _Outcome:
        answer = self._io.ask("recording: say something (type it), empty for silence")
        text = (answer or "").strip()
        if not text:
            # Twilio does not request the action URL for an empty recording.
            call.log("input", "(silence)")
            return None
        call.log("input", f"recorded: {text}")
        recording_sid = _new_sid("RE")
        params = {
            "RecordingSid": recording_sid,
            "RecordingUrl": (
                f"https://api.twilio.com/{API_VERSION}/Accounts/{self._account_sid}"
                f"/Recordings/{recording_sid}"
            ),
            "RecordingDuration": str(max(1, len(text) // 12)),
        }
        return _Request(_resolve(document_url, verb.get("action") or ""), _method(verb), params)

    async def _dial(self, call: _Call, verb: ET.Element, document_url: str) -> _Outcome:
        targets: list[tuple[str, ET.Element | None]] = []
        for child in verb:
            name = _text(child)
            if child.tag in {"Number", "Sip", "Client"}:
                targets.append((name, child))
            elif child.tag in {"Queue", "Conference"}:
                targets.append((f"{child.tag.lower()} {name}", child))
        if not targets and _text(verb):
            targets.append((_text(verb), None))
        if not targets:
            self._error(call, "[<Dial> without a number]")
            return "error"
        labels = [label for label, _ in targets]
        call.result.dialed.extend(labels)
        self._info(call, f"[transfer to {', '.join(labels)}]")
        child_sid = _new_sid("CA")
        # Twilio rings every target at once; the simulated operator is the first one.
        label, element = targets[0]
        whisper_url = element.get("url") if element is not None else None
        if element is not None and whisper_url:
            caller_id = verb.get("callerId") or call.base_params["From"]
            await self._whisper(
                call,
                _Request(_resolve(document_url, whisper_url), _method(element), {}),
                child_sid=child_sid,
                caller_id=caller_id,
                target=label,
            )
        action = verb.get("action")
        if not action:
            return "dial"
        self._info(call, "[the operator hung up]")
        params = {
            "DialCallStatus": "completed",
            "DialCallSid": child_sid,
            "DialCallDuration": "1",
        }
        return _Request(_resolve(document_url, action), _method(verb), params)

    async def _whisper(
        self, call: _Call, request: _Request, *, child_sid: str, caller_id: str, target: str
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
        response = await self._webhook(call, _Request(request.url, request.method, params))
        if response is None:
            self._info(call, "[the operator's whisper failed]")
            return
        root = _parse_twiml(response.content)
        if isinstance(root, str):
            self._error(call, f"[whisper: {root.strip('[]')}]")
            return
        spoken = " ".join(_text(say) for say in root.iter("Say") if _text(say))
        self._info(call, f"[operator hears: {spoken}]" if spoken else "[operator hears nothing]")

    async def _finish(
        self, call: _Call, *, status: str | None = None, duration: int | None = None
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
        await self._webhook(call, _Request(self._public("/ivr/status"), "POST", params))

    # --- SMS -----------------------------------------------------------------------------------

    async def _sms_step(self, request: _Request, replies: list[str]) -> _Request | None:
        """Post one messaging webhook, collect its replies; the next request on a Redirect."""
        response = await self._send(request)
        if isinstance(response, str):
            self._io.info(response)
            return None
        if not response.content.strip():
            return None  # an empty answer is how a gateway says "no reply"
        root = _parse_twiml(response.content)
        if isinstance(root, str):
            self._io.info(root)
            return None
        return self._messaging_verbs(root, request, replies)

    def _messaging_verbs(
        self, root: ET.Element, request: _Request, replies: list[str]
    ) -> _Request | None:
        for verb in root:
            if verb.tag == "Message":
                text = _message_text(verb)
                to = verb.get("to")
                if to and to != self.phone_number:
                    self._io.info(f"[message to {to}: {text}]")
                else:
                    replies.append(text)
                    self._io.info(f"[reply: {text}]")
            elif verb.tag == "Redirect" and _text(verb):
                target = _resolve(request.url, _text(verb))
                return _Request(target, _method(verb), request.params)
            else:
                self._io.info(f"[<{verb.tag}> is not simulated: skipped]")
        return None

    # --- outbox --------------------------------------------------------------------------------

    async def _prime_outbox(self) -> None:
        if self._outbox is None or self._outbox_cursor is not None:
            return
        existing = await self._outbox.messages_for(self.phone_number, 0)
        self._outbox_cursor = max((item.id for item in existing), default=0)

    async def _poll_outbox(self, call: _Call | None) -> None:
        """Show new SMS for this phone; keep new calls to it for when the line is free."""
        if self._outbox is None:
            return
        after = self._outbox_cursor or 0
        items = await self._outbox.messages_for(self.phone_number, after)
        for item in sorted(items, key=lambda item: item.id):
            if item.id <= after:
                continue
            self._outbox_cursor = after = item.id
            if item.to_number != self.phone_number:
                continue
            if item.channel == "sms":
                self.inbox.append(item)
                if call is not None:
                    call.log("sms", item.body)
                self._io.info(f"[SMS from {item.from_number}: {item.body}]")
            elif item.channel == "call":
                self._incoming.append(item)

    # --- HTTP ----------------------------------------------------------------------------------

    def _public(self, path: str) -> str:
        return self._public_base_url + path

    def _target(self, public_url: str) -> str:
        """Where a request for a public URL goes: the gateway when under the public base."""
        base = self._public_base_url
        if public_url == base or public_url.startswith((base + "/", base + "?")):
            return self._gateway_url + public_url[len(base) :]
        return public_url

    def _sign(self, url: str, params: Mapping[str, str]) -> str:
        signature: str = self._validator.compute_signature(url, dict(params))
        return signature

    async def _send(self, request: _Request) -> httpx.Response | str:
        """Send a signed webhook; a failure comes back as the stage direction that shows it."""
        method = request.method.upper()
        if method == "GET":
            separator = "&" if "?" in request.url else "?"
            url = request.url + separator + urlencode(request.params)
            signature = self._sign(url, {})
            body: dict[str, str] | None = None
        else:
            url = request.url
            signature = self._sign(url, request.params)
            body = dict(request.params)
        headers = {SIGNATURE_HEADER: signature, "User-Agent": USER_AGENT}
        try:
            response = await self._client.request(
                method, self._target(url), data=body, headers=headers
            )
        except httpx.TimeoutException:
            return f"[gateway did not answer within {TWILIO_TIMEOUT_SECONDS:g} s]"
        except httpx.HTTPError as exc:
            return f"[gateway unreachable: {type(exc).__name__}]"
        if not response.is_success:
            return f"[gateway answered HTTP {response.status_code}]"
        return response

    # --- stage directions ----------------------------------------------------------------------

    def _info(self, call: _Call, text: str) -> None:
        call.log("info", text)
        self._io.info(text)

    def _error(self, call: _Call, text: str) -> None:
        call.log("error", text)
        call.result.errors.append(text)
        self._io.info(text)


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _parse_twiml(content: bytes) -> ET.Element | str:
    """The `<Response>` element, or the stage direction that says why there is none."""
    if not content.strip():
        return "[gateway answered an empty document]"
    try:
        # The simulator only parses its own gateway's answers, and expat resolves no external
        # entities, so the standard parser is enough for a development tool.
        root = ET.fromstring(content)  # noqa: S314
    except ET.ParseError as exc:
        return f"[gateway answered invalid XML: {exc}]"
    if root.tag != "Response":
        return f"[gateway answered <{root.tag}>, not TwiML]"
    return root


def _text(element: ET.Element) -> str:
    """The element's text with SSML markup flattened and whitespace collapsed."""
    return " ".join("".join(element.itertext()).split())


def _message_text(element: ET.Element) -> str:
    body = element.find("Body")
    if body is not None:
        return _text(body)
    return " ".join((element.text or "").split())


def _method(element: ET.Element) -> str:
    return (element.get("method") or "POST").upper()


def _resolve(document_url: str, reference: str) -> str:
    """Resolve an action or redirect URL against the current document, like a browser."""
    return urljoin(document_url, reference) if reference else document_url


def _positive_int(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    number = int(value)
    return number if number > 0 else None


def _loop_count(element: ET.Element) -> int:
    # loop="0" means "until the caller hangs up"; once is enough to read it.
    return min(_positive_int(element.get("loop")) or 1, 10)


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
