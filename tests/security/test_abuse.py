"""Abuse that used to work (issue 10): strangers locking residents out, a recovery that revokes a
password and delivers nothing, one attacker spending everyone's budget, races past the cap.

Each test drives the gateway through signed webhooks, or the recovery service on the real
Redis, and fails on the code before the fix (DESIGN §5, §6.12, §6.13, §6.14, §6.17).
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from core.platform.container import Services
from core.platform.db import create_sessionmaker, transaction
from core.platform.settings import Settings
from core.recovery.codes import CodeStore
from core.recovery.service import Channel, Purpose, VerifyOutcome
from ivr.session import CallStore
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
    seed_accounts,
)
from tests.ivr.test_webhooks import (
    SPOKEN_CODE,
    STRANGER,
    action_of,
    answer_at,
    at_code_entry,
    at_method_choice,
    audit_events,
    last_code,
    other_code,
    ru,
    says,
    spoken_digits,
)
from tests.security.test_rate_limits import (
    GENEROUS,
    PROMPTS,
    ask_code,
    assert_limit_transfer,
    code_messages,
    limits,
    sms_reply,
)
from tests.support.twilio_driver import Call, Phone
from voice_prompts import Language


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Generous limits, as in test_rate_limits.py, and the ones a test is about lowered."""
    return settings.model_copy(update={**GENEROUS, **getattr(request, "param", {})})


def password_messages(gateway: Gateway) -> list[str]:
    return [m.to for m in gateway.messenger.sent if m.purpose == "password"]


async def finish_by_voice(gateway: Gateway, account: str = MOBILE_ONLY) -> Call:
    """The resident, calling from the mobile on file, recovers the password."""
    call = await at_code_entry(gateway, account, caller=MOBILE)
    await call.press(last_code(gateway))
    assert ru("voice.secret_repeat") in call.text, call.text
    return call


# -- §6.12: a stranger cannot lock the resident out -----------------------------------------


async def test_a_stranger_texting_wrong_codes_does_not_lock_the_resident_out(
    gateway: Gateway,
) -> None:
    """Issue 10 item 2: 12 SMS from a number not on file used to refuse the resident for 24 h."""
    stranger = Phone(gateway.twilio, STRANGER)
    for _ in range(2):
        assert await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == [
            sms_reply("sms.reply_requested")
        ]
        for guess in range(5):
            await stranger.text(f"{100000 + guess}")
    assert code_messages(gateway, MOBILE) == 0
    await finish_by_voice(gateway)
    assert len(password_messages(gateway)) == 1


@limits(rate_limit_account_sends_per_hour=5, rate_limit_caller_starts_per_hour=1)
async def test_bare_requests_from_strangers_spend_none_of_the_accounts_limit(
    gateway: Gateway,
) -> None:
    """Five requests from five numbers not on file deliver nothing, so they count nothing."""
    for index in range(5):
        sender = Phone(gateway.twilio, f"+7916555000{index}")
        assert await sender.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == [
            sms_reply("sms.reply_requested")
        ]
    assert code_messages(gateway, MOBILE) == 0
    # The resident, by SMS from the mobile on file, still gets a code (as the reply, §4).
    assert await Phone(gateway.twilio, MOBILE).text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    assert code_messages(gateway, MOBILE) == 1


@limits(rate_limit_caller_starts_per_hour=2)
async def test_withheld_caller_ids_do_not_share_one_bucket(gateway: Gateway) -> None:
    """An attacker hiding their number no longer uses up every withheld caller's starts."""
    for _ in range(2):
        await at_method_choice(gateway, UNKNOWN, caller="anonymous")
    limited = await at_method_choice_or_transfer(gateway, UNKNOWN, "anonymous")
    assert_limit_transfer(limited, gateway)
    # Another withheld caller, asking about another account, is not held back.
    call = await at_method_choice(gateway, MOBILE_ONLY, caller="anonymous")
    await call.press("1")
    assert ru("voice.code_sent") in call.text
    assert code_messages(gateway, MOBILE) == 1


async def at_method_choice_or_transfer(gateway: Gateway, account: str, caller: str) -> Call:
    call = gateway.call(caller)
    await call.start()
    await call.press("1")
    await call.press(account + "#")
    await call.press("1")
    return call


