"""Fakes that implement the real protocols, for tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.delivery.messenger import DeliveryFailed


@dataclass(frozen=True, slots=True)
class Sent:
    """One outbound message or call the gateway asked for."""

    channel: str
    to: str
    body: str = ""
    url: str = ""
    purpose: str = ""


@dataclass
class RecordingMessenger:
    """A Messenger that records instead of sending."""

    sent: list[Sent] = field(default_factory=list)
    fail: bool = False
    keeps_messages: bool = False

    async def _record(self, item: Sent) -> str:
        if self.fail:
            raise DeliveryFailed("provider down")
        self.sent.append(item)
        return f"{'SM' if item.channel != 'call' else 'CA'}{len(self.sent):032d}"

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Record an SMS."""
        return await self._record(Sent("sms", to, body=body, purpose=purpose))

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Record a call."""
        return await self._record(Sent("call", to, url=url, purpose=purpose))

    def to(self, number: str, channel: str = "sms") -> list[Sent]:
        """What was sent to one number on one channel."""
        return [item for item in self.sent if item.to == number and item.channel == channel]
