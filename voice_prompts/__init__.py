"""The prompt catalogue: every caller-facing sentence, by key and language."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import cast

HERE = Path(__file__).resolve().parent


class Language(StrEnum):
    ru = "ru"
    en = "en"

    @property
    def tts(self) -> str:
        """The BCP-47 tag for TTS and speech recognition."""
        return {"ru": "ru-RU", "en": "en-US"}[self.value]


DEFAULT_LANGUAGE = Language.ru

Table = Mapping[str, object]


class Catalogue:
    """Sentences by dotted key ("voice.main_menu") for each language."""

    def __init__(self, tables: Mapping[Language, Table]) -> None:
        self._tables = tables

    def text(self, key: str, language: Language, /, **params: object) -> str:
        """The sentence for a key, with its placeholders filled."""
        template = self._lookup(key, language)
        if not isinstance(template, str):
            raise KeyError(key)
        return template.format(**params) if params else template

    def keys(self, language: Language) -> Iterator[str]:
        """Every sentence key of a language, sections included, spelling excluded."""
        for section, table in self._tables[language].items():
            if section == "spelling" or not isinstance(table, dict):
                continue
            for key, value in table.items():
                if isinstance(value, str):
                    yield f"{section}.{key}"

    def digits(self, digits: str, language: Language) -> str:
        """Digits as separate words, so TTS reads them one by one: "один, два, три"."""
        names = cast(list[str], self._lookup("spelling.digits", language))
        return self._separator(language).join(names[int(d)] for d in digits if d.isdigit())

    def spell(self, characters: str, language: Language) -> str:
        """Characters one by one, letters with a word that starts with them."""
        return self._separator(language).join(self.spelled(characters, language))

    def spelled(self, characters: str, language: Language) -> list[str]:
        """How each character is said: digits by name, letters with a word ("эм, как Мария").

        Letters Russian callers would write in Cyrillic after the word (h, c, j, q, w, x, y)
        are said as "латинская эйч", without a word.
        """
        spelling = cast(dict[str, object], self._tables[language]["spelling"])
        letters = cast(dict[str, list[str]], spelling["letters"])
        template = cast(str, spelling["letter"])
        digit_names = cast(list[str], spelling["digits"])
        symbols = cast(dict[str, str], spelling["symbols"])
        parts: list[str] = []
        for char in characters:
            if char.isdigit():
                parts.append(digit_names[int(char)])
            elif char.lower() in letters:
                said = letters[char.lower()]
                parts.append(
                    template.format(name=said[0], word=said[1]) if len(said) > 1 else said[0]
                )
            else:
                parts.append(symbols.get(char, char))
        return parts

    def substitutions(self, language: Language) -> dict[str, str]:
        """Abbreviations and how they are said ("ЕИРЦ" → "е-и-эр-цэ"), for SSML <sub>."""
        table = self._tables[language].get("say_as", {})
        return (
            {k: v for k, v in table.items() if isinstance(v, str)}
            if isinstance(table, dict)
            else {}
        )

    def genitive(self, number: int, language: Language) -> str:
        """A number in words in the genitive ("из десяти", "с восьми"); English: the digits."""
        if language is not Language.ru or not 0 <= number < 100:
            return str(number)
        units = self.words("numbers.genitive", language)
        if number < 20:
            return units[number]
        tens = self.words("numbers.genitive_tens", language)[number // 10 - 2]
        return tens if number % 10 == 0 else f"{tens} {units[number % 10]}"

    def clock(self, minutes: int, language: Language) -> str:
        """A time of day as people say it: "восьми", "восьми тридцати" / "8 a.m.", "8:30 p.m."."""
        hour, minute = divmod(minutes, 60)
        if language is Language.ru:
            said = self.genitive(hour, language)
            if minute:
                zero = self.words("spelling.digits", language)[0] + " " if minute < 10 else ""
                said += f" {zero}{self.genitive(minute, language)}"
            return said
        names = self.words("numbers.clock", language)
        if minute == 0 and hour in (0, 24):
            return names[0]
        if minute == 0 and hour == 12:
            return names[1]
        suffix = names[2] if hour % 24 < 12 else names[3]
        shown = hour % 12 or 12
        return f"{shown}{f':{minute:02d}' if minute else ''} {suffix}"

    def group_number(self, index: int, language: Language) -> str:
        """The spoken ordinal of a password group (0-based index)."""
        names = cast(list[str], self._lookup("spelling.group_numbers", language))
        return names[index] if index < len(names) else str(index + 1)

    def words(self, key: str, language: Language) -> list[str]:
        """A list of words by key (the day names of the working hours)."""
        words = self._lookup(key, language)
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise KeyError(key)
        return cast(list[str], words)

    def count(self, key: str, number: int, language: Language) -> str:
        """A number with its noun in the right plural form ("1 минута", "5 минут").

        Forms may say the number as `{count}` (digits) or `{words}` (the genitive in words:
        "из десяти знаков", "из двадцати одного знака").
        """
        forms = self.words(key, language)
        if language is Language.ru:
            ones, tens = number % 10, number % 100
            if ones == 1 and tens != 11:
                form = 0
            elif 2 <= ones <= 4 and not 12 <= tens <= 14:
                form = 1
            else:
                form = 2
        else:
            form = 0 if number == 1 else 1
        return forms[form].format(count=number, words=self.genitive(number, language))

    def seconds(self, seconds: int, language: Language) -> str:
        """A short wait in seconds, after "через": "1 секунду", "25 секунд"."""
        return self.count("hours.in_seconds", max(1, seconds), language)

    def wait(self, seconds: int, language: Language) -> str:
        """A wait in words, rounded up: minutes below an hour, else hours ("23 часа")."""
        minutes = max(1, -(-seconds // 60))
        if minutes < 60:
            return self.count("hours.in_minutes", minutes, language)
        return self.count("hours.hours", -(-minutes // 60), language)

    def _separator(self, language: Language) -> str:
        return cast(str, self._lookup("spelling.separator", language))

    def _lookup(self, key: str, language: Language) -> object:
        node: object = self._tables[language]
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"{key} ({language})")
            node = node[part]
        return node


@cache
def load_catalogue(directory: Path = HERE) -> Catalogue:
    """Read every language's TOML file once."""
    tables: dict[Language, Table] = {}
    for language in Language:
        with (directory / f"{language.value}.toml").open("rb") as handle:
            tables[language] = tomllib.load(handle)
    return Catalogue(tables)
