"""A simulated text to the short number: the inbound webhook and the MessagingResponse read back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from core.kit.segments import sms_segments
from gateway.simulator.terminal import SimulatorIO
from gateway.simulator.transport import (
    API_VERSION,
    COUNTRY,
    WebhookClient,
    WebhookRequest,
    element_text,
    new_sid,
    parse_twiml,
    resolve,
    send_or_explain,
    verb_method,
)


def inbound_params(
    *, account_sid: str, from_number: str, to_number: str, body: str
) -> dict[str, str]:
    """The params of the webhook Twilio posts for one inbound SMS."""
    sid = new_sid("SM")
    return {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "SmsStatus": "received",
        "From": from_number,
        "To": to_number,
        "Body": body,
        "NumSegments": str(sms_segments(body)),
        "NumMedia": "0",
        "FromCountry": COUNTRY,
        "ToCountry": COUNTRY,
    }


async def sms_step(
    client: WebhookClient,
    io: SimulatorIO,
    phone_number: str,
    request: WebhookRequest,
    replies: list[str],
) -> WebhookRequest | None:
    """Post one messaging webhook, collect its replies; the next request on a Redirect."""
    response = await send_or_explain(client, request)
    if isinstance(response, str):
        io.info(response)
        return None
    if not response.content.strip():
        return None  # an empty answer is how a gateway says "no reply"
    root = parse_twiml(response.content)
    if isinstance(root, str):
        io.info(root)
        return None
    return messaging_verbs(io, phone_number, root, request, replies)


def messaging_verbs(
    io: SimulatorIO,
    phone_number: str,
    root: ET.Element,
    request: WebhookRequest,
    replies: list[str],
) -> WebhookRequest | None:
    """Show the `<Message>`s (replies to this phone go to `replies`); follow a `<Redirect>`."""
    for verb in root:
        if verb.tag == "Message":
            text = message_text(verb)
            to = verb.get("to")
            if to and to != phone_number:
                io.info(f"[message to {to}: {text}]")
            else:
                replies.append(text)
                io.info(f"[reply: {text}]")
        elif verb.tag == "Redirect" and element_text(verb):
            target = resolve(request.url, element_text(verb))
            return WebhookRequest(target, verb_method(verb), request.params)
        else:
            io.info(f"[<{verb.tag}> is not simulated: skipped]")
    return None


def message_text(element: ET.Element) -> str:
    """The text of one `<Message>` (its `<Body>` or its own text)."""
    body = element.find("Body")
    if body is not None:
        return element_text(body)
    return " ".join((element.text or "").split())
