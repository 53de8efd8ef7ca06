"""Phone simulator: a Twilio-like phone that drives a running gateway from a terminal or a test.

It signs every webhook exactly as Twilio does (against the public URL, not the address it posts
to; transport.py), executes the TwiML it gets back verb by verb (voice.py, sms.py), and shows SMS
and calls that the gateway put in its outbox as if they arrived on the simulated phone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Protocol, Self, TypeAlias
from urllib.parse import urljoin

import httpx

from gateway.simulator.sms import inbound_params, sms_step
from gateway.simulator.terminal import CallerHungUp, SimulatorIO
from gateway.simulator.transport import TWILIO_TIMEOUT_SECONDS, WebhookClient, WebhookRequest
from gateway.simulator.voice import CallResult, CallRunner, SimulatedCall

DEFAULT_MAX_REQUESTS = 200
# A gateway that keeps calling back must not keep the simulator busy forever either.
MAX_INCOMING_CALLS = 10
DECLINE_ANSWERS = frozenset({"n", "no", "н", "нет"})

OutboxChannel: TypeAlias = Literal["sms", "call"]


@dataclass(frozen=True)
class OutboxItem:
    """An SMS or call the gateway sent (or kept in its outbox) towards a phone."""

    id: int
    channel: OutboxChannel
    to_number: str
    from_number: str
    # The body can carry a code or a password: never part of the repr.
    body: str = field(repr=False)
    url: str | None
    # The CallSid/MessageSid the gateway was given when it placed the call, if any.
    sid: str | None = None


class OutboxReader(Protocol):
    """Where the simulator finds the SMS and calls addressed to the simulated phone."""

    async def messages_for(self, phone_number: str, after_id: int) -> list[OutboxItem]:
        """Items to `phone_number` with an id greater than `after_id`, oldest first."""
        ...


class PhoneSimulator:
    """A phone that calls and texts the gateway the way Twilio delivers calls and texts."""

    def __init__(
        self,
        *,
        gateway_url: str,
        public_base_url: str,
        account_sid: str,
        auth_token: str,
        phone_number: str,
        service_number: str,
        io: SimulatorIO,
        outbox: OutboxReader | None = None,
        client: httpx.AsyncClient | None = None,
        sms_number: str | None = None,
        outbox_after_id: int | None = None,
        auto_answer: bool = True,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        self._gateway_url = gateway_url.rstrip("/")
        self._public_base_url = public_base_url.rstrip("/")
        self._account_sid = account_sid
        self.phone_number = phone_number
        self.service_number = service_number
        self.sms_number = sms_number or service_number
        self._io = io
        self._outbox = outbox
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(timeout=TWILIO_TIMEOUT_SECONDS)
        self._client = WebhookClient(
            self._http, self._public_base_url, auth_token, gateway_url=self._gateway_url
        )
        # None: skip whatever the outbox already holds for this phone when the simulator starts.
        self._outbox_cursor = outbox_after_id
        self._auto_answer = auto_answer
        self._max_requests = max_requests
        self._incoming: deque[OutboxItem] = deque()
        self.inbox: list[OutboxItem] = []
        self._voice = CallRunner(
            self._client,
            io,
            account_sid=account_sid,
            max_requests=max_requests,
            after_request=self._poll_outbox,
        )

    def __repr__(self) -> str:
        return f"PhoneSimulator(gateway={self._gateway_url!r}, public={self._public_base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client if the simulator created it."""
        if self._owns_client:
            await self._http.aclose()

    # --- public operations -------------------------------------------------------------------

    async def call(self) -> CallResult:
        """Call the hotline, follow the TwiML until the call ends, then answer any call-back."""
        await self._prime_outbox()
        call = self._voice.new_call("inbound", self.phone_number, self.service_number)
        await self._voice.run(
            call, WebhookRequest(self._client.public_url("/ivr/voice"), "POST", {})
        )
        await self._voice.finish(call)
        if self._auto_answer:
            call.result.followup_calls = await self.answer_incoming_calls()
        return call.result

    async def answer_incoming_calls(self) -> list[CallResult]:
        """Ring the phone for every call the gateway placed to it, and run the answered ones."""
        await self._prime_outbox()
        await self._poll_outbox(None)
        results: list[CallResult] = []
        while self._incoming and len(results) < MAX_INCOMING_CALLS:
            results.append(await self._incoming_call(self._incoming.popleft()))
        return results

    async def sms(self, body: str) -> list[str]:
        """Text the short number; return the replies and show SMS that arrive afterwards."""
        await self._prime_outbox()
        params = inbound_params(
            account_sid=self._account_sid,
            from_number=self.phone_number,
            to_number=self.sms_number,
            body=body,
        )
        replies: list[str] = []
        request: WebhookRequest | None = WebhookRequest(
            self._client.public_url("/sms/inbound"), "POST", params
        )
        hops = 0
        while request is not None and hops < self._max_requests:
            hops += 1
            request = await sms_step(self._client, self._io, self.phone_number, request, replies)
            # The replies come first; SMS the gateway sent through the outbox arrive after them.
            await self._poll_outbox(None)
        if self._auto_answer:
            await self.answer_incoming_calls()
        return replies

    # --- calls ---

    async def _incoming_call(self, item: OutboxItem) -> CallResult:
        from_number = item.from_number or self.service_number
        call = self._voice.new_call("outbound-api", from_number, self.phone_number, item.sid)
        call.ringing = False  # Twilio fetches the TwiML of an outbound call once it is answered
        self._voice.info(call, f"[incoming call from {from_number}]")
        try:
            answer = self._io.ask("answer the call? (y/n)")
        except CallerHungUp:
            answer = None
        if answer is None or answer.strip().lower() in DECLINE_ANSWERS | {""}:
            self._voice.info(call, "[call not answered]")
            call.result.ended_by = "caller"
            await self._voice.finish(call, status="no-answer", duration=0)
            return call.result
        if not item.url:
            self._voice.error(call, "[the gateway placed a call without a TwiML URL]")
            call.result.ended_by = "error"
        else:
            url = urljoin(self._public_base_url + "/", item.url)
            await self._voice.run(call, WebhookRequest(url, "POST", {}))
        await self._voice.finish(call)
        return call.result

    # --- outbox --------------------------------------------------------------------------------

    async def _prime_outbox(self) -> None:
        if self._outbox is None or self._outbox_cursor is not None:
            return
        existing = await self._outbox.messages_for(self.phone_number, 0)
        self._outbox_cursor = max((item.id for item in existing), default=0)

    async def _poll_outbox(self, call: SimulatedCall | None) -> None:
        """Show new SMS for this phone; keep new calls to it for when the line is free."""
        if self._outbox is None:
            return
        after = self._outbox_cursor or 0
        items = await self._outbox.messages_for(self.phone_number, after)
        for item in sorted(items, key=lambda item: item.id):
            if item.id <= after:
                continue
            self._outbox_cursor = after = item.id
            if item.to_number != self.phone_number:
                continue
            if item.channel == "sms":
                self.inbox.append(item)
                if call is not None:
                    call.log("sms", item.body)
                self._io.info(f"[SMS from {item.from_number}: {item.body}]")
            elif item.channel == "call":
                self._incoming.append(item)
