"""A menu step decided from the session this process remembers (DESIGN §9: one Redis round trip),
never at the cost of §6.6: a step acts once, after its claim, on the session Redis holds."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from core.kit.schedule import Schedule
from core.models import EscalationReason
from core.platform.container import Services
from core.platform.metrics import ESCALATIONS
from ivr.flow import CallerInput, Unclaimed, VoiceFlow
from ivr.menu import State
from ivr.session import _LONG, CallSession, CallStore
from tests.conftest import MOBILE, MOBILE_ONLY, Gateway
from tests.ivr.conftest import CLOSED_NOW, OPEN_NOW, WORKING_HOURS
from tests.ivr.test_webhooks import (
    action_of,
    answer_at,
    at_account_confirm,
    at_account_entry,
)
from voice_prompts import Language

SID = "CA" + "7" * 32


class RoundTrips:
    """What redis-py writes to any connection: one command, a script or a pipeline each."""

    count = 0


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[RoundTrips]]:
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: object, **kwargs: object) -> None:
        RoundTrips.count += 1
        await send(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    RoundTrips.count = 0
    yield RoundTrips


async def test_a_move_through_the_menu_is_one_round_trip(
    gateway: Gateway, round_trips: type[RoundTrips]
) -> None:
    for first_time in (True, False):  # the first call loads the scripts into Redis
        call = gateway.call(MOBILE)
        await call.start()
        for keys, heard in (("1", "номер лицевого счёта"), (MOBILE_ONLY + "#", "Номер счёта")):
            round_trips.count = 0
            await call.press(keys)
            assert heard in call.text
            assert first_time or round_trips.count == 1, keys


async def test_a_step_that_acts_is_claimed_before_it_acts(gateway: Gateway, redis: Redis) -> None:
    """Two copies of one webhook at once, both from the remembered session: one attempt."""
    call = await at_account_confirm(gateway)
    path = action_of(call)
    first, second = await asyncio.gather(
        answer_at(call, path, Digits="1"), answer_at(call, path, Digits="1")
    )
    assert first.status_code == second.status_code == 200
    assert len(await redis.keys("attempt:*")) == 1


async def test_a_remembered_copy_never_overwrites_what_another_worker_wrote(
    redis: Redis,
) -> None:
    here, there = CallStore(redis, 600), CallStore(redis, 600)
    await here.create(CallSession(call_sid=SID, caller=MOBILE))
    # Another worker changes the call without moving its step (its copy was read, not kept).
    moved = await there.load(SID)
    assert moved is not None
    moved.language = Language.en
    await there.save(moved)

    recalled = here.recall(SID, 0)
    assert recalled is not None
    stale = recalled.session
    stale.state, stale.step = State.account_entry, 1
    answer = await here.advance(0, recalled, stale)

    assert answer is not None, "the stale copy was stored"
    claimed, now = answer
    assert claimed and now is not None
    assert (now.state, now.step, now.language) == (State.main_menu, 0, Language.en)
    stored = await redis.hgetall(f"call:{SID}")
    assert (stored["s"], stored["n"], stored["l"], stored["c"]) == ("main_menu", "0", "en", "0")


async def test_a_stale_step_is_not_advanced_twice(redis: Redis) -> None:
    store = CallStore(redis, 600)
    await store.create(CallSession(call_sid=SID, caller=MOBILE))
    recalled = store.recall(SID, 0)
    assert recalled is not None
    call = recalled.session
    call.state, call.step = State.account_entry, 1
    assert await store.advance(0, recalled, call) is None
    # The same step again from the same old copy: a replay, nothing stored.
    call.state = State.goodbye
    answer = await store.advance(0, recalled, call)
    assert answer is not None
    claimed, now = answer
    assert not claimed and now is not None and now.state is State.account_entry


async def test_an_advance_leaves_the_hash_a_full_save_would(redis: Redis) -> None:
    """Only the changed fields are sent: the ones back at their default are gone too."""
    store = CallStore(redis, 600)
    before = CallSession(
        call_sid=SID, caller=MOBILE, tries=2, failures=2, notices=["voice.invalid_key"]
    )
    await store.create(before)
    recalled = store.recall(SID, 0)
    assert recalled is not None
    call = recalled.session
    call.state, call.step, call.tries, call.notices = State.account_entry, 1, 0, []
    assert await store.advance(0, recalled, call) is None

    stored = await redis.hgetall(f"call:{SID}")
    assert stored == {"c": "0", "g": "2"} | {
        name: str(value) for name, value in call.to_fields().items()
    }
    assert await store.load(SID) == call


async def test_a_session_with_a_sealed_secret_is_not_remembered(redis: Redis) -> None:
    store = CallStore(redis, 600)
    await store.create(CallSession(call_sid=SID, caller=MOBILE, sealed="sealed-secret"))
    assert store.recall(SID, 0) is None


async def test_an_ended_call_is_forgotten(redis: Redis) -> None:
    store = CallStore(redis, 600)
    await store.create(CallSession(call_sid=SID, caller=MOBILE))
    await store.end(SID)
    assert store.recall(SID, 0) is None


def test_the_claim_mark_and_the_version_are_no_field_of_the_session() -> None:
    assert not {"c", "g"} & set(_LONG)


def _dry_flow(services: Services, now: datetime) -> VoiceFlow:
    def nothing_outside() -> None:
        raise AssertionError("a dry flow made a service")

    return VoiceFlow(
        settings=services.settings,
        recovery=nothing_outside,  # type: ignore[arg-type]
        keyring=services.keyring,
        prompts=services.prompts,
        cases=nothing_outside,  # type: ignore[arg-type]
        schedule=Schedule.from_settings(
            services.settings.model_copy(update={"operator_hours": WORKING_HOURS})
        ),
        clock=lambda: now,
        dry=True,
    )


@pytest.mark.parametrize(
    ("state", "keys", "now"),
    [
        (State.main_menu, "0", OPEN_NOW),  # a transfer: a case
        (State.main_menu, "0", CLOSED_NOW),  # after hours: no case, but counted
        (State.account_confirm, "1", OPEN_NOW),  # an attempt starts
        (State.method_choice, "1", OPEN_NOW),  # a code SMS
        (State.method_choice, "2", OPEN_NOW),  # a code call
        (State.code_entry, "123456", OPEN_NOW),  # a code checked
    ],
)
async def test_a_dry_flow_stops_before_a_step_that_acts(
    gateway: Gateway, state: State, keys: str, now: datetime
) -> None:
    flow = _dry_flow(gateway.app.state.services, now)
    call = CallSession(
        call_sid=SID,
        caller=MOBILE,
        state=state,
        purpose="password",
        account=MOBILE_ONLY,
        attempt_id="a1",
    )
    counted = ESCALATIONS.labels(channel="voice", reason=EscalationReason.caller_request)
    before = counted._value.get()
    with pytest.raises(Unclaimed):
        await flow.handle(call, CallerInput(digits=keys))
    assert counted._value.get() == before


async def test_a_dry_flow_moves_through_the_menu(gateway: Gateway) -> None:
    flow = _dry_flow(gateway.app.state.services, OPEN_NOW)
    call = CallSession(call_sid=SID, caller=MOBILE)
    await flow.handle(call, CallerInput(digits="1"))
    assert call.state is State.account_entry
    await flow.handle(call, CallerInput(digits=MOBILE_ONLY + "#"))
    assert (call.state, call.account) == (State.account_confirm, MOBILE_ONLY)
    await flow.handle(call, CallerInput(digits="2"))
    assert (call.state, call.account) == (State.account_entry, None)


async def test_a_retried_move_answers_the_same(gateway: Gateway) -> None:
    call = await at_account_entry(gateway)
    path = action_of(call)
    first = await answer_at(call, path, Digits=MOBILE_ONLY + "#")
    again = await answer_at(call, path, Digits=MOBILE_ONLY + "#")
    assert first.text == again.text
