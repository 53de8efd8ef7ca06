"""The call session survives its Redis hash: every field written is read back as it was."""

from __future__ import annotations

from dataclasses import fields

from core.models import EscalationReason, Verification
from ivr.menu import State
from ivr.session import CallSession
from voice_prompts import Language


def test_every_field_round_trips_through_the_hash() -> None:
    session = CallSession(
        call_sid="CA" + "1" * 32,
        caller="+79123456789",
        state=State.code_entry,
        step=7,
        language=Language.en,
        purpose="password",
        account="123456",
        attempt_id="a1",
        tries=2,
        notices=["sms_unavailable"],
        verification=Verification.code_sent,
        reason=EscalationReason.caller_request,
        sealed="sealed",
        secret_by_sms=True,
        outbound=True,
        failures=1,
        wrong_codes=3,
        escalation_id=42,
        wait_seconds=90,
        cooldown=25,
    )
    defaults = CallSession(call_sid=session.call_sid)
    unset = [
        f.name for f in fields(session) if getattr(session, f.name) == getattr(defaults, f.name)
    ]
    assert unset == ["call_sid"], f"set every field in this test: {unset}"

    stored = {key: str(value) for key, value in session.to_fields().items()}
    assert CallSession.from_fields(session.call_sid, stored) == session
