"""Rate limits in Redis (§6.4): each trips at its threshold, atomically, and answers politely.

Every test starts from generous limits and lowers only the one it is about, so a trip can only
come from that limit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import pytest
from _pytest.mark.structures import MarkDecorator
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from structlog.testing import capture_logs

from core.platform.container import Services
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.limits import LOG_NAMES, Check, Limit, RateLimiter
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
    seed_accounts,
)
from tests.ivr.test_webhooks import (
    STRANGER,
    at_account_confirm,
    at_method_choice,
    audit_events,
    fetch_whisper,
    ru,
    text,
)
from tests.support.twilio_driver import Call, Phone
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
HOTLINE = "+78005550100"
FIRST_MOBILE_OF_TWO = "+79037771230"

# An account that shares MOBILE with MOBILE_ONLY, and one whose only phone is abroad.
SHARED_PHONE = "1000000009"
ABROAD = "1000000044"
UK_MOBILE = "+447400123456"
EXTRA_ACCOUNTS_CSV = f"""account_number,login,full_name,phones,email
{SHARED_PHONE},ivanov.pp,Иванов Пётр Петрович,{MOBILE},
{ABROAD},sidorova.an,Сидорова Анна Николаевна,{UK_MOBILE},
"""

GENEROUS: dict[str, int] = {
    "rate_limit_caller_starts_per_hour": 1000,
    "rate_limit_account_sends_per_hour": 1000,
    "rate_limit_account_sends_per_day": 1000,
    "rate_limit_destination_sends_per_hour": 1000,
    "rate_limit_global_outbound_per_hour": 1000,
}


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings with generous limits, and the one a test is about lowered."""
    overrides: Mapping[str, int] = getattr(request, "param", {})
    return settings.model_copy(update={**GENEROUS, **overrides})


def limits(**values: int) -> MarkDecorator:
    """Run a test with these limits (the others stay generous)."""
    ids = ["-".join(f"{name.removeprefix('rate_limit_')}={n}" for name, n in values.items())]
    return pytest.mark.parametrize("settings", [values], indirect=True, ids=ids)


def sms_reply(key: str, language: Language = Language.ru, *, wait: int = 0) -> str:
    params = {"wait": PROMPTS.wait(wait, language)} if wait else {}
    return PROMPTS.text(key, language, hotline=HOTLINE, **params)


def code_messages(gateway: Gateway, number: str) -> int:
    return len([m for m in gateway.messenger.to(number) if m.purpose == "code"])


def assert_limit_transfer(call: Call, gateway: Gateway) -> None:
    """The polite answer to a limit: the apology, then the operator — not the error path."""
    assert ru("voice.limit_reached") in call.text, call.text
    assert ru("voice.error_apology") not in call.text
    assert call.verbs()[-1] == "Dial", call.verbs()
    number = call.twiml.find("Dial/Number")
    assert number is not None and number.text == gateway.settings.operator_number


async def ask_code(
    gateway: Gateway, account: str, *, method: str = "1", caller: str = STRANGER
) -> Call:
    """A new call that asks for a code for `account` by SMS (1) or by a call back (2)."""
    call = await at_method_choice(gateway, account, caller)
    await call.press(method)
    return call


async def rate_limited_total(gateway: Gateway, limit: Limit) -> float:
    response = await gateway.twilio.http.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        if family.name == "gateway_rate_limited":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"limit": limit.value}:
                    return sample.value
    raise AssertionError(f"no gateway_rate_limited sample for {limit}")


# -- the limiter itself, against the real Redis ---------------------------------------------


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """What the limiter logs (and no dependence on how an earlier test configured logging)."""
    with capture_logs() as captured:
        yield captured


