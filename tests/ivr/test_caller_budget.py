"""The caller budget (DESIGN §3): what the gateway actually answers, synthesised with espeak-ng.

The calls are walked through the real webhooks as a resident would (pressing whatever the menu
asks); every document is timed with `espeak-ng -v ru` at its default speed (breaks and pauses
counted). espeak-ng is deterministic, so these are assertions on speech, not on wall-clock time.
Run with `-s` to see the table of the three paths.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest

from ivr.timing import Estimator, espeak_available
from tests.conftest import LANDLINE, LANDLINE_ONLY, MOBILE, MOBILE_ONLY, Gateway
from tests.support.twilio_driver import Call

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

GREETING_BUDGET = 10.0
HAPPY_PATH_BUDGET = 65.0
CODE = re.compile(r"\b(\d{6})\b")
ESTIMATOR = Estimator()


@dataclass
class Walk:
    """The documents of one path, each with its seconds of speech."""

    name: str
    steps: list[tuple[str, float]] = field(default_factory=list)

    def add(self, label: str, document: ET.Element) -> float:
        seconds = ESTIMATOR.document_seconds(document)
        self.steps.append((label, seconds))
        return seconds

    @property
    def total(self) -> float:
        return sum(seconds for _, seconds in self.steps)

    def report(self) -> str:
        lines = [f"{self.name}: {self.total:.1f} s"]
        lines += [f"  {label:<28} {seconds:5.1f} s" for label, seconds in self.steps]
        return "\n".join(lines)


def sms_code(gateway: Gateway, phone: str = MOBILE) -> str:
    sms = gateway.messenger.to(phone)
    assert sms, "no code SMS"
    match = CODE.search(sms[-1].body)
    assert match
    return match.group(1)


async def walk_to_code(gateway: Gateway, walk: Walk, menu_key: str) -> Call:
    """Greeting → the menu key → account number → confirm → SMS code: the code prompt."""
    call = gateway.call(MOBILE)
    walk.add("greeting", await call.start())
    walk.add("account number", await call.press(menu_key))
    walk.add("account read back", await call.press(MOBILE_ONLY + "#"))
    walk.add("method choice", await call.press("1"))
    walk.add("code sent, code prompt", await call.press("1"))
    return call


async def password_path(gateway: Gateway) -> Walk:
    walk = Walk("password by SMS code")
    call = await walk_to_code(gateway, walk, "1")
    walk.add("password spoken", await call.press(sms_code(gateway)))
    return walk


async def login_path(gateway: Gateway) -> Walk:
    walk = Walk("login by SMS code")
    call = await walk_to_code(gateway, walk, "2")
    walk.add("login spoken", await call.press(sms_code(gateway)))
    return walk


async def voice_code_path(gateway: Gateway) -> Walk:
    """The code by a call to the phone on file (a landline): two calls, both counted."""
    walk = Walk("password by voice-call code")
    call = gateway.call(LANDLINE)
    walk.add("greeting", await call.start())
    walk.add("account number", await call.press("1"))
    walk.add("account read back", await call.press(LANDLINE_ONLY + "#"))
    walk.add("method choice", await call.press("1"))
    walk.add("call arranged", await call.press("2"))
    # The caller hangs up; the call is placed after the inbound call ends (§3).
    await gateway.twilio.post(
        "/ivr/status",
        {
            "AccountSid": "AC" + "0" * 32,
            "CallSid": call.call_sid,
            "CallStatus": "completed",
            "From": call.caller,
            "To": call.called,
        },
    )
    placed = gateway.messenger.to(LANDLINE, "call")
    if not placed:
        walk.steps.append(("(no call placed yet)", 0.0))
        return walk
    callback = Call(gateway.twilio, caller=gateway.settings.hotline_number, called=LANDLINE)
    walk.add(
        "verification greeting",
        await callback.start(placed[-1].url.removeprefix(gateway.settings.public_base_url)),
    )
    walk.add("code spoken", await callback.press("5"))
    code = spoken_code(callback)
    walk.add("password spoken", await callback.press(code))
    assert "Готово" in callback.text, callback.text
    return walk


def spoken_code(call: Call) -> str:
    """The code the verification call reads (its digits in words, from the catalogue)."""
    from voice_prompts import Language, load_catalogue

    names = load_catalogue().words("spelling.digits", Language.ru)
    words = re.findall("|".join(sorted(names, key=len, reverse=True)), call.text)
    digits = "".join(str(names.index(word)) for word in words)
    return digits[:6]


async def test_greeting_and_happy_path_fit_the_budget(gateway: Gateway) -> None:
    walk = await password_path(gateway)
    print("\n" + walk.report())
    greeting = walk.steps[0][1]
    assert greeting <= GREETING_BUDGET, walk.report()
    assert walk.total <= HAPPY_PATH_BUDGET, walk.report()


async def test_login_and_voice_code_paths_are_reported(gateway: Gateway) -> None:
    login = await login_path(gateway)
    voice = await voice_code_path(gateway)
    print("\n" + login.report() + "\n" + voice.report())
    assert login.total > 0 and voice.total > 0