async def test_wrong_guesses_against_an_undelivered_code_do_not_count(
    gateway: Gateway,
) -> None:
    """An account with no mobile gets no SMS code: guessing at it proves nothing (§6.12)."""
    for _ in range(4):
        call = await at_code_entry(gateway, LANDLINE_ONLY, caller=STRANGER)
        for guess in ("111111", "222222", "333333"):
            await call.press(guess)
        assert ru("voice.verification_capped") not in call.text
    # The resident, on the landline on file, gets the code by call and is not capped.
    call = await at_method_choice(gateway, LANDLINE_ONLY, caller=LANDLINE)
    await call.press("2")
    assert ru("voice.call_arranged") in call.text
    await call.hang_up()  # the code call is placed once the caller hung up
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1


@limits(rate_limit_account_sends_per_hour=50, rate_limit_destination_sends_per_hour=50)
async def test_a_full_cap_says_when_self_service_opens_again(gateway: Gateway) -> None:
    """Codes that did reach the phone on file count; the capped resident hears when it reopens."""
    cap = gateway.settings.failed_verifications_per_day
    wrong = 0
    call = await at_code_entry(gateway, caller=STRANGER)
    while wrong < cap:
        for _ in range(min(2, cap - wrong)):
            await call.press(other_code(last_code(gateway)))
            wrong += 1
        if wrong < cap:
            call = await at_code_entry(gateway, caller=STRANGER)
    assert ru("voice.verification_capped") in call.text
    reopens = ru("voice.self_service_reopens", wait=PROMPTS.wait(24 * 3600, Language.ru))
    assert reopens in call.text, call.text
    assert "24 часа" in reopens
    assert call.verbs()[-1] in ("Dial", "Enqueue")

    # The resident asking by SMS hears the same, in the reply.
    reply = await Phone(gateway.twilio, MOBILE).text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    assert reply == [sms_reply("sms.reply_capped", wait=24 * 3600)]


# -- §6.13: nothing revoked unless the new password reaches the resident --------------------


async def test_a_code_heard_on_the_phone_on_file_cannot_finish_a_strangers_thread(
    gateway: Gateway,
) -> None:
    """Issue 10 item 3: the stranger's thread used to revoke the password and deliver nothing."""
    stranger = Phone(gateway.twilio, STRANGER)
    await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    assert await stranger.text("ЗВОНОК") == [sms_reply("sms.reply_call_arranged")]
    placed = gateway.messenger.to(MOBILE, "call")
    assert len(placed) == 1
    # The resident answers the call on the phone on file and hears the code...
    callback = Call(gateway.twilio, caller=gateway.settings.hotline_number, called=MOBILE)
    await callback.start(placed[0].url.removeprefix(gateway.settings.public_base_url))
    await callback.press("5")
    spoken = SPOKEN_CODE.search(callback.text)
    assert spoken, callback.text
    code = spoken_digits(spoken.group(1))
    # ...which the stranger learns and texts back: refused, nothing changed, how to go on.
    assert await stranger.text(code) == [sms_reply("sms.reply_wrong_phone")]
    events = [event for event, _ in await audit_events(gateway.settings)]
    assert "recovery.completed" not in events
    assert password_messages(gateway) == []
    assert [m for m in gateway.messenger.sent if m.purpose == "notice"] == []
    # The code still works in the call where it was spoken: the password is read out there.
    await callback.press(code)
    assert ru("voice.secret_repeat") in callback.text, callback.text


def failures_key(services: Services) -> str:
    return f"fails:{services.keyring.reference(MOBILE_ONLY)}"


