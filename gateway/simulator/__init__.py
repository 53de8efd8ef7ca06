"""The phone simulator: a Twilio-like phone that calls and texts a running gateway.

transport.py signs and sends webhooks (the one signing function the tests and the benchmark reuse),
voice.py runs a call's TwiML, sms.py a text's, terminal.py is the person (or script) at the phone,
phone.py puts them together with the outbox; servers.py starts the servers the tests and the
benchmark run against.
"""

from core.kit.segments import sms_segments
from gateway.simulator.phone import OutboxChannel, OutboxItem, OutboxReader, PhoneSimulator
from gateway.simulator.terminal import (
    CallerHungUp,
    RichConsoleIO,
    ScriptedAnswer,
    ScriptedIO,
    SimulatorIO,
)
from gateway.simulator.voice import CallResult

__all__ = [
    "CallResult",
    "CallerHungUp",
    "OutboxChannel",
    "OutboxItem",
    "OutboxReader",
    "PhoneSimulator",
    "RichConsoleIO",
    "ScriptedAnswer",
    "ScriptedIO",
    "SimulatorIO",
    "sms_segments",
]
