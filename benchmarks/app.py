"""The benchmarked app: the real gateway plus one static-TwiML route, the floor of §9."""

from __future__ import annotations

from fastapi import FastAPI, Response

from core.deps import TwilioRequest
from gateway.app import create_app

STATIC_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Response><Say language="ru-RU" voice="Polly.Tatyana">Здравствуйте. Это статический ответ.'
    '</Say><Gather action="/bench/static" method="POST" input="dtmf" numDigits="1" timeout="7"'
    ' actionOnEmptyResult="true"/></Response>'
)


def create_bench_app() -> FastAPI:
    """`gateway.app.create_app()` with `POST /bench/static` behind the same signature check."""
    app = create_app()

    @app.post("/bench/static")
    async def bench_static(form: TwilioRequest) -> Response:
        """A constant TwiML document: the same stack and signature check, no state."""
        return Response(STATIC_TWIML, media_type="application/xml")

    return app
