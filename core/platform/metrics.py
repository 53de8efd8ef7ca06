"""Prometheus metrics. Labels are fixed vocabularies: never a number, code or account."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECOVERY_EVENTS = Counter(
    "gateway_recovery_events",
    "Recovery steps by audit event and channel.",
    ["event", "channel"],
)
OUTBOUND = Counter(
    "gateway_outbound_messages",
    "Outbound SMS, calls and e-mails by channel, purpose and result.",
    ["channel", "purpose", "result"],
)
ESCALATIONS = Counter(
    "gateway_escalations",
    "Transfers to an operator by reason.",
    ["channel", "reason"],
)

# -- Operator routing (issue 5): what transfers came to --------------------------------------
TRANSFER_OUTCOMES = Counter(
    "gateway_transfer_outcomes",
    "Transfers to an operator by route and outcome (answered, no_answer, hung_up, callback).",
    ["route", "outcome"],
)

# --- Outbound delivery (core/delivery/dispatcher.py) ---
OUTBOX_PENDING = Gauge(
    "gateway_outbox_pending",
    "Outbound SMS and calls waiting to be sent (queued or being sent), as of the last sweep.",
)
OUTBOUND_RETRIES = Counter(
    "gateway_outbound_retries",
    "Sends Twilio certainly did not take, queued again, by channel, purpose and error kind.",
    ["channel", "purpose", "error"],
)
OUTBOUND_FAILURES = Counter(
    "gateway_outbound_failures",
    "Outbound messages that will not be sent (again), by channel, purpose and reason.",
    ["channel", "purpose", "reason"],
)

# --- Webhook latency (core/web/routes.py) ---
# Twilio gives up after 15 s; callers hear dead air long before. Labelled by route, never by URL.
WEBHOOK_SECONDS = Histogram(
    "gateway_webhook_seconds",
    "Time to answer a Twilio webhook, by route (failures answered by the fallback included).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0),
)
