"""The floor of DESIGN §9: a minimal FastAPI app with no gateway middleware.

One route parses the form, checks the Twilio signature with `RequestValidator` and returns
constant TwiML. The benchmark starts it as its own uvicorn process with the gateway's uvicorn
settings, in the same run, and divides the gateway's CPU per webhook by this app's.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response
from twilio.request_validator import RequestValidator

FLOOR_PATH = "/floor"
STATIC_TWIML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Response><Gather action="/floor" method="POST" input="dtmf" numDigits="1" timeout="7"'
    ' actionOnEmptyResult="true"><Say language="ru-RU" voice="Polly.Tatyana">'
    "Здравствуйте. Это статический ответ.</Say></Gather></Response>"
)


def create_floor_app() -> FastAPI:
    """The floor app; the token and public URL come from the gateway's own variables."""
    validator = RequestValidator(os.environ["GATEWAY_TWILIO_AUTH_TOKEN"])
    base_url = os.environ["GATEWAY_PUBLIC_BASE_URL"].rstrip("/")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post(FLOOR_PATH)
    async def floor(request: Request) -> Response:
        """Parse the form, check the signature, answer constant TwiML."""
        form = await request.form()
        query = request.url.query
        url = base_url + request.url.path + (f"?{query}" if query else "")
        params = {key: str(value) for key, value in form.items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        if not validator.validate(url, params, signature):
            return Response(status_code=403)
        return Response(STATIC_TWIML, media_type="application/xml")

    @app.get("/readyz")
    async def readyz() -> Response:
        """Up."""
        return Response("ready", media_type="text/plain")

    return app