async def test_a_recovery_that_cannot_reach_the_resident_changes_nothing(
    gateway: Gateway,
) -> None:
    """complete() itself refuses: not spoken, and no mobile on file to text (§6.13)."""
    services: Services = gateway.app.state.services
    async with transaction(create_sessionmaker(services.engine)) as session:
        recovery = services.recovery(session)
        attempt = await recovery.start(
            account_number=LANDLINE_ONLY,
            purpose=Purpose.password,
            channel=Channel.sms,
            session_ref="SM" + "0" * 32,
            language=Language.ru,
            caller=STRANGER,
        )
        done = await recovery.complete(attempt, "SM" + "0" * 32, spoken=False)
        assert done is None
        # Texting to a number that is not a mobile on file is no way around it either.
        attempt = await recovery.start(
            account_number=MOBILE_ONLY,
            purpose=Purpose.password,
            channel=Channel.sms,
            session_ref="SM" + "1" * 32,
            language=Language.ru,
            caller=STRANGER,
        )
        assert await recovery.complete(attempt, "x", spoken=False, deliver_to=STRANGER) is None
    events = [event for event, _ in await audit_events(gateway.settings)]
    assert events.count("recovery.undeliverable") == 2
    assert "recovery.completed" not in events
    assert gateway.messenger.sent == []


# -- §6.17: one attacker cannot spend the budget for everyone -------------------------------

ATTACKER_ACCOUNTS = [f"20000000{index:02d}" for index in range(2)]
ATTACKER_PHONES = [f"+7902{index}000001" for index in range(2)]


@limits(rate_limit_global_outbound_per_hour=10, rate_limit_global_reserve_percent=30)
async def test_one_attacker_cannot_spend_the_budget_for_everyone(gateway: Gateway) -> None:
    rows = "\n".join(
        f"{account},x{account},Житель,{phone},"
        for account, phone in zip(ATTACKER_ACCOUNTS, ATTACKER_PHONES, strict=True)
    )
    await seed_accounts(gateway.settings, f"account_number,login,full_name,phones,email\n{rows}\n")
    # Ten codes to two phones: 2 first codes, then repeats, which share only 70 % of the budget.
    outcomes = []
    for round_ in range(5):
        for account in ATTACKER_ACCOUNTS:
            call = await ask_code(gateway, account, caller=f"+7916444{round_:02d}{account[-2:]}")
            outcomes.append(ru("voice.code_sent") in call.text)
    assert outcomes.count(True) == 9
    # A resident whose phone had no code in the last hour still gets one.
    call = await ask_code(gateway, MOBILE_ONLY)
    assert ru("voice.code_sent") in call.text
    assert code_messages(gateway, MOBILE) == 1
    # Now the whole budget is spent: the next resident is offered the call, not a dead end.
    call = await ask_code(gateway, TWO_MOBILES_EMAIL)
    assert ru("voice.sms_unavailable") in call.text
    assert ru("voice.method_choice") in call.text


# -- §6.14: codes to one number range -------------------------------------------------------


@limits(rate_limit_prefix_sends_per_hour=2)
async def test_codes_to_one_number_range_are_slowed(gateway: Gateway) -> None:
    accounts = [f"30000000{index:02d}" for index in range(4)]
    phones = ["+79161230001", "+79161230002", "+79161230003", "+79161240004"]
    rows = "\n".join(
        f"{account},y{account},Житель,{phone},"
        for account, phone in zip(accounts, phones, strict=True)
    )
    await seed_accounts(gateway.settings, f"account_number,login,full_name,phones,email\n{rows}\n")
    heard = [(await ask_code(gateway, account)).text for account in accounts]
    assert [ru("voice.code_sent") in text for text in heard] == [True, True, False, True]
    assert ru("voice.limit_reached") in heard[2]
    events = await audit_events(gateway.settings)
    assert [d["limit"] for e, d in events if e == "code.limited"] == ["prefix_sends"]


# -- §5: the cap, the comparison and the count are one step ---------------------------------


