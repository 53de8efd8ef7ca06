"""Recorded prompts (§3): a file for a prompt key and language is played instead of TTS."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from core.platform.settings import Settings
from gateway.app import create_app
from ivr.timing import Estimator
from tests.conftest import AUTH_TOKEN, MOBILE_ONLY, PUBLIC_BASE_URL, Gateway, seed_accounts
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Call, Twilio
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()


def silent_wav(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(b"\0\0" * int(8000 * seconds))


@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    silent_wav(tmp_path / "ru" / "voice.main_menu.wav", 4.5)
    silent_wav(tmp_path / "ru" / "voice.account_confirm.wav", 2.0)  # has a variable part
    return tmp_path


async def gateway_with(settings: Settings) -> AsyncIterator[tuple[Call, httpx.AsyncClient]]:
    await seed_accounts(settings)
    app = create_app(settings, messenger=RecordingMessenger())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield Call(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), caller="+79990001122"), http


async def test_a_recorded_prompt_is_played_and_served(
    settings: Settings, redis: Redis, audio_dir: Path
) -> None:
    settings = settings.model_copy(update={"prompt_audio_dir": audio_dir})
    async for call, http in gateway_with(settings):
        document = await call.start()
        gather = call.gather
        plays = [play.text for play in gather.iter("Play")]
        assert plays == [f"{PUBLIC_BASE_URL}/audio/ru/voice.main_menu.wav"]
        # No file for the English offer: TTS, as before.
        assert "".join(gather.find("Say").itertext()) == PROMPTS.text(  # type: ignore[union-attr]
            "voice.english_offer", Language.en
        )
        served = await http.get("/audio/ru/voice.main_menu.wav")
        assert served.status_code == 200 and served.content[:4] == b"RIFF"
        assert (await http.get("/audio/../ru.toml")).status_code == 404
        # A prompt with a variable part (the account number) stays TTS.
        await call.press("1")
        await call.press(MOBILE_ONLY + "#")
        assert call.twiml.find(".//Play") is None
        assert PROMPTS.digits(MOBILE_ONLY, Language.ru) in call.text
        # The budget counts a recording at its file's duration.
        estimator = Estimator(audio_dir=audio_dir, audio_url_prefix=f"{PUBLIC_BASE_URL}/audio")
        assert 4.5 <= estimator.document_seconds(document) < 4.5 + 3


async def test_recordings_from_a_url_base(
    settings: Settings, redis: Redis, audio_dir: Path
) -> None:
    settings = settings.model_copy(
        update={"prompt_audio_dir": audio_dir, "prompt_audio_url": "https://cdn.example/eirc"}
    )
    async for call, http in gateway_with(settings):
        await call.start()
        plays = [play.text for play in call.twiml.iter("Play")]
        assert plays == ["https://cdn.example/eirc/ru/voice.main_menu.wav"]
        assert (await http.get("/audio/ru/voice.main_menu.wav")).status_code in (404, 405)


async def test_without_recordings_everything_is_tts(gateway: Gateway) -> None:
    call = gateway.call()
    await call.start()
    assert call.twiml.find(".//Play") is None
