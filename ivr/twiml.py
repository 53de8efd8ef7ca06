"""Renders a screen (what to say, what to gather, how to end) as TwiML with the twilio builders."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from xml.sax.saxutils import escape

from twilio.twiml import TwiML
from twilio.twiml.voice_response import Gather, SsmlBreak, SsmlSub, VoiceResponse

from core.platform.settings import Settings
from voice_prompts import Language


@dataclass(frozen=True, slots=True)
class Break:
    """A short silence inside a sentence (SSML <break>): between the characters of a secret."""

    ms: int


@dataclass(frozen=True, slots=True)
class Sub:
    """Words said otherwise than written (SSML <sub>): "ЕИРЦ" said "е-и-эр-цэ"."""

    text: str
    alias: str


Part = str | Break | Sub


@dataclass(frozen=True, slots=True)
class Speech:
    """One sentence in one language.

    `text` is what is said, as written; `parts` the same with SSML marks (breaks, substitutions)
    where they help; `slow` says it a little slower (a secret); `audio` is the URL of a
    recorded prompt played instead.
    """

    text: str
    language: Language
    parts: tuple[Part, ...] = ()
    slow: bool = False
    audio: str | None = None

    def plain(self) -> str:
        """The text for a voice without SSML: substitutions spelled out, breaks left out."""
        if not self.parts:
            return self.text
        return "".join(
            part if isinstance(part, str) else part.alias if isinstance(part, Sub) else ""
            for part in self.parts
        )


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
    # Silence posts an empty answer (the menu); the queue's hold prompt just ends and repeats.
    on_empty: bool = True
    timeout: int | None = None
    # Said before the Gather, where no key can cut it off (a secret, §3).
    before: tuple[Utterance, ...] = ()


@dataclass(frozen=True, slots=True)
class DialSpec:
    """A transfer to the operator with a whisper for the operator's ear.

    `number` is an E.164 number (<Number>) or a `sip:` URI (<Sip>).
    """

    number: str
    # Both unset in the fallback TwiML, which must work with the gateway down.
    whisper_url: str | None = None
    action: str | None = None
    timeout: int = 30

    @property
    def is_sip(self) -> bool:
        return self.number.startswith("sip:")


@dataclass(frozen=True, slots=True)
class EnqueueSpec:
    """The caller waits in a named queue; the hold prompt comes from `wait_url`."""

    queue: str
    wait_url: str
    action: str


@dataclass(frozen=True, slots=True)
class QueueDialSpec:
    """The operator's side: take the first caller of a queue (`url` runs on the caller's end)."""

    queue: str
    url: str
    action: str
    timeout: int = 30


@dataclass(frozen=True, slots=True)
class Screen:
    """Everything the caller hears next."""

    lines: list[Utterance] = field(default_factory=list)
    gather: GatherSpec | None = None
    ending: Ending | None = None
    dial: DialSpec | None = None
    enqueue: EnqueueSpec | None = None
    dial_queue: QueueDialSpec | None = None
    # Verbs after the lines: leave the queue, or fetch the next document.
    leave: bool = False
    redirect: str | None = None

    @property
    def secret(self) -> bool:
        """Whether a code or a password is said (slowly: `Speech.slow`)."""
        before = self.gather.before if self.gather else ()
        return any(isinstance(line, Speech) and line.slow for line in (*before, *self.lines))

    def key(self) -> tuple[object, ...]:
        """Everything the document depends on, hashable."""
        return (
            tuple(self.lines),
            self.gather,
            self.ending,
            self.dial,
            self.enqueue,
            self.dial_queue,
            self.leave,
            self.redirect,
        )


# How many rendered documents a renderer keeps (oldest dropped first).
RENDERED_SCREENS = 512


# Twilio speaks SSML only with these voices (Amazon Polly, Google); others get plain text.
SSML_VOICE_PREFIXES = ("Polly.", "Google.")
SECRET_RATE = "90%"


class Renderer:
    """Turns screens into TwiML strings."""

    def __init__(self, settings: Settings) -> None:
        self._voices = {Language.ru: settings.voice_ru, Language.en: settings.voice_en}
        self._timeout = settings.gather_timeout_seconds
        self._rendered: dict[tuple[object, ...], str] = {}
        # Documents with numbered holes for their plain sentences, by the screen's shape.
        self._shapes: dict[tuple[object, ...], str] = {}

    def _ssml(self, language: Language) -> bool:
        return self._voices[language].startswith(SSML_VOICE_PREFIXES)

    def _plain(self, line: Speech) -> bool:
        """Whether the sentence is said as plain text (no SSML marks)."""
        return not self._ssml(line.language) or not (line.parts or line.slow)

    def _say(self, target: VoiceResponse | Gather, line: Utterance) -> None:
        if isinstance(line, Pause):
            target.pause(length=line.seconds)
            return
        if line.audio:
            target.play(line.audio)
            return
        voice = self._voices[line.language]
        if self._plain(line):
            target.say(line.plain(), language=line.language.tts, voice=voice)
            return
        say = target.say(language=line.language.tts, voice=voice)
        holder: TwiML = say.prosody(rate=SECRET_RATE) if line.slow else say
        for part in _merged(line.parts or (line.text,)):
            if isinstance(part, Break):
                holder.nest(SsmlBreak(time=f"{part.ms}ms"))
            elif isinstance(part, Sub):
                holder.nest(SsmlSub(part.text, alias=part.alias))
            else:
                holder.nest(part)

    def render(self, screen: Screen) -> str:
        """The TwiML document for a screen.

        Most calls walk the same few screens, so documents are kept (the last
        `RENDERED_SCREENS` of them), except any that carries a secret: a code or a password is
        never kept past the request that says it. A screen that differs from an earlier one
        only in what its plain sentences say (the account number read back) is the earlier
        document's shape with its own sentences put in, and is not kept itself.
        """
        if screen.secret:
            return self._render(screen)
        key = screen.key()
        document = self._rendered.get(key)
        if document is not None:
            return document
        shaped = self._shaped(screen)
        if shaped is None:
            return self._render(screen)
        shape, texts = shaped
        shape_key = shape.key()
        template = self._shapes.get(shape_key)
        if template is not None:
            return _filled(template, texts)
        template = _keep(self._shapes, shape_key, self._render(shape))
        return _keep(self._rendered, key, _filled(template, texts))

    def _shaped(self, screen: Screen) -> tuple[Screen, list[str]] | None:
        """The screen with each sentence said as plain text replaced by a numbered hole, and
        those sentences; None when a sentence holds a hole's own marks."""
        lines: list[Utterance] = []
        texts: list[str] = []
        for line in screen.lines:
            if isinstance(line, Speech) and not line.audio and self._plain(line):
                text = line.plain()
                if _HOLE_START in text or _HOLE_END in text:
                    return None
                lines.append(Speech(_hole(len(texts)), line.language))
                texts.append(text)
            else:
                lines.append(line)
        return replace(screen, lines=lines), texts

    def _render(self, screen: Screen) -> str:
        response = VoiceResponse()
        if screen.gather:
            spec = screen.gather
            options: dict[str, str | int] = {
                "action": spec.action,
                "method": "POST",
                "input": "dtmf speech" if spec.speech else "dtmf",
                "timeout": spec.timeout or self._timeout,
                "finish_on_key": spec.finish_on_key,
            }
            if spec.on_empty:
                options["action_on_empty_result"] = "true"
            if spec.num_digits:
                options["num_digits"] = spec.num_digits
            if spec.speech:
                options["language"] = spec.language.tts
                options["speech_timeout"] = "auto"
            for line in spec.before:
                self._say(response, line)
            gather = response.gather(**options)
            for line in screen.lines:
                self._say(gather, line)
        else:
            for line in screen.lines:
                self._say(response, line)
        if screen.dial:
            spec_dial = screen.dial
            dial = response.dial(
                action=spec_dial.action,
                method="POST" if spec_dial.action else None,
                timeout=spec_dial.timeout,
            )
            noun = dial.sip if spec_dial.is_sip else dial.number
            noun(
                spec_dial.number,
                url=spec_dial.whisper_url,
                method="POST" if spec_dial.whisper_url else None,
            )
        elif screen.enqueue:
            response.enqueue(
                screen.enqueue.queue,
                action=screen.enqueue.action,
                method="POST",
                wait_url=screen.enqueue.wait_url,
                wait_url_method="POST",
            )
        elif screen.dial_queue:
            spec_queue = screen.dial_queue
            dial = response.dial(
                action=spec_queue.action, method="POST", timeout=spec_queue.timeout
            )
            dial.queue(spec_queue.queue, url=spec_queue.url, method="POST")
        elif screen.leave:
            response.leave()
        elif screen.redirect:
            response.redirect(screen.redirect, method="POST")
        elif screen.ending is Ending.hangup:
            response.hangup()
        return str(response)


# A hole's marks: characters of Unicode's private use area, which no prompt holds.
_HOLE_START, _HOLE_END = "\ue000", "\ue001"


def _hole(number: int) -> str:
    return f"{_HOLE_START}{number}{_HOLE_END}"


def _filled(template: str, texts: list[str]) -> str:
    """The template with each hole replaced by its sentence, escaped as ElementTree does."""
    for number, text in enumerate(texts):
        template = template.replace(_hole(number), escape(text), 1)
    return template


def _keep(kept: dict[tuple[object, ...], str], key: tuple[object, ...], document: str) -> str:
    """Keep a document (the oldest dropped beyond `RENDERED_SCREENS`); returns it."""
    if len(kept) >= RENDERED_SCREENS:
        del kept[next(iter(kept))]
    kept[key] = document
    return document


def _merged(parts: tuple[Part, ...]) -> list[Part]:
    """Adjacent strings joined: the builder keeps only the last text after an element."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] = merged[-1] + part
        elif part != "":
            merged.append(part)
    return merged
