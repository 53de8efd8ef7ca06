"""Renders a screen (what to say, what to gather, how to end) as TwiML with the twilio builders."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from twilio.twiml.voice_response import Gather, VoiceResponse

from core.config import Settings
from voice_prompts import Language


@dataclass(frozen=True, slots=True)
class Speech:
    """One sentence in one language."""

    text: str
    language: Language


@dataclass(frozen=True, slots=True)
class Pause:
    """Silence between password groups."""

    seconds: int = 1


Utterance = Speech | Pause


class Ending(StrEnum):
    hangup = "hangup"
    dial = "dial"


@dataclass(frozen=True, slots=True)
class GatherSpec:
    """What the caller may answer and where Twilio posts it."""

    action: str
    language: Language
    speech: bool = False
    num_digits: int | None = None
    finish_on_key: str = "#"


@dataclass(frozen=True, slots=True)
class DialSpec:
    """A transfer to the operator with a whisper for the operator's ear."""

    number: str
    whisper_url: str
    action: str


@dataclass(frozen=True, slots=True)
class Screen:
    """Everything the caller hears next."""

    lines: list[Utterance] = field(default_factory=list)
    gather: GatherSpec | None = None
    ending: Ending | None = None
    dial: DialSpec | None = None


class Renderer:
    """Turns screens into TwiML strings."""

    def __init__(self, settings: Settings) -> None:
        self._voices = {Language.ru: settings.voice_ru, Language.en: settings.voice_en}
        self._timeout = settings.gather_timeout_seconds

    def _say(self, target: VoiceResponse | Gather, line: Utterance) -> None:
        if isinstance(line, Pause):
            target.pause(length=line.seconds)
        else:
            target.say(line.text, language=line.language.tts, voice=self._voices[line.language])

    def render(self, screen: Screen) -> str:
        """The TwiML document for a screen."""
        response = VoiceResponse()
        if screen.gather:
            spec = screen.gather
            options: dict[str, str | int] = {
                "action": spec.action,
                "method": "POST",
                "input": "dtmf speech" if spec.speech else "dtmf",
                "timeout": self._timeout,
                "finish_on_key": spec.finish_on_key,
                "action_on_empty_result": "true",
            }
            if spec.num_digits:
                options["num_digits"] = spec.num_digits
            if spec.speech:
                options["language"] = spec.language.tts
                options["speech_timeout"] = "auto"
            gather = response.gather(**options)
            for line in screen.lines:
                self._say(gather, line)
        else:
            for line in screen.lines:
                self._say(response, line)
        if screen.dial:
            dial = response.dial(action=screen.dial.action, method="POST", timeout=30)
            dial.number(screen.dial.number, url=screen.dial.whisper_url, method="POST")
        elif screen.ending is Ending.hangup:
            response.hangup()
        return str(response)