async def test_concurrent_guesses_never_pass_the_cap(gateway: Gateway, redis: Redis) -> None:
    """Issue 10 item 7: 25 concurrent wrong guesses got 14-15 checks against a cap of 10."""
    services: Services = gateway.app.state.services
    cap = gateway.settings.failed_verifications_per_day
    sessionmaker = create_sessionmaker(services.engine)
    attempts = []
    async with transaction(sessionmaker) as session:
        recovery = services.recovery(session)
        for index in range(6):
            attempt = await recovery.start(
                account_number=MOBILE_ONLY,
                purpose=Purpose.password,
                channel=Channel.voice,
                session_ref=f"CA{index:032d}",
                language=Language.ru,
                caller=MOBILE,
            )
            attempts.append((attempt, await recovery.issue_spoken_code(attempt, "CA")))
    guessers, (last, last_code_) = attempts[:5], attempts[5]
    await asyncio.gather(*(redis.ping() for _ in range(25)))

    async def guess(attempt_index: int) -> VerifyOutcome:
        attempt, code = guessers[attempt_index % 5]
        async with transaction(sessionmaker) as session:
            verified = await services.recovery(session).verify(attempt, other_code(code), "CA")
            return verified.outcome

    outcomes = await asyncio.gather(*(guess(index) for index in range(25)))
    failures = int(await redis.get(failures_key(services)) or 0)
    assert failures == cap, outcomes
    assert outcomes.count(VerifyOutcome.wrong) == cap - 1
    # The correct code of an attempt opened before the cap is refused once it is full.
    async with transaction(sessionmaker) as session:
        verified = await services.recovery(session).verify(last, last_code_, "CA")
    assert verified.outcome is VerifyOutcome.capped


async def test_the_losers_of_a_correct_code_race_do_not_count_as_failures(
    gateway: Gateway, redis: Redis
) -> None:
    """20 concurrent correct submissions: one wins, and the 19 others cost the account nothing."""
    services: Services = gateway.app.state.services
    sessionmaker = create_sessionmaker(services.engine)
    async with transaction(sessionmaker) as session:
        recovery = services.recovery(session)
        attempt = await recovery.start(
            account_number=MOBILE_ONLY,
            purpose=Purpose.password,
            channel=Channel.voice,
            session_ref="CA" + "2" * 32,
            language=Language.ru,
            caller=MOBILE,
        )
        code = await recovery.issue_spoken_code(attempt, "CA")
    await asyncio.gather(*(redis.ping() for _ in range(20)))

    async def submit() -> VerifyOutcome:
        async with transaction(sessionmaker) as session:
            return (await services.recovery(session).verify(attempt, code, "CA")).outcome

    outcomes = await asyncio.gather(*(submit() for _ in range(20)))
    assert outcomes.count(VerifyOutcome.accepted) == 1
    assert await redis.get(failures_key(services)) is None


# -- §6.6: copies of one step arriving together ---------------------------------------------


async def test_copies_of_a_step_arriving_together_eat_one_try(
    gateway: Gateway, redis: Redis
) -> None:
    """Issue 10 item 10: replays sent one after another hid a step claimed more than once."""
    call = await at_code_entry(gateway)
    code = last_code(gateway)
    path = action_of(call)
    await asyncio.gather(*(redis.ping() for _ in range(5)))
    replies = await asyncio.gather(
        *(answer_at(call, path, Digits=other_code(code)) for _ in range(5))
    )
    # One copy acted; the others re-render the call as it stands (before or after that one).
    assert any(ru("voice.code_wrong") in says(reply.text) for reply in replies)
    services: Services = gateway.app.state.services
    assert int(await redis.get(failures_key(services)) or 0) == 1
    assert await redis.hget(CodeStore.key(await attempt_of(call, redis)), "w") in ("1", b"1")
    # The call moved on by exactly one step, and the right code is still good there.
    step = int(path.rsplit("=", 1)[1])
    reply = await answer_at(call, path.replace(f"s={step}", f"s={step + 1}"), Digits=code)
    assert ru("voice.secret_repeat") in says(reply.text), reply.text


async def attempt_of(call: Call, redis: Redis) -> str:
    session = await CallStore(redis, 3600).load(call.call_sid)
    assert session is not None and session.attempt_id
    return session.attempt_id


@limits(rate_limit_global_outbound_per_hour=2)
async def test_requests_that_send_nothing_spend_none_of_the_budget(gateway: Gateway) -> None:
    """§6.17: asking for unknown accounts, however often, leaves the budget to residents."""
    for index in range(5):
        call = await ask_code(gateway, f"19999999{index:02d}", caller=f"+7916333000{index}")
        assert ru("voice.code_sent") in call.text
    for account in (MOBILE_ONLY, TWO_MOBILES_EMAIL):
        assert ru("voice.code_sent") in (await ask_code(gateway, account)).text
    assert len([m for m in gateway.messenger.sent if m.purpose == "code"]) == 2
