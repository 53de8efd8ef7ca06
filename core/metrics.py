"""Prometheus metrics. Labels are fixed vocabularies: never a number, code or account."""

from __future__ import annotations

from prometheus_client import Counter

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
