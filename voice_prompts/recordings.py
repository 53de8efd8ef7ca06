"""Recorded prompts: an audio file for a prompt key and language is played instead of TTS (§3).

The files live in one directory, `<language>/<key>.<ext>` (e.g. `ru/voice.main_menu.wav`); the
gateway serves that directory itself, or the files are published under a URL base (a CDN) with
the same names. Only prompts without variable parts are recorded: a prompt with placeholders
(the account number, a code, the hours) is always said by TTS.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from urllib.parse import quote

AUDIO_EXTENSIONS = (".wav", ".mp3")
# Where the gateway serves the directory when no URL base is configured.
AUDIO_PATH = "/audio"


class Recordings:
    """Which prompt keys have a recording, and the URL Twilio fetches it from."""

    def __init__(self, files: dict[tuple[str, str], str], url_base: str) -> None:
        self._files = files
        self._base = url_base.rstrip("/")

    def url(self, key: str, language: str) -> str | None:
        """The URL of the recording of `key` in `language`, or None (say it by TTS)."""
        name = self._files.get((language, key))
        return f"{self._base}/{language}/{quote(name)}" if name else None

    def __len__(self) -> int:
        return len(self._files)


NONE = Recordings({}, "")


@cache
def load_recordings(directory: Path | None, url_base: str) -> Recordings:
    """Scan the directory once: `<language>/<key>.<ext>` files become recordings."""
    if directory is None or not directory.is_dir():
        return NONE
    files: dict[tuple[str, str], str] = {}
    for language_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
        for path in sorted(language_dir.iterdir()):
            if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
                files.setdefault((language_dir.name, path.stem), path.name)
    return Recordings(files, url_base)
