"""Drives the gateway like Twilio does: signed form posts (gateway/simulator/transport.py), TwiML
parsed with an XML parser. The test gateway's client waits after every request until what it
queued is sent (tests/conftest.py `settled_client`)."""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

from gateway.simulator.transport import WebhookClient
from gateway.simulator.transport import sign as sign  # the one signing function, for the tests

# Posts signed webhooks to the app under test: `Twilio(http, public_base_url, auth_token)` with an
# httpx client on the app; `post(path, params)` signs for the public URL and posts to the path.
Twilio = WebhookClient


@dataclass
class Call:
    """One phone call through the voice webhooks."""

    twilio: Twilio
    caller: str
    called: str = "+78005550100"
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    twiml: ET.Element = field(default_factory=lambda: ET.Element("Response"))
    path: str = "/ivr/voice"
    history: list[str] = field(default_factory=list)
    raw: str = ""

    def _params(self, **extra: str) -> dict[str, str]:
        return {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": self.caller,
            "To": self.called,
            **extra,
        }

    async def _load(self, path: str, params: dict[str, str]) -> ET.Element:
        response = await self.twilio.post(path, params)
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/xml")
        self.raw = response.text
        self.twiml = ET.fromstring(response.text)
        assert self.twiml.tag == "Response"
        self.path = path
        self.history.append(self.text)
        return self.twiml

    async def start(self, path: str = "/ivr/voice") -> ET.Element:
        """The first webhook of the call."""
        return await self._load(path, self._params(CallStatus="ringing"))

    @property
    def gather(self) -> ET.Element:
        """The Gather of the current document."""
        gather = self.twiml.find("Gather")
        assert gather is not None, f"no Gather in: {self.text}"
        return gather

    @property
    def text(self) -> str:
        """Everything said in the current document (SSML marks inside a Say read as their text)."""
        return " ".join("".join(say.itertext()) for say in self.twiml.iter("Say"))

    def verbs(self) -> list[str]:
        """Top-level verbs of the current document."""
        return [child.tag for child in self.twiml]

    async def press(self, digits: str) -> ET.Element:
        """Answer the current Gather with keys."""
        return await self._answer(Digits=digits)

    async def say(self, speech: str) -> ET.Element:
        """Answer the current Gather with speech."""
        return await self._answer(SpeechResult=speech, Confidence="0.92")

    async def silence(self) -> ET.Element:
        """Let the Gather time out (actionOnEmptyResult posts an empty answer)."""
        return await self._answer(Digits="")

    async def _answer(self, **answer: str) -> ET.Element:
        action = self.gather.get("action")
        assert action, "Gather without action"
        return await self._load(urljoin(self.path, action), self._params(**answer))

    async def hang_up(self, status: str = "completed") -> int:
        """The call ended: Twilio's status callback, as the number's "call status changes"
        webhook sends it (docs/operations.md); the HTTP status of the answer."""
        response = await self.twilio.post("/ivr/status", self._params(CallStatus=status))
        return response.status_code

    def dial_whisper_url(self) -> str:
        """The whisper URL of the transfer in the current document."""
        number = self.twiml.find("Dial/Number")
        assert number is not None, f"no Dial/Number in: {self.text}"
        return str(number.get("url"))


@dataclass
class Phone:
    """A mobile texting the short number."""

    twilio: Twilio
    number: str
    short_number: str = "+78005550101"

    async def text(self, body: str, *, sid: str | None = None) -> list[str]:
        """Send one SMS; the replies in the MessagingResponse."""
        response = await self.post_sms(body, sid=sid)
        assert response.status_code == 200, (response.status_code, response.text)
        document = ET.fromstring(response.text)
        assert document.tag == "Response"
        return [message.text or "" for message in document.iter("Message")]

    async def post_sms(self, body: str, *, sid: str | None = None) -> httpx.Response:
        """The raw webhook response for one SMS."""
        params = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "MessageSid": sid or "SM" + secrets.token_hex(16),
            "From": self.number,
            "To": self.short_number,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": "1",
        }
        return await self.twilio.post("/sms/inbound", params)