@limits(rate_limit_destination_sends_per_hour=5)
async def test_twenty_concurrent_checks_let_exactly_the_limit_through(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    limiter = RateLimiter(redis, settings, Keyring(settings))
    check = Check(Limit.destination_sends, MOBILE)
    decisions = await asyncio.gather(*(limiter.acquire(check) for _ in range(20)))
    assert sum(decision.allowed for decision in decisions) == 5
    assert [d.tripped for d in decisions if not d.allowed] == [Limit.destination_sends] * 15
    assert await limiter.events(check) == 5
    assert [entry["event"] for entry in logs] == ["ratelimit.tripped"] * 15


@limits(rate_limit_destination_sends_per_hour=2, rate_limit_global_outbound_per_hour=3)
async def test_a_refused_event_counts_against_none_of_its_limits(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    limiter = RateLimiter(redis, settings, Keyring(settings))
    to_mobile = (Check(Limit.destination_sends, MOBILE), Check(Limit.global_outbound))
    to_landline = (Check(Limit.destination_sends, LANDLINE), Check(Limit.global_outbound))
    assert (await limiter.acquire(*to_mobile)).allowed
    assert (await limiter.acquire(*to_mobile)).allowed
    assert (await limiter.acquire(*to_mobile)).tripped is Limit.destination_sends
    # The refused send to MOBILE did not use the global budget: one more send still fits.
    assert await limiter.events(Check(Limit.global_outbound)) == 2
    assert (await limiter.acquire(*to_landline)).allowed
    assert (await limiter.acquire(*to_landline)).tripped is Limit.global_outbound
    assert await limiter.events(to_landline[0]) == 1


@limits(rate_limit_destination_sends_per_hour=2)
async def test_the_window_slides(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    """At most 2 in any hour: a fixed hour would let 2 more through right after its boundary."""
    now = [10_000.0]
    limiter = RateLimiter(redis, settings, Keyring(settings), clock=lambda: now[0])
    check = Check(Limit.destination_sends, MOBILE)

    async def at(seconds: float) -> bool:
        now[0] = 10_000.0 + seconds
        return (await limiter.acquire(check)).allowed

    assert await at(0)
    assert await at(3000)
    assert not await at(3599)
    assert await at(3601)  # the event at 0 has left the window
    assert not await at(3602)  # the one at 3000 has not
    assert not await at(6599)
    assert await at(6601)
    assert 0 < await redis.pttl(limiter.key(check)) <= 3600 * 1000


@limits(rate_limit_account_sends_per_hour=2, rate_limit_account_sends_per_day=3)
async def test_an_accounts_hour_and_day_share_one_log(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    now = [10_000.0]
    limiter = RateLimiter(redis, settings, Keyring(settings), clock=lambda: now[0])
    checks = (
        Check(Limit.account_sends_hour, MOBILE_ONLY),
        Check(Limit.account_sends_day, MOBILE_ONLY),
    )

    async def at(seconds: float) -> Limit | None:
        now[0] = 10_000.0 + seconds
        return (await limiter.acquire(*checks)).tripped

    assert await at(0) is None
    assert await at(10) is None
    assert await at(20) is Limit.account_sends_hour
    assert await at(3601) is None  # the hour has room again; the day has its third
    assert await at(7300) is Limit.account_sends_day
    assert await at(86_401) is None  # the event at 0 has left the day
    assert limiter.key(checks[0]) == limiter.key(checks[1])
    # One log: the events at 10, 3601 and 86401 s, each recorded once.
    assert await limiter.events(checks[0]) == 3
    assert 3600 * 1000 < await redis.pttl(limiter.key(checks[0])) <= 86_400 * 1000


@limits(rate_limit_destination_sends_per_hour=1)
async def test_a_released_event_frees_its_place(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    limiter = RateLimiter(redis, settings, Keyring(settings))
    check = Check(Limit.destination_sends, MOBILE)
    first = await limiter.acquire(check)
    assert first.allowed and not (await limiter.acquire(check)).allowed
    await limiter.release(first)
    assert (await limiter.acquire(check)).allowed


@limits(rate_limit_global_outbound_per_hour=1)
async def test_peeking_counts_nothing(
    settings: Settings, redis: Redis, logs: list[MutableMapping[str, Any]]
) -> None:
    limiter = RateLimiter(redis, settings, Keyring(settings))
    budget = Check(Limit.global_outbound)
    for _ in range(3):
        assert (await limiter.peek(budget)).allowed
    assert (await limiter.acquire(budget)).allowed
    assert (await limiter.peek(budget)).tripped is Limit.global_outbound


# -- per caller number ----------------------------------------------------------------------


@limits(rate_limit_caller_starts_per_hour=2)
async def test_caller_number_starts_trip_at_the_threshold_by_voice(gateway: Gateway) -> None:
    for _ in range(2):
        call = await ask_code(gateway, MOBILE_ONLY)
        assert ru("voice.code_sent") in call.text
    call = await at_account_confirm(gateway, MOBILE_ONLY, STRANGER)
    await call.press("1")
    assert_limit_transfer(call, gateway)
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_limit") in whisper
    assert code_messages(gateway, MOBILE) == 2
    events = await audit_events(gateway.settings)
    started = [detail for event, detail in events if event == "recovery.started"]
    assert [detail["limit"] for detail in started] == [None, None, "caller_starts"]

    # Another caller number is not held back.
    other = await ask_code(gateway, MOBILE_ONLY, caller=SECOND_MOBILE)
    assert ru("voice.code_sent") in other.text
    assert code_messages(gateway, MOBILE) == 3


@limits(rate_limit_caller_starts_per_hour=2)
async def test_caller_number_starts_trip_at_the_threshold_by_sms(gateway: Gateway) -> None:
    phone = Phone(gateway.twilio, MOBILE)
    for _ in range(2):
        # The code SMS is the owner's reply (§4).
        assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == [sms_reply("sms.reply_limited")]
    assert await phone.text(f"RESTORE {MOBILE_ONLY}") == [
        sms_reply("sms.reply_limited", Language.en)
    ]
    assert code_messages(gateway, MOBILE) == 2
    # The operator option the reply offers works, with the case attached.
    assert await phone.text("ОПЕРАТОР") == [sms_reply("sms.reply_callback", Language.ru)]


# -- per account ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"rate_limit_account_sends_per_hour": 3},
        {"rate_limit_account_sends_per_day": 3},
    ],
    indirect=True,
    ids=["hour", "day"],
)
async def test_account_sends_trip_at_the_threshold_and_sound_the_same_for_any_account(
    gateway: Gateway,
) -> None:
    heard: dict[str, list[list[str]]] = {}
    for account in (MOBILE_ONLY, UNKNOWN):
        heard[account] = []
        for _ in range(3):
            call = await ask_code(gateway, account)
            assert ru("voice.code_sent") in call.text
            heard[account].append(call.history)
        call = await ask_code(gateway, account, method="2")
        assert_limit_transfer(call, gateway)
        heard[account].append(call.history)
    spoken = {account: PROMPTS.digits(account, Language.ru) for account in heard}
    known, unknown = (
        [[line.replace(spoken[account], "<account>") for line in h] for h in heard[account]]
        for account in (MOBILE_ONLY, UNKNOWN)
    )
    assert known == unknown  # a limited answer tells nothing about the account
    assert code_messages(gateway, MOBILE) == 3
    assert gateway.messenger.to(MOBILE, "call") == []

    # Other accounts are not held back.
    call = await ask_code(gateway, TWO_MOBILES_EMAIL)
    assert ru("voice.code_sent") in call.text
    by_hour = gateway.settings.rate_limit_account_sends_per_hour == 3
    tripped = Limit.account_sends_hour if by_hour else Limit.account_sends_day
    # The unknown account's requests delivered nothing: they counted toward the requester's
    # limit for that account (same threshold, same words), not an account's own (§6.12).
    requester = Limit.requester_account_hour if by_hour else Limit.requester_account_day
    events = await audit_events(gateway.settings)
    limited = [detail for event, detail in events if event == "code.limited"]
    assert limited == [{"limit": tripped, "method": "call"}, {"limit": requester, "method": "call"}]


@limits(rate_limit_account_sends_per_hour=2)
async def test_account_limit_by_sms_is_the_limited_reply_not_an_error(gateway: Gateway) -> None:
    phone = Phone(gateway.twilio, MOBILE)
    stranger = Phone(gateway.twilio, STRANGER)
    requested = [sms_reply("sms.reply_requested")]
    # The code SMS is the owner's reply (§4).
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    # A stranger's request sends nothing, so it spends none of the account's limit (§6.12).
    for _ in range(2):
        assert await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == requested
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    # The resident meets the full limit: when it opens again, and the operator.
    limited = [sms_reply("sms.reply_limited_until", wait=3600)]
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == limited
    # A call to the phone on file would deliver a code: it counts, and the limit is full.
    assert await stranger.text("ЗВОНОК") == limited
    assert code_messages(gateway, MOBILE) == 2
    assert gateway.messenger.to(MOBILE, "call") == []


# -- per destination phone ------------------------------------------------------------------


@limits(rate_limit_destination_sends_per_hour=2)
async def test_destination_sends_trip_at_the_threshold_across_accounts(gateway: Gateway) -> None:
    await seed_accounts(gateway.settings, EXTRA_ACCOUNTS_CSV)
    # A code withheld from an opted-out phone goes nowhere: it does not count.
    phone = Phone(gateway.twilio, MOBILE)
    assert await phone.text("СТОП") == [sms_reply("sms.reply_stopped")]
    for _ in range(3):
        assert ru("voice.code_sent") in (await ask_code(gateway, MOBILE_ONLY)).text
    assert gateway.messenger.sent == []
    assert await phone.text("СТАРТ") == [sms_reply("sms.reply_started")]

    for account in (MOBILE_ONLY, SHARED_PHONE):
        call = await ask_code(gateway, account)
        assert ru("voice.code_sent") in call.text
    assert code_messages(gateway, MOBILE) == 2
    # The third code to the same phone, asked for a third account, is held back.
    call = await ask_code(gateway, SHARED_PHONE)
    assert_limit_transfer(call, gateway)
    assert code_messages(gateway, MOBILE) == 2

    # Other phones are not held back, and asking for an account without a mobile counts nothing.
    assert ru("voice.code_sent") in (await ask_code(gateway, TWO_MOBILES_EMAIL)).text
    assert ru("voice.code_sent") in (await ask_code(gateway, LANDLINE_ONLY)).text
    assert code_messages(gateway, FIRST_MOBILE_OF_TWO) == 1


# -- the global outbound budget -------------------------------------------------------------


@limits(rate_limit_global_outbound_per_hour=2, rate_limit_global_calls_per_hour=1)
async def test_global_budget_trips_counts_and_logs(gateway: Gateway) -> None:
    before = await rate_limited_total(gateway, Limit.global_outbound)
    assert ru("voice.code_sent") in (await ask_code(gateway, MOBILE_ONLY)).text
    assert ru("voice.code_sent") in (await ask_code(gateway, TWO_MOBILES_EMAIL)).text
    sent = list(gateway.messenger.sent)
    assert len(sent) == 2

    with capture_logs() as logs:
        known = await ask_code(gateway, LANDLINE_ONLY, caller=LANDLINE)
        # An account with nothing to send to is refused alike while the breaker is open.
        unknown = await ask_code(gateway, UNKNOWN)
        texted = await Phone(gateway.twilio, SECOND_MOBILE).text(f"RESTORE {TWO_MOBILES_EMAIL}")
    # The SMS breaker is no dead end (§6.17): the code by call is offered instead.
    for call in (known, unknown):
        assert ru("voice.sms_unavailable") in call.text
        assert ru("voice.method_choice") in call.text
    assert texted == [sms_reply("sms.reply_sms_unavailable", Language.en)]
    assert gateway.messenger.sent == sent
    assert await rate_limited_total(gateway, Limit.global_outbound) == before + 3
    breaker = [entry for entry in logs if entry["event"] == "ratelimit.global_budget_exhausted"]
    assert len(breaker) == 3
    assert all(entry["log_level"] == "error" for entry in breaker)
    assert all(entry["limit"] == "global_outbound" for entry in breaker)

    # The call still goes, on its own budget; once that is spent too, the operator.
    await known.press("2")
    assert ru("voice.call_arranged") in known.text
    await known.hang_up()  # the code call is placed once the caller hung up
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1
    await unknown.press("2")
    assert_limit_transfer(unknown, gateway)
    whisper = await fetch_whisper(gateway, unknown)
    assert ru("whisper.reason_limit") in whisper


@limits(rate_limit_account_sends_per_hour=1)
async def test_a_tripped_limit_logs_a_warning_with_masked_values(gateway: Gateway) -> None:
    before = await rate_limited_total(gateway, Limit.account_sends_hour)
    await ask_code(gateway, MOBILE_ONLY)
    with capture_logs() as logs:
        call = await ask_code(gateway, MOBILE_ONLY)
    assert_limit_transfer(call, gateway)
    assert await rate_limited_total(gateway, Limit.account_sends_hour) == before + 1
    tripped = [entry for entry in logs if entry["event"] == "ratelimit.tripped"]
    assert len(tripped) == 1
    assert tripped[0]["log_level"] == "warning"
    assert tripped[0]["limit"] == "account_sends_hour"
    assert tripped[0]["subject"].endswith(MOBILE_ONLY[-3:])
    for entry in logs:
        for value in entry.values():
            assert MOBILE_ONLY not in str(value)
            assert MOBILE.lstrip("+")[1:] not in str(value)


# -- countries outside the allowed list -----------------------------------------------------


@limits(rate_limit_global_outbound_per_hour=1)
async def test_a_phone_abroad_gets_nothing_and_uses_no_budget(gateway: Gateway) -> None:
    await seed_accounts(gateway.settings, EXTRA_ACCOUNTS_CSV)
    by_sms = await ask_code(gateway, ABROAD)
    by_call = await ask_code(gateway, ABROAD, method="2")
    # The same words as for any account; nothing went abroad.
    assert ru("voice.code_sent") in by_sms.text
    assert ru("voice.call_arranged") in by_call.text
    # A text from abroad gets no reply at all (§6.14, tests/security/test_sms_pumping.py).
    assert await Phone(gateway.twilio, UK_MOBILE).text(f"RESTORE {ABROAD}") == []
    assert gateway.messenger.sent == []
    # The refused sends did not use the budget of one: a code to Russia still goes.
    assert ru("voice.code_sent") in (await ask_code(gateway, MOBILE_ONLY)).text
    assert code_messages(gateway, MOBILE) == 1


# -- atomic through the whole app -----------------------------------------------------------


async def sweep(gateway: Gateway) -> None:
    """Send whatever concurrent requests left queued, as the app's periodic sweep would.

    The dispatcher's "pending" flag is process-wide: a request that queued a message can find
    it reset by another request's drain that ran before the first one committed, and then the
    row waits for the sweep. What the limit bounds is how many codes are queued at all.
    """
    services: Services = gateway.app.state.services
    await services.dispatcher.drain()


@limits(rate_limit_account_sends_per_hour=5)
async def test_twenty_concurrent_sms_requests_for_one_account_send_five_codes(
    gateway: Gateway,
) -> None:
    phone = Phone(gateway.twilio, MOBILE)
    replies = await asyncio.gather(*(phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") for _ in range(20)))
    await sweep(gateway)
    assert code_messages(gateway, MOBILE) == 5
    limited = sms_reply("sms.reply_limited_until", wait=3600)
    # Five owners' requests are answered by their code SMS (§4), the rest by the limit.
    assert sorted(replies) == sorted([[]] * 5 + [[limited]] * 15)


@limits(rate_limit_account_sends_per_hour=5)
async def test_twenty_concurrent_voice_requests_for_one_account_send_five_codes(
    gateway: Gateway,
) -> None:
    calls = [await at_method_choice(gateway, MOBILE_ONLY, STRANGER) for _ in range(20)]
    await asyncio.gather(*(call.press("1") for call in calls))
    await sweep(gateway)
    assert code_messages(gateway, MOBILE) == 5
    sent = [call for call in calls if ru("voice.code_sent") in call.text]
    limited = [call for call in calls if ru("voice.limit_reached") in call.text]
    assert (len(sent), len(limited)) == (5, 15)
    for call in limited:
        assert_limit_transfer(call, gateway)


# -- the keys -------------------------------------------------------------------------------


@limits(rate_limit_account_sends_per_hour=1)
async def test_limit_keys_hold_no_raw_numbers(gateway: Gateway, redis: Redis) -> None:
    await ask_code(gateway, MOBILE_ONLY)
    await ask_code(gateway, MOBILE_ONLY)  # limited
    await ask_code(gateway, LANDLINE_ONLY, method="2", caller=LANDLINE)
    await Phone(gateway.twilio, SECOND_MOBILE).text("ПОМОЩЬ")  # a reply outside a recovery
    await Phone(gateway.twilio, SECOND_MOBILE).text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
    await ask_code(gateway, UNKNOWN)  # delivers nothing: the requester's log
    keys = sorted(text(key) for key in await redis.keys("rate:*"))
    kinds = {key.split(":")[2] for key in keys}
    recovery_limits = set(Limit) - {
        Limit.signin_user,
        Limit.signin_address,
        # The operators' desk phone and the console's sends (§6.11, §6.15): not recoveries.
        Limit.desk_signin_caller,
        Limit.desk_signin_unrecognised,
        Limit.console_sends_operator,
        Limit.console_sends_account,
    }
    # The repeat shares count only a second code to one phone (test_abuse.py shows those).
    assert kinds == {LOG_NAMES[limit] for limit in recovery_limits} - {"g2", "gc2"}, keys
    # A log's name and a 16-hex-digit keyed reference: there is no room for a number.
    assert all(re.fullmatch(r"rate:\{rl\}:[a-z]+(:[0-9a-f]{16})?", key) for key in keys), keys
    for number in (MOBILE_ONLY, LANDLINE_ONLY, TWO_MOBILES_EMAIL, MOBILE, LANDLINE, SECOND_MOBILE):
        assert not any(number.lstrip("+")[-6:] in key for key in keys), (number, keys)
    limiter = RateLimiter(redis, gateway.settings, Keyring(gateway.settings))
    assert limiter.key(Check(Limit.sender_replies, SECOND_MOBILE)) in keys
    assert limiter.key(Check(Limit.account_sends_hour, MOBILE_ONLY)) in keys
    assert limiter.key(Check(Limit.destination_sends, MOBILE)) in keys


@limits(rate_limit_global_outbound_per_hour=1)
async def test_a_look_only_check_respects_a_budget_without_spending_it(
    settings: Settings, redis: Redis
) -> None:
    """A request that sends nothing must meet a spent budget like everyone, not spend it."""
    limiter = RateLimiter(redis, settings, Keyring(settings))
    budget = Check(Limit.global_outbound)
    for index in range(3):
        decision = await limiter.acquire(
            Check(Limit.requester_account_hour, f"1 +7912000000{index}"),
            Check(Limit.global_outbound, only_look=True),
        )
        assert decision.allowed
    assert await limiter.events(budget) == 0
    assert (await limiter.acquire(budget)).allowed
    refused = await limiter.acquire(
        Check(Limit.requester_account_hour, "1 +79120000009"),
        Check(Limit.global_outbound, only_look=True),
    )
    assert refused.tripped is Limit.global_outbound
