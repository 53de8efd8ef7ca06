"""The voice menu as data: its definition is validated like a state machine, and every screen renders."""

from __future__ import annotations

import ast
import re
import string
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from core.models import GIVEN_REASONS, EscalationReason, Verification
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.service import Channel, Purpose
from ivr.menu import (
    ACTION_TARGETS,
    ENTRY_STATES,
    ENTRY_TARGETS,
    MENU,
    Action,
    Entry,
    Final,
    State,
    successors,
)
from ivr.screens import Screens
from ivr.session import CallSession
from ivr.twiml import RENDERED_SCREENS, GatherSpec, Renderer, Screen, Speech
from voice_prompts import Catalogue, Language, load_catalogue

REPO = Path(__file__).resolve().parents[2]
SOURCES = [*sorted((REPO / "ivr").glob("*.py")), REPO / "core" / "recovery" / "service.py"]
SECTIONS = ("voice", "whisper", "sms", "email")
PROMPT_KEY = re.compile(r"^(voice|whisper|sms|email)\.[a-z0-9_]+$")
CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
MAX_SENTENCE_CHARS = 300
TTS_TAG = {Language.ru: "ru-RU", Language.en: "en-US"}

NON_FINAL = [state for state in State if MENU[state].final is None]
FINAL = [state for state in State if MENU[state].final is not None]

SAMPLE_ACCOUNT = "1000000001"
SAMPLE_CODE = "407215"
SAMPLE_PASSWORD = "ab3kd7mz9p"
SAMPLE_LOGIN = "ivanova.mv"


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def menu_settings() -> Settings:
    return Settings(_env_file=None)


# -- the graph ----------------------------------------------------------------------------


