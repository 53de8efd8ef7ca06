"""Tests for ``sms.grammar.parse_sms``."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sms.grammar import (
    MAX_BODY_CHARS,
    Command,
    Keyword,
    Language,
    damerau_levenshtein,
    parse_sms,
)

K = Keyword

# --------------------------------------------------------------------------
# Table of cases: body -> (keyword, argument, language)
# --------------------------------------------------------------------------

CASES: list[tuple[str, Keyword, str, str]] = [
    # restore, Russian, with noise around and inside the account
    ("ВОССТАНОВИТЬ 1234567890", K.restore, "1234567890", "ru"),
    ("восстановить 1234567890", K.restore, "1234567890", "ru"),
    ("Восстановить: 1234567890!", K.restore, "1234567890", "ru"),
    ("восстановить,1234567890", K.restore, "1234567890", "ru"),
    ("  Восстановить\t\n1234567890  ", K.restore, "1234567890", "ru"),
    ("ВОССТАНОВИТЬ 1234 5678 90", K.restore, "1234567890", "ru"),
    ("ВОССТАНОВИТЬ 12-34-56-78-90", K.restore, "1234567890", "ru"),
    ("ВОССТАНОВИТЬ №1234567890", K.restore, "1234567890", "ru"),
    ("восстановить1234567890", K.restore, "1234567890", "ru"),
    ("Восстановить пароль для лс 1234567890, спасибо", K.restore, "1234567890", "ru"),
    ("ВОССТАНОВИТЬ", K.restore, "", "ru"),
    ("ВОССТАНОВИТЬ пароль", K.restore, "", "ru"),
    ("ВОССТАНОВИТЬ " + "1" * 33, K.restore, "", "ru"),
    ("ВОССТАНОВИТЬ " + "1" * 32, K.restore, "1" * 32, "ru"),
    ("Восстановление 555", K.restore, "555", "ru"),
    # restore typos and look-alike letters
    ("востановить 1234567890", K.restore, "1234567890", "ru"),
    ("восстоновить 1234567890", K.restore, "1234567890", "ru"),
    ("васстановить 1234567890", K.restore, "1234567890", "ru"),
    ("вoсстановить 1234567890", K.restore, "1234567890", "ru"),  # Latin o
    ("BOCCTAHOBИTЬ 1234567890", K.restore, "1234567890", "ru"),  # Latin B, O, C, T, A, H
    ("ВОСТАНОВИТ 42", K.restore, "42", "ru"),  # two edits, nine letters and more
    # restore, English and transliteration
    ("RESTORE 1234567890", K.restore, "1234567890", "en"),
    ("RESTORE #1234567890", K.restore, "1234567890", "en"),
    ("restore 1234-5678-90", K.restore, "1234567890", "en"),
    ("resotre 1234567890", K.restore, "1234567890", "en"),
    ("rеstore 77", K.restore, "77", "en"),  # Cyrillic е in a Latin word
    ("VOSSTANOVIT", K.restore, "", "ru"),
    ("vosstanovit 1234567890", K.restore, "1234567890", "ru"),
    ("VOSSTANOVIT' 1234567890", K.restore, "1234567890", "ru"),
    ("vostanovit 1234567890", K.restore, "1234567890", "ru"),
    # login, accounts with letters
    ("ЛОГИН 1234567890", K.login, "1234567890", "ru"),
    ("Логин - 1234567890", K.login, "1234567890", "ru"),
    ("логин ab12345", K.login, "AB12345", "ru"),
    ("логин AB-12345", K.login, "AB12345", "ru"),
    ("логин 12345-ка", K.login, "12345КА", "ru"),
    ("логин 12345-ёж", K.login, "12345ЕЖ", "ru"),  # "ё" is "е"
    ("ЛОГИН лс 1234567890 пожалуйста", K.login, "1234567890", "ru"),
    ("ЛОГИН", K.login, "", "ru"),
    ("LOGIN 1234567890", K.login, "1234567890", "en"),
    ("login: 987654321", K.login, "987654321", "en"),
    # code
    ("123456", K.code, "123456", "ru"),
    (" 123 456 ", K.code, "123456", "ru"),
    ("123-456", K.code, "123456", "ru"),
    ("«123456».", K.code, "123456", "ru"),
    ("КОД 123456", K.code, "123456", "ru"),
    ("код: 123 456", K.code, "123456", "ru"),
    ("КОД", K.code, "", "ru"),
    ("КОД 12345", K.code, "", "ru"),
    ("КОД 1234567", K.code, "", "ru"),
    ("КОД abc123", K.code, "", "ru"),
    ("KOD 123456", K.code, "123456", "ru"),
    ("CODE 123456", K.code, "123456", "en"),
    ("code:654321", K.code, "654321", "en"),
    # call
    ("ЗВОНОК", K.call, "", "ru"),
    ("Позвоните мне", K.call, "", "ru"),
    ("ZVONOK", K.call, "", "ru"),
    ("CALL", K.call, "", "en"),
    # help
    ("ПОМОЩЬ", K.help, "", "ru"),
    ("помошь", K.help, "", "ru"),
    ("Справка", K.help, "", "ru"),
    ("?", K.help, "", "ru"),
    (" ?? ", K.help, "", "ru"),
    ("HELP", K.help, "", "en"),
    ("help?", K.help, "", "en"),
    ("INFO", K.help, "", "en"),
    ("POMOSCH", K.help, "", "ru"),
    ("POMOSH", K.help, "", "ru"),
    ("POMOSHCH", K.help, "", "ru"),
    # stop: only as the whole message
    ("СТОП", K.stop, "", "ru"),
    ("СТОП.", K.stop, "", "ru"),
    ("стоп", K.stop, "", "ru"),
    ("stop", K.stop, "", "en"),
    ("Stop!", K.stop, "", "en"),
    ("\x00STOP\x07", K.stop, "", "en"),
    ("STOPALL", K.stop, "", "en"),
    ("UNSUBSCRIBE", K.stop, "", "en"),
    ("END", K.stop, "", "en"),
    ("QUIT", K.stop, "", "en"),
    ("Отписаться", K.stop, "", "ru"),
    ("ОТПИСКА", K.stop, "", "ru"),
    ("отпистаься", K.stop, "", "ru"),  # typo: an opt-out is honoured anyway
    # start: only as the whole message, exact only
    ("СТАРТ", K.start, "", "ru"),
    ("start", K.start, "", "en"),
    ("UNSTOP", K.start, "", "en"),
    ("ПОДПИСАТЬСЯ", K.start, "", "ru"),
    # operator
    ("ОПЕРАТОР", K.operator, "", "ru"),
    ("опертор", K.operator, "", "ru"),
    ("ЧЕЛОВЕК", K.operator, "", "ru"),
    ("Перезвоните пожалуйста", K.operator, "", "ru"),
    ("OPERATOR", K.operator, "", "en"),
    # cancel
    ("ОТМЕНА", K.cancel, "", "ru"),
    ("OTMENA", K.cancel, "", "ru"),
    ("CANCEL", K.cancel, "", "en"),
    # negatives: must not become a command
    ("", K.unknown, "", "ru"),
    ("   \n\t ", K.unknown, "", "ru"),
    ("...", K.unknown, "", "ru"),
    ("привет", K.unknown, "", "ru"),
    ("hello", K.unknown, "", "en"),
    ("1234567890", K.unknown, "", "ru"),
    ("1234 5678 90", K.unknown, "", "ru"),
    # five or seven digits: a code with a digit missed or doubled ("в коде шесть цифр")
    ("12345", K.code, "", "ru"),
    ("1234567", K.code, "", "ru"),
    ("1234", K.unknown, "", "ru"),
    ("12345678", K.unknown, "", "ru"),
    ("123456 спасибо", K.unknown, "", "ru"),
    ("ab123456", K.unknown, "", "en"),
    ("восстание 123", K.unknown, "", "ru"),
    ("остановить 123", K.unknown, "", "ru"),
    ("Хочу восстановить 1234567890", K.unknown, "", "ru"),
    ("логика", K.unknown, "", "ru"),
    ("logic 123", K.unknown, "", "en"),
    ("logn 1234567890", K.unknown, "", "en"),  # four letters: exact only
    ("коды", K.unknown, "", "ru"),
    ("стоп-кран", K.unknown, "", "ru"),
    ("не могу остановить", K.unknown, "", "ru"),
    ("стоп 123", K.unknown, "", "ru"),
    ("stop sending me this", K.unknown, "", "en"),
    ("старт 1", K.unknown, "", "ru"),
    ("strat", K.unknown, "", "en"),  # opt-in is never a guess
    ("записаться", K.unknown, "", "ru"),  # two edits from "отписаться", other first letter
    ("subscribe", K.unknown, "", "en"),  # the opposite of "unsubscribe"
    ("описка", K.unknown, "", "ru"),
    ("<Response><Say>stop</Say></Response>", K.unknown, "", "en"),
    ("🙂🙂🙂", K.unknown, "", "ru"),
    ("١٢٣٤٥٦", K.unknown, "", "ru"),  # Arabic-Indic digits are not a code
    ("x" * (MAX_BODY_CHARS + 1), K.unknown, "", "ru"),
    ("ВОССТАНОВИТЬ 1234567890" + " " * MAX_BODY_CHARS, K.unknown, "", "ru"),
]


@pytest.mark.parametrize(("body", "keyword", "argument", "language"), CASES)
def test_table(body: str, keyword: Keyword, argument: str, language: str) -> None:
    assert parse_sms(body) == Command(keyword, argument, Language(language))


def test_table_is_large_and_covers_every_keyword() -> None:
    assert len(CASES) >= 60
    assert {case[1] for case in CASES} == set(Keyword)


def test_longest_allowed_body_is_still_parsed() -> None:
    body = "СТОП" + " " * (MAX_BODY_CHARS - 4)
    assert parse_sms(body) == Command(K.stop, "", Language.ru)


def test_repr_hides_the_argument() -> None:
    command = parse_sms("КОД 493817")
    assert command.argument == "493817"
    for text in (repr(command), str(command), f"{command}", f"{command!r}"):
        assert "493817" not in text
        assert "code" in text
        assert "ru" in text


# --------------------------------------------------------------------------
# The distance function
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("", "abc", 3),
        ("abc", "", 3),
        ("restore", "restore", 0),
        ("resotre", "restore", 1),  # swapped neighbours are one edit
        ("востановить", "восстановить", 1),
        ("помошь", "помощь", 1),
        ("опертор", "оператор", 1),
        ("остановить", "восстановить", 2),
        ("логика", "логин", 2),
        ("ca", "abc", 3),  # optimal string alignment, not the unrestricted metric
        ("kitten", "sitting", 3),
    ],
)
def test_damerau_levenshtein(a: str, b: str, distance: int) -> None:
    assert damerau_levenshtein(a, b) == distance
    assert damerau_levenshtein(b, a) == distance


@given(st.text(max_size=12), st.text(max_size=12))
def test_distance_is_bounded_by_lengths(a: str, b: str) -> None:
    distance = damerau_levenshtein(a, b)
    assert abs(len(a) - len(b)) <= distance <= max(len(a), len(b))
    assert (distance == 0) == (a == b)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------


@given(st.text(max_size=2000))
@example("\ud800")
@example("\x00\x1b[31m<&>'\"")
@example("ВОССТАНОВИТЬ\u0301 ́12")
@example("İSTOP")
@example("ﷺ" * 1600)
def test_never_raises(body: str) -> None:
    command = parse_sms(body)
    assert isinstance(command.keyword, Keyword)
    assert command.language in ("ru", "en")
    assert len(command.argument) <= 32
    if command.keyword not in (K.restore, K.login, K.code):
        assert command.argument == ""


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=10_000))
def test_never_raises_on_long_bodies(body: str) -> None:
    parse_sms(body)


NOISE = st.text(alphabet=" \t\n.,:;!?-#()\"'*«»—", max_size=5)
RESTORE_WORDS: list[tuple[str, str]] = [
    ("ВОССТАНОВИТЬ", "ru"),
    ("RESTORE", "en"),
    ("vosstanovit", "ru"),
]


@st.composite
def random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(word, flips, strict=True))


@st.composite
def grouped_digits(draw: st.DrawFn, digits: str) -> str:
    """``digits`` with spaces or dashes between some of them."""
    out = digits[0]
    for digit in digits[1:]:
        out += draw(st.sampled_from(["", "", "", " ", "-"])) + digit
    return out


@given(
    data=st.data(),
    word=st.sampled_from(RESTORE_WORDS),
    account=st.text(alphabet="0123456789", min_size=6, max_size=12),
    before=NOISE,
    between=NOISE,
    after=NOISE,
)
def test_restore_with_noise(
    data: st.DataObject,
    word: tuple[str, str],
    account: str,
    before: str,
    between: str,
    after: str,
) -> None:
    keyword = data.draw(random_case(word[0]))
    written = data.draw(grouped_digits(account))
    body = f"{before}{keyword}{between}{written}{after}"
    assert parse_sms(body) == Command(K.restore, account, Language(word[1]))


@given(
    data=st.data(),
    prefix=st.sampled_from([("", "ru"), ("КОД", "ru"), ("code", "en"), ("KOD", "ru")]),
    code=st.text(alphabet="0123456789", min_size=6, max_size=6),
    before=NOISE,
    between=NOISE,
    after=NOISE,
)
def test_code_with_noise(
    data: st.DataObject,
    prefix: tuple[str, str],
    code: str,
    before: str,
    between: str,
    after: str,
) -> None:
    word = data.draw(random_case(prefix[0]))
    written = data.draw(grouped_digits(code))
    body = f"{before}{word}{between}{written}{after}"
    assert parse_sms(body) == Command(K.code, code, Language(prefix[1]))


@given(account=st.text(alphabet="0123456789", min_size=1, max_size=20))
def test_bare_number_is_a_code_only_with_six_digits(account: str) -> None:
    command = parse_sms(account)
    if len(account) == 6:
        assert command == Command(K.code, account, Language.ru)
    elif len(account) in (5, 7):
        # A mistyped code: the dialog says how many digits a code has.
        assert command == Command(K.code, "", Language.ru)
    else:
        assert command == Command(K.unknown, "", Language.ru)


@given(
    word=st.sampled_from(["стоп", "stop", "старт", "start", "ОТПИСАТЬСЯ", "Unsubscribe"]),
    before=NOISE,
    after=NOISE,
    extra=st.text(alphabet="aя0Z9ъ", min_size=1, max_size=3),
)
def test_stop_and_start_only_as_the_whole_message(
    word: str, before: str, after: str, extra: str
) -> None:
    alone = parse_sms(f"{before}{word}{after}")
    assert alone.keyword in (K.stop, K.start)
    # A letter stuck to the word would be a typo of it, so the extra stands apart.
    assert parse_sms(f"{before}{word}{after} {extra}").keyword is K.unknown
    assert parse_sms(f"{before}{word} {extra}{after}").keyword is K.unknown
