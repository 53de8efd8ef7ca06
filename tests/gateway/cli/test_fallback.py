"""`eirc-gateway fallback-twiml`: what Twilio plays when the gateway cannot answer at all."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()


def fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> ET.Element:
    monkeypatch.chdir(tmp_path)  # no stray .env
    result = CliRunner().invoke(app, ["fallback-twiml", *args], env=env)
    assert result.exit_code == 0, result.output
    return ET.fromstring(result.output.strip())


def test_voice_fallback_apologises_and_dials_the_operator_without_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twiml = fallback(tmp_path, monkeypatch, GATEWAY_OPERATOR_NUMBER="+78005550177")
    says = ["".join(say.itertext()) for say in twiml.iter("Say")]
    assert says == [
        PROMPTS.text("voice.error_apology", Language.ru),
        PROMPTS.text("voice.operator_transfer", Language.ru),
    ]
    [dial] = twiml.findall("Dial")
    [number] = dial.findall("Number")
    assert number.text == "+78005550177"
    # Nothing that points back at the gateway: it may be the thing that is down.
    for element in twiml.iter():
        assert not {"action", "url", "waitUrl"} & set(element.attrib), element.attrib


def test_voice_fallback_dials_a_sip_desk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twiml = fallback(tmp_path, monkeypatch, GATEWAY_OPERATOR_NUMBER="sip:desk@pbx.example")
    [sip] = twiml.findall("Dial/Sip")
    assert sip.text == "sip:desk@pbx.example"


def test_sms_fallback_apologises_with_the_hotline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twiml = fallback(tmp_path, monkeypatch, "--sms", GATEWAY_HOTLINE_NUMBER="+78005550100")
    [message] = twiml.findall("Message")
    assert message.text == PROMPTS.text("sms.reply_error", Language.ru, hotline="+78005550100")
