"""The messenger seam: what every provider implements, and how a send can fail.

The dispatcher (core/delivery/dispatcher.py) calls a `Messenger` and sorts its failures: permanent
(`DeliveryFailed`), certainly not taken (`TransientDeliveryError`, retried) and unknown
(`AmbiguousDeliveryError`, never repeated).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class DeliveryFailed(RuntimeError):
    """The provider refused the message for good (invalid number, unsubscribed...): not retried.

    `error_code` is the provider's error code or a fixed word ("send", "http_400"): never a
    number, a text or anything else a resident gave us.
    """

    def __init__(self, message: str, *, error_code: str = "send") -> None:
        super().__init__(message)
        self.error_code = error_code[:16]


class TransientDeliveryError(DeliveryFailed):
    """The provider did not take the message, and saying so was certain: 5xx, 429, no connection.

    Safe to send again later; `retry_after` is the provider's Retry-After in seconds, if given.
    """

    def __init__(self, message: str, *, error_code: str, retry_after: float | None = None) -> None:
        super().__init__(message, error_code=error_code)
        self.retry_after = retry_after


class AmbiguousDeliveryError(DeliveryFailed):
    """The request may have reached the provider, and no answer came back (a read timeout).

    Twilio may have accepted the message: sending it again could deliver it twice, so the
    dispatcher never does (see core/delivery/dispatcher.py for the reasoning).
    """


# The outbox row a send is for. The dispatcher sets it around each messenger call, so that the
# Twilio messenger can name the row in the StatusCallback URL without the Messenger protocol
# (and every fake implementing it) growing a parameter. Asyncio tasks and to_thread copy it.
current_outbox_key: ContextVar[str | None] = ContextVar("current_outbox_key", default=None)
# The query parameter of the StatusCallback URL that carries it.
OUTBOX_KEY_PARAM = "outbox"


class Messenger(Protocol):
    """Sends an SMS or places a call and returns the provider's id (e-mails wait in the outbox)."""

    # True when nothing leaves the building: the outbox row (with its text) is the message.
    keeps_messages: bool

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Send one SMS."""
        ...

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Place an outbound call whose TwiML is fetched from `url`."""
        ...