def reachable(starts: Iterable[State]) -> set[State]:
    """Every state some sequence of inputs leads to from `starts` (the starts included)."""
    seen = set(starts)
    queue = deque(seen)
    while queue:
        for nxt in successors(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def test_every_state_has_a_spec() -> None:
    assert set(MENU) == set(State)


def test_every_action_and_entry_has_declared_targets() -> None:
    assert set(ACTION_TARGETS) == set(Action)
    assert set(ENTRY_TARGETS) == set(Entry)


def test_no_unknown_action_targets() -> None:
    for state, spec in MENU.items():
        assert spec.exhausted in MENU, state
        for action in spec.keys.values():
            assert action in ACTION_TARGETS, (state, action)
            assert ACTION_TARGETS[action] <= set(MENU), (state, action)
        if spec.entry is not None:
            assert ENTRY_TARGETS[spec.entry] <= set(MENU), state
        for target in successors(state):
            assert target in MENU, (state, target)


def test_every_state_is_reachable_from_an_entry_state() -> None:
    assert set(ENTRY_STATES) <= set(MENU)
    assert reachable(ENTRY_STATES) == set(State)


def test_final_states_have_no_keys_and_no_successors() -> None:
    for state in FINAL:
        spec = MENU[state]
        assert not spec.keys and spec.entry is None, state
        assert successors(state) == frozenset(), state


@pytest.mark.parametrize("state", NON_FINAL)
def test_every_non_final_state_can_reach_the_operator(state: State) -> None:
    assert State.operator in reachable([state]) - {state}


@pytest.mark.parametrize("state", NON_FINAL)
def test_every_non_final_state_can_end_the_call(state: State) -> None:
    hangups = {s for s in FINAL if MENU[s].final is Final.hangup}
    assert hangups & reachable([state])


def test_operator_ends_in_a_dial_and_goodbye_in_a_hangup() -> None:
    assert MENU[State.operator].final is Final.dial
    assert MENU[State.goodbye].final is Final.hangup


def test_main_menu_keys_are_the_documented_contract() -> None:
    keys = MENU[State.main_menu].keys
    assert set(keys) == {"1", "2", "0", "9", "*"}
    assert keys["1"] is Action.restore_password
    assert keys["2"] is Action.recover_login
    assert keys["9"] is Action.english


@pytest.mark.parametrize("state", [s for s in NON_FINAL if s is not State.code_entry])
def test_any_menu_zero_is_operator_and_star_repeats(state: State) -> None:
    keys = MENU[state].keys
    assert keys.get("0") is Action.operator
    assert keys.get("*") is Action.repeat


def test_code_entry_star_opens_the_options_at_once() -> None:
    """§3: a code may start with any digit, so its only option key is `*`, the finish key."""
    spec = MENU[State.code_entry]
    assert dict(spec.keys) == {"*": Action.code_options}
    assert spec.finish_on_key == "*"
    # Twilio posts `*` alone as no digits: silence opens the options too, never the operator.
    assert spec.on_silence is State.code_options
    options = MENU[State.code_options].keys
    assert options.get("1") is Action.resend_code
    assert options.get("2") is Action.call_me
    assert options.get("0") is Action.operator


def test_account_and_code_entry_accept_speech() -> None:
    for state, spec in MENU.items():
        if spec.entry is not None:
            assert spec.speech, state


# -- the prompt catalogue -----------------------------------------------------------------


def sentence_keys(catalogue: Catalogue, language: Language) -> set[str]:
    return {key for key in catalogue.keys(language) if key.split(".")[0] in SECTIONS}


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def raw(catalogue: Catalogue, key: str, language: Language) -> str:
    """The template itself, placeholders unfilled."""
    return catalogue.text(key, language)


def test_every_language_has_the_same_keys(catalogue: Catalogue) -> None:
    ru = sentence_keys(catalogue, Language.ru)
    assert ru, "no sentences in the catalogue"
    for language in Language:
        assert sentence_keys(catalogue, language) == ru, language


@pytest.mark.parametrize("state", list(State))
def test_every_state_prompt_exists_in_every_language(catalogue: Catalogue, state: State) -> None:
    for language in Language:
        assert catalogue.text(MENU[state].prompt, language).strip(), (state, language)


def test_placeholders_agree_between_languages(catalogue: Catalogue) -> None:
    for key in sentence_keys(catalogue, Language.ru):
        ru = placeholders(raw(catalogue, key, Language.ru))
        for language in Language:
            assert placeholders(raw(catalogue, key, language)) == ru, (key, language)


def string_constants(path: Path) -> Iterator[str]:
    """Every complete string literal of a module (not the pieces of f-strings)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pieces = {
        id(value)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for value in node.values
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in pieces
        ):
            yield node.value


def test_every_prompt_key_in_the_code_exists(catalogue: Catalogue) -> None:
    used = {text for path in SOURCES for text in string_constants(path) if PROMPT_KEY.match(text)}
    assert "voice.code_resend_wait" in used  # the scan sees the flow's notices
    for language in Language:
        missing = used - sentence_keys(catalogue, language)
        assert not missing, (language, sorted(missing))


@pytest.mark.parametrize("reason", sorted(GIVEN_REASONS))
def test_every_escalation_reason_has_a_whisper(
    catalogue: Catalogue, reason: EscalationReason
) -> None:
    for language in Language:
        assert catalogue.text(f"whisper.reason_{reason}", language), (reason, language)


def test_every_channel_has_a_name_for_the_notice_email(catalogue: Catalogue) -> None:
    for language in Language:
        for channel in Channel:
            assert catalogue.text(f"email.channel_{channel}", language), (channel, language)


# Spoken in English from the Russian menu (Screens reads it from the en table).
ENGLISH_IN_RU = {"voice.english_offer"}


def test_russian_sentences_are_russian(catalogue: Catalogue) -> None:
    for key in sentence_keys(catalogue, Language.ru) - ENGLISH_IN_RU:
        assert CYRILLIC.search(raw(catalogue, key, Language.ru)), key


def test_sentences_are_short(catalogue: Catalogue) -> None:
    for language in Language:
        for key in sentence_keys(catalogue, language):
            for sentence in SENTENCE_END.split(raw(catalogue, key, language)):
                assert len(sentence) <= MAX_SENTENCE_CHARS, (key, language, sentence)


GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)


def sms_segments(text: str) -> int:
    single, multi = (160, 153) if set(text) <= GSM7 else (70, 67)
    return 1 if len(text) <= single else -(-len(text) // multi)


def test_sms_texts_fit_their_segments(catalogue: Catalogue) -> None:
    """§4: a code is 1 segment, any other text at most 2, with realistic values filled in."""
    values = {
        "code": SAMPLE_CODE,
        "password": SAMPLE_PASSWORD,
        "hours": 24,
        "login": "smirnova.ea.longer-login",
        "hotline": "+78005550100",
        "wait": "59 минут",
    }
    for language in Language:
        for key in sentence_keys(catalogue, language):
            if not key.startswith("sms."):
                continue
            text = catalogue.text(key, language, **values)
            limit = 1 if key == "sms.code" else 2
            assert sms_segments(text) <= limit, (key, language, len(text))
    assert sms_segments("ЕИРЦ" * 18) == 2 and sms_segments("a" * 160) == 1  # the counter counts


# -- every screen renders as valid TwiML ----------------------------------------------------


def sample_call(
    state: State, language: Language, keyring: Keyring, purpose: Purpose
) -> CallSession:
    secret = {
        State.verify_code: SAMPLE_CODE,
        State.secret_ready: SAMPLE_PASSWORD if purpose is Purpose.password else SAMPLE_LOGIN,
    }.get(state)
    return CallSession(
        call_sid="CA" + "5" * 32,
        caller="+79990001122",
        state=state,
        step=7,
        language=language,
        purpose=purpose,
        account=SAMPLE_ACCOUNT,
        attempt_id="attempt-id",
        verification=Verification.code_sent,
        reason=EscalationReason.retries_exhausted,
        sealed=keyring.seal(secret) if secret else None,
        secret_by_sms=state is State.secret_ready,
    )


def render(settings: Settings, catalogue: Catalogue, call: CallSession) -> ET.Element:
    keyring = Keyring(settings)
    screen = Screens(settings=settings, keyring=keyring, prompts=catalogue).screen(call)
    document = ET.fromstring(Renderer(settings).render(screen))
    assert document.tag == "Response"
    return document


def check_says(settings: Settings, document: ET.Element, language: Language) -> list[str]:
    """Every <Say> is tagged and voiced, readable, and in the call's language (or the 9 offer)."""
    voices = {"ru-RU": settings.voice_ru, "en-US": settings.voice_en}
    texts: list[str] = []
    for say in document.iter("Say"):
        tag = say.get("language")
        text = "".join(say.itertext())
        assert tag in voices, tag
        assert say.get("voice") == voices[tag], (tag, say.get("voice"))
        assert text.strip() and "{" not in text and "}" not in text, text
        for sentence in SENTENCE_END.split(text):
            assert len(sentence) <= MAX_SENTENCE_CHARS, sentence
        if tag == "ru-RU":
            assert CYRILLIC.search(text), text
        else:
            assert not CYRILLIC.search(text), text
        texts.append(text)
    assert texts, "nothing is said"
    tags = [say.get("language") for say in document.iter("Say")]
    assert tags[0] == TTS_TAG[language]
    if language is Language.en:
        assert set(tags) == {"en-US"}
    return texts


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("purpose", list(Purpose))
@pytest.mark.parametrize("state", list(State))
def test_every_screen_renders(
    menu_settings: Settings,
    catalogue: Catalogue,
    state: State,
    language: Language,
    purpose: Purpose,
) -> None:
    keyring = Keyring(menu_settings)
    call = sample_call(state, language, keyring, purpose)
    document = render(menu_settings, catalogue, call)
    texts = check_says(menu_settings, document, language)
    spoken = " ".join(texts)
    assert SAMPLE_ACCOUNT not in spoken
    spec = MENU[state]
    gathers = list(document.iter("Gather"))
    verbs = [child.tag for child in document]
    if spec.final is None:
        # A secret is said before the Gather (§3); everything else inside it.
        secret = state in (State.secret_ready, State.verify_code)
        assert len(gathers) == 1 and verbs[-1] == "Gather", verbs
        assert set(verbs[:-1]) <= ({"Say"} if secret else set()), verbs
        gather = gathers[0]
        assert f"s={call.step}" in (gather.get("action") or "")
        assert gather.get("method") == "POST"
        assert gather.get("actionOnEmptyResult") == "true"  # silence reaches the flow too
        assert gather.get("input") == ("dtmf speech" if spec.speech else "dtmf")
        if spec.speech:
            assert gather.get("language") == TTS_TAG[language]
    else:
        assert not gathers
        assert verbs[-1] == ("Dial" if spec.final is Final.dial else "Hangup"), verbs
    if spec.final is Final.dial:
        number = document.find("Dial/Number")
        assert number is not None
        assert number.text == menu_settings.operator_number
        assert f"/ivr/whisper?c={call.call_sid}" in (number.get("url") or "")


def test_secret_screens_say_the_secret(menu_settings: Settings, catalogue: Catalogue) -> None:
    """The samples above really reach the secret lines (so the checks cover them)."""
    keyring = Keyring(menu_settings)
    for purpose, needle in ((Purpose.password, "Первая группа"), (Purpose.login, "логин")):
        call = sample_call(State.secret_ready, Language.ru, keyring, purpose)
        text = " ".join(
            "".join(say.itertext()) for say in render(menu_settings, catalogue, call).iter("Say")
        )
        assert needle in text
        assert catalogue.text("voice.also_sent_sms", Language.ru) in text
    code_call = sample_call(State.verify_code, Language.ru, keyring, Purpose.password)
    text = " ".join(
        "".join(say.itertext()) for say in render(menu_settings, catalogue, code_call).iter("Say")
    )
    assert catalogue.digits(SAMPLE_CODE, Language.ru) in text


def voice_parts(settings: Settings, catalogue: Catalogue) -> tuple[Keyring, Screens, Renderer]:
    """A keyring, screens and a fresh renderer (with nothing kept yet)."""
    keyring = Keyring(settings)
    return (
        keyring,
        Screens(settings=settings, keyring=keyring, prompts=catalogue),
        Renderer(settings),
    )


@pytest.mark.parametrize("state", list(State))
def test_a_kept_document_is_the_one_rendered_afresh(
    menu_settings: Settings, catalogue: Catalogue, state: State
) -> None:
    """The renderer keeps documents of screens without a secret; a kept one is the same text."""
    keyring, screens, renderer = voice_parts(menu_settings, catalogue)
    for purpose in Purpose:
        for step in (7, 8):
            call = sample_call(state, Language.ru, keyring, purpose)
            call.step = step
            screen = screens.screen(call)
            first = renderer.render(screen)
            assert renderer.render(screens.screen(call)) == first
            assert Renderer(menu_settings).render(screen) == first
            if state is not State.operator and MENU[state].final is None:
                assert f"s={step}" in first  # another step is another document


@pytest.mark.parametrize("state", [State.secret_ready, State.verify_code])
def test_no_document_with_a_secret_is_kept(
    menu_settings: Settings, catalogue: Catalogue, state: State
) -> None:
    """A code, password or login is never kept past the request that says it."""
    keyring, screens, renderer = voice_parts(menu_settings, catalogue)
    for purpose in Purpose:
        screen = screens.screen(sample_call(state, Language.ru, keyring, purpose))
        assert screen.secret
        assert renderer.render(screen) == renderer.render(screen)
        assert kept(renderer) == []
    menu = sample_call(State.main_menu, Language.ru, keyring, Purpose.password)
    assert not screens.screen(menu).secret
    renderer.render(screens.screen(menu))
    assert len(kept(renderer)) == 1  # documents without a secret are kept


def kept(renderer: Renderer) -> list[str]:
    """The documents a renderer keeps."""
    return list(renderer._rendered.values())


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("language", list(Language))
def test_a_document_filled_into_a_kept_shape_is_the_one_rendered_afresh(
    menu_settings: Settings, catalogue: Catalogue, state: State, language: Language
) -> None:
    """Another account read back: the kept shape with other sentences, not a kept document."""
    keyring, screens, renderer = voice_parts(menu_settings, catalogue)
    for purpose in Purpose:
        call = sample_call(state, language, keyring, purpose)
        renderer.render(screens.screen(call))
        call.account = "9" + SAMPLE_ACCOUNT[1:]
        screen = screens.screen(call)
        kept_before = len(kept(renderer))
        assert renderer.render(screen) == Renderer(menu_settings)._render(screen)
        if state is State.account_confirm and not screen.secret:
            assert len(kept(renderer)) == kept_before  # the other account's document is not kept


def test_a_filled_sentence_is_escaped_as_the_builder_escapes_it(menu_settings: Settings) -> None:
    renderer = Renderer(menu_settings)
    gather = GatherSpec(action="/ivr/step?s=3", language=Language.ru)
    for text in ("Первая", 'Вторая & <третья> "четвёртая"', "\ue000 пятая"):
        screen = Screen(lines=[Speech(text, Language.ru)], gather=gather)
        assert renderer.render(screen) == Renderer(menu_settings)._render(screen)


def test_the_kept_documents_are_bounded(menu_settings: Settings, catalogue: Catalogue) -> None:
    keyring, screens, renderer = voice_parts(menu_settings, catalogue)
    call = sample_call(State.main_menu, Language.ru, keyring, Purpose.password)
    for step in range(RENDERED_SCREENS + 10):
        call.step = step
        renderer.render(screens.screen(call))
    assert len(kept(renderer)) == RENDERED_SCREENS


def flow_notices() -> set[str]:
    """The sentences the flow puts before a state's prompt (its only voice.* literals)."""
    return {
        text
        for text in string_constants(REPO / "ivr" / "flow.py")
        if PROMPT_KEY.match(text) and text.startswith("voice.")
    }


@pytest.mark.parametrize("language", list(Language))
def test_every_notice_renders(
    menu_settings: Settings, catalogue: Catalogue, language: Language
) -> None:
    keyring = Keyring(menu_settings)
    notices = sorted(flow_notices())
    assert len(notices) > 5
    for notice in notices:
        call = sample_call(State.account_entry, language, keyring, Purpose.password)
        call.notices = [notice]
        # A wait (when self-service opens again) is said where a notice has a place for it.
        call.wait_seconds = 7200
        document = render(menu_settings, catalogue, call)
        texts = check_says(menu_settings, document, language)
        wait = catalogue.wait(7200, language)
        seconds = catalogue.seconds(0, language)
        assert texts[0] == catalogue.text(notice, language, wait=wait, seconds=seconds), notice


@pytest.mark.parametrize("reason", [*sorted(GIVEN_REASONS), None])
def test_whisper_is_russian_and_masks_the_account(
    menu_settings: Settings, catalogue: Catalogue, reason: EscalationReason | None
) -> None:
    keyring = Keyring(menu_settings)
    screens = Screens(settings=menu_settings, keyring=keyring, prompts=catalogue)
    call = sample_call(State.operator, Language.en, keyring, Purpose.password)
    call.reason = reason
    for text in (screens.whisper(call), screens.whisper(None)):
        assert CYRILLIC.search(text) and "{" not in text
        assert SAMPLE_ACCOUNT not in text
        assert catalogue.digits(SAMPLE_ACCOUNT, Language.ru) not in text
    masked = screens.whisper(call)
    assert catalogue.digits(SAMPLE_ACCOUNT[-3:], Language.ru) in masked
    assert catalogue.text(f"whisper.reason_{reason or 'caller_request'}", Language.ru) in masked


@pytest.mark.parametrize("state", [State.after_hours, State.callback_offer])
def test_callback_offers_take_one_and_end_on_silence(state: State) -> None:
    spec = MENU[state]
    assert spec.keys.get("1") is Action.leave_callback
    assert spec.exhausted is State.goodbye and spec.silence_ends
    assert ACTION_TARGETS[Action.leave_callback] == {State.callback_done}
    assert MENU[State.callback_done].final is Final.hangup


def test_a_transfer_outside_hours_is_a_declared_successor() -> None:
    for state in NON_FINAL:
        if State.operator in successors(state):
            assert State.after_hours in successors(state), state


@pytest.mark.parametrize(
    ("seconds", "ru", "en"),
    [
        (1, "1 минуту", "1 minute"),
        (120, "2 минуты", "2 minutes"),
        (300, "5 минут", "5 minutes"),
        (21 * 60, "21 минуту", "21 minutes"),
        (59 * 60 + 1, "1 час", "1 hour"),
        (2 * 3600, "2 часа", "2 hours"),
        (5 * 3600, "5 часов", "5 hours"),
        (21 * 3600, "21 час", "21 hours"),
        (24 * 3600 - 1, "24 часа", "24 hours"),
    ],
)
def test_a_wait_is_said_rounded_up_with_its_plural(
    catalogue: Catalogue, seconds: int, ru: str, en: str
) -> None:
    """ "Через 1 минуту / 2 минуты / 5 минут / 21 час / 24 часа": when self-service reopens."""
    assert catalogue.wait(seconds, Language.ru) == ru
    assert catalogue.wait(seconds, Language.en) == en
