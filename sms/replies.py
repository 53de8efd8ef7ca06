"""Who gets an SMS reply, and how many (§6.14): replies are what SMS pumping is paid with.

A reply (TwiML <Message>) is an SMS we pay for, sent to whoever texted us. So: none at all to a
sender outside the allowed countries or on a line that is not a resident's own (premium rate,
shared cost, satellite and other non-geographic ranges: core.kit.phones.outbound_allowed, the
same rule as every other outbound message). The rest are counted in Redis:

- a reply that belongs to a recovery in progress counts against that recovery (its request, the
  wrong codes, the call, the operator: `rate_limit_replies_per_recovery`); recoveries are
  themselves limited per sender (`rate_limit_caller_starts_per_hour`);
- any other reply counts against the sender (`rate_limit_sender_replies_per_hour`, 5);
- every reply counts against the replies' own global budget. Not the codes' budget
  (`global_outbound`): replies go to whoever texts, so sharing it would let anyone with a few
  SIM cards spend the budget that residents' codes need (§6.17); with a budget each, neither
  can starve the other, and the total spend is still bounded by the two together.

Over a limit the answer is silence (an empty <Response/>): an apology would be a reply too.
"""

from __future__ import annotations

import structlog

from core.kit.phones import mask_phone, outbound_allowed
from core.platform.settings import Settings
from core.recovery.limits import Check, Limit, RateLimiter

log = structlog.get_logger(__name__)


class ReplyGate:
    """Decides whether an SMS reply may go out, and counts it."""

    def __init__(self, settings: Settings, limiter: RateLimiter) -> None:
        self._countries = frozenset(settings.allowed_countries)
        self._limiter = limiter

    def answers(self, sender: str) -> bool:
        """Whether this sender may ever get a reply (country and line type; no I/O)."""
        return outbound_allowed(sender, self._countries)

    async def admit(self, sender: str, recovery: str | None) -> bool:
        """Count one reply to `sender`, charged to the recovery in progress if there is one.

        False (count nothing) when a limit is full: the reply must not go out.
        """
        own = (
            Check(Limit.recovery_replies, recovery)
            if recovery
            else Check(Limit.sender_replies, sender)
        )
        decision = await self._limiter.acquire(own, Check(Limit.global_replies))
        if not decision.allowed:
            log.info("sms.reply_withheld", sender=mask_phone(sender), limit=decision.tripped)
        return decision.allowed
