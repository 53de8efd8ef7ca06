"""How long a TwiML document takes to hear: the caller budget of DESIGN §3.

espeak-ng synthesises every <Say> (its SSML kept: <break>, <prosody>, <sub> count as spoken) at
its default speed, `-v ru` or `-v en-us` by the Say's language; <Pause> counts its length and
<Play> its file's duration (WAV files it can find locally; others count 0 and are named). The
output is deterministic, so tests may assert on it. Results are cached in memory and, when a
cache file is given, on disk (the billing centre re-runs `eirc-gateway prompts report` after
each edit of voice_prompts/, and only changed sentences are synthesised again).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import wave
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ESPEAK_VOICES = {"ru-RU": "ru", "en-US": "en-us"}
# Twilio's <Pause> without a length waits one second.
DEFAULT_PAUSE = 1.0


class EspeakMissingError(RuntimeError):
    """espeak-ng is not installed: durations cannot be estimated."""


def espeak_available() -> bool:
    """Whether espeak-ng is on the PATH."""
    return shutil.which("espeak-ng") is not None


def wav_seconds(path: Path) -> float:
    """The duration of a WAV file."""
    with wave.open(str(path), "rb") as handle:
        return handle.getnframes() / float(handle.getframerate())


@dataclass
class Estimator:
    """Seconds of speech for <Say> texts and whole TwiML documents."""

    cache_file: Path | None = None
    # Where <Play> URLs under `audio_url_prefix` are found on disk (recorded prompts).
    audio_dir: Path | None = None
    audio_url_prefix: str = ""
    _cache: dict[str, float] = field(default_factory=dict)
    _dirty: bool = False

    def __post_init__(self) -> None:
        if self.cache_file is not None and self.cache_file.exists():
            try:
                loaded = json.loads(self.cache_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                loaded = {}
            if isinstance(loaded, dict):
                self._cache.update(
                    {k: float(v) for k, v in loaded.items() if isinstance(v, int | float)}
                )

    def speech_seconds(self, ssml_body: str, tts_language: str) -> float:
        """Seconds espeak-ng takes to say `ssml_body` (text with SSML elements, no <speak>)."""
        voice = ESPEAK_VOICES.get(tts_language, "ru")
        document = f"<speak>{ssml_body}</speak>"
        key = hashlib.sha256(f"{voice}\0{document}".encode()).hexdigest()
        if key not in self._cache:
            self._cache[key] = self._synthesise(voice, document)
            self._dirty = True
        return self._cache[key]

    def _synthesise(self, voice: str, document: str) -> float:
        espeak = shutil.which("espeak-ng")
        if espeak is None:
            raise EspeakMissingError("espeak-ng is not installed")
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "say.wav"
            subprocess.run(  # noqa: S603 - fixed argv; the text goes through stdin
                [espeak, "-m", "-v", voice, "-w", str(out), "--stdin"],
                input=document.encode(),
                check=True,
                capture_output=True,
                timeout=60,
            )
            return wav_seconds(out)

    def play_seconds(self, url: str) -> float:
        """A recorded prompt's duration, when its file is found locally; else 0."""
        if self.audio_dir is None:
            return 0.0
        path = urlsplit(url).path
        prefix = urlsplit(self.audio_url_prefix).path if self.audio_url_prefix else ""
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        candidate = (self.audio_dir / path.lstrip("/")).resolve()
        if candidate.suffix.lower() != ".wav" or not candidate.is_file():
            return 0.0
        return wav_seconds(candidate)

    def element_seconds(self, element: ET.Element) -> float:
        """One verb's duration: Say, Pause, Play, or the verbs nested in a Gather."""
        match element.tag:
            case "Say":
                body = ((element.text and _escape(element.text)) or "") + "".join(
                    ET.tostring(child, encoding="unicode") for child in element
                )
                language = element.get("language") or "ru-RU"
                return self.speech_seconds(body, language) if body.strip() else 0.0
            case "Pause":
                return float(element.get("length") or DEFAULT_PAUSE)
            case "Play":
                return self.play_seconds(element.text or "")
            case "Gather":
                return sum(self.element_seconds(child) for child in element)
        return 0.0

    def document_seconds(self, twiml: str | ET.Element) -> float:
        """Everything a TwiML document says before it waits for the caller or ends."""
        # Our own TwiML (or a test's), never a caller's XML.
        root = ET.fromstring(twiml) if isinstance(twiml, str) else twiml  # noqa: S314
        return sum(self.element_seconds(child) for child in root)

    def save(self) -> None:
        """Write the cache file (when one is configured and something new was synthesised)."""
        if self.cache_file is None or not self._dirty:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_text(json.dumps(self._cache, sort_keys=True), encoding="utf-8")
        self._dirty = False


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
