"""One-time codes on the real Redis: format, HMAC-only storage, single use, limits, atomicity (§5)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.codes import CodeCheck, CodeStore

SIX_DIGITS = re.compile(r"\d{6}")


@pytest.fixture
def store(redis: Redis, settings: Settings) -> CodeStore:
    return CodeStore(redis, settings, Keyring(settings))


FAILS = "fails:test-account"


async def check(store: CodeStore, attempt_id: str, code: str) -> CodeCheck:
    return (await store.check(attempt_id, code, FAILS)).result


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def everything(redis: Redis) -> str:
    """Every key and value in Redis, as one string to search."""
    parts: list[str] = []
    for key in await redis.keys("*"):
        parts.append(text(key))
        kind = text(await redis.type(key))
        if kind == "hash":
            stored = await redis.hgetall(key)
            parts += [f"{text(k)}={text(v)}" for k, v in stored.items()]
        elif kind == "string":
            parts.append(text(await redis.get(key)))
    return "\n".join(parts)


async def test_codes_are_six_random_digits(store: CodeStore) -> None:
    codes = [await store.issue(f"attempt-{i}", delivered=True) for i in range(50)]
    assert all(SIX_DIGITS.fullmatch(code) for code in codes), codes
    assert len(set(codes)) > 40


async def test_code_is_stored_only_as_an_hmac(
    store: CodeStore, redis: Redis, settings: Settings
) -> None:
    code = await store.issue("attempt-a", delivered=True)
    dump = await everything(redis)
    assert CodeStore.key("attempt-a") in dump
    assert code not in dump
    stored = [text(value) for value in (await redis.hgetall(CodeStore.key("attempt-a"))).values()]
    # 128 bits of the HMAC-SHA256, as hex.
    digests = [value for value in stored if re.fullmatch(r"[0-9a-f]{32}", value)]
    assert len(digests) == 1
    assert digests[0] == Keyring(settings).keyed_hash("code", f"attempt-a:{code}")[:32]
    # Keyed: the same code under another server key hashes differently, so the stored value
    # cannot be checked offline without the key.
    other_key = SecretStr("another-secret-key-" + "x" * 20)
    other = Keyring(settings.model_copy(update={"secret_key": other_key}))
    assert other.keyed_hash("code", f"attempt-a:{code}")[:32] not in stored


async def test_right_code_is_accepted_once(store: CodeStore) -> None:
    code = await store.issue("attempt-a", delivered=True)
    assert await check(store, "attempt-a", code) is CodeCheck.accepted
    assert await check(store, "attempt-a", code) is not CodeCheck.accepted


async def test_code_is_bound_to_its_attempt(store: CodeStore) -> None:
    code = await store.issue("attempt-a", delivered=True)
    await store.issue("attempt-b", delivered=True)
    assert await check(store, "attempt-c", code) is CodeCheck.missing
    other = await check(store, "attempt-b", code)
    assert other is not CodeCheck.accepted
    assert await check(store, "attempt-a", code) is CodeCheck.accepted


async def test_four_wrong_entries_still_allow_the_right_one(
    store: CodeStore, settings: Settings
) -> None:
    code = await store.issue("attempt-a", delivered=True)
    for _ in range(settings.code_max_wrong - 1):
        assert await check(store, "attempt-a", wrong(code)) is CodeCheck.wrong
    assert await check(store, "attempt-a", code) is CodeCheck.accepted


async def test_fifth_wrong_entry_invalidates_the_code(store: CodeStore, settings: Settings) -> None:
    assert settings.code_max_wrong == 5
    code = await store.issue("attempt-a", delivered=True)
    results = [await check(store, "attempt-a", wrong(code)) for _ in range(5)]
    assert results == [CodeCheck.wrong] * 4 + [CodeCheck.exhausted]
    assert await check(store, "attempt-a", code) is not CodeCheck.accepted


@pytest.mark.parametrize("malformed", ["", "12345", "1234567", "12345a", "<>&\"'", "１２３４５６"])
async def test_malformed_entries_never_match_and_count_as_wrong(
    store: CodeStore, malformed: str
) -> None:
    code = await store.issue("attempt-a", delivered=True)
    for _ in range(4):
        assert await check(store, "attempt-a", malformed) is CodeCheck.wrong
    assert await check(store, "attempt-a", malformed) is CodeCheck.exhausted
    assert await check(store, "attempt-a", code) is not CodeCheck.accepted


async def test_concurrent_correct_submissions_accept_exactly_one(
    store: CodeStore, redis: Redis
) -> None:
    code = await store.issue("attempt-a", delivered=True)
    # Open 20 connections first, so the submissions really run side by side.
    await asyncio.gather(*(redis.ping() for _ in range(20)))
    results = await asyncio.gather(*(check(store, "attempt-a", code) for _ in range(20)))
    assert results.count(CodeCheck.accepted) == 1, results


async def test_concurrent_wrong_submissions_are_all_counted(store: CodeStore) -> None:
    code = await store.issue("attempt-a", delivered=True)
    results = await asyncio.gather(*(check(store, "attempt-a", wrong(code)) for _ in range(20)))
    assert results.count(CodeCheck.wrong) == 4
    assert results.count(CodeCheck.exhausted) == 1
    assert await check(store, "attempt-a", code) is not CodeCheck.accepted


async def test_code_expires_within_the_configured_time(
    store: CodeStore, redis: Redis, settings: Settings
) -> None:
    assert settings.code_ttl_seconds <= 600
    await store.issue("attempt-a", delivered=True)
    ttl = await redis.ttl(CodeStore.key("attempt-a"))
    assert 0 < ttl <= settings.code_ttl_seconds


async def test_short_ttl_is_honoured(redis: Redis, settings: Settings) -> None:
    short = settings.model_copy(update={"code_ttl_seconds": 30})
    store = CodeStore(redis, short, Keyring(short))
    await store.issue("attempt-a", delivered=True)
    assert 0 < await redis.ttl(CodeStore.key("attempt-a")) <= 30


async def test_expired_code_is_missing(store: CodeStore, redis: Redis) -> None:
    code = await store.issue("attempt-a", delivered=True)
    await redis.delete(CodeStore.key("attempt-a"))  # what the TTL does
    assert await check(store, "attempt-a", code) is CodeCheck.missing


async def test_issuing_again_replaces_the_old_code(store: CodeStore) -> None:
    old = await store.issue("attempt-a", delivered=True)
    new = await store.issue("attempt-a", delivered=True)
    while new == old:
        new = await store.issue("attempt-a", delivered=True)
    assert await check(store, "attempt-a", old) is CodeCheck.wrong
    assert await check(store, "attempt-a", new) is CodeCheck.accepted


async def test_issuing_again_resets_the_wrong_count(store: CodeStore) -> None:
    code = await store.issue("attempt-a", delivered=True)
    for _ in range(4):
        await check(store, "attempt-a", wrong(code))
    code = await store.issue("attempt-a", delivered=True)
    for _ in range(4):
        assert await check(store, "attempt-a", wrong(code)) is CodeCheck.wrong
    assert await check(store, "attempt-a", code) is CodeCheck.accepted


async def test_discard_invalidates(store: CodeStore) -> None:
    code = await store.issue("attempt-a", delivered=True)
    await store.discard("attempt-a")
    assert await check(store, "attempt-a", code) is CodeCheck.missing


async def test_a_code_lives_no_longer_than_its_ttl_inside_a_longer_attempt(
    store: CodeStore, redis: Redis, settings: Settings
) -> None:
    """The attempt's hash outlives its code (core/recovery/codes.py): the code's own expiry holds."""
    await store.open("attempt-a", ["record"], settings.code_ttl_seconds + 600)
    code = await store.issue("attempt-a", delivered=True)
    expires = int(await redis.hget(CodeStore.key("attempt-a"), "e") or 0)
    assert 0 < expires - time.time() <= settings.code_ttl_seconds + 1
    await redis.hset(CodeStore.key("attempt-a"), "e", int(time.time()))  # the time has come
    assert await check(store, "attempt-a", code) is CodeCheck.missing
    assert await store.record("attempt-a") == ["record"]  # the attempt itself lives on
    assert not await redis.hexists(CodeStore.key("attempt-a"), "h")


async def test_a_cool_down_runs_once_per_method_until_ended(store: CodeStore, redis: Redis) -> None:
    await store.open("attempt-a", ["record"], 60)
    assert await store.cool_down("attempt-a", "sms", 30)
    assert not await store.cool_down("attempt-a", "sms", 30)
    assert await store.cool_down("attempt-a", "call", 30)
    await store.end_cool_down("attempt-a", "sms")
    assert await store.cool_down("attempt-a", "sms", 30)
    # Past its end (Redis's clock), a cool-down no longer holds.
    await redis.hset(CodeStore.key("attempt-a"), "ksms", int(time.time()) - 1)
    assert await store.cool_down("attempt-a", "sms", 30)
    concurrent = await asyncio.gather(*(store.cool_down("attempt-b", "sms", 30) for _ in range(20)))
    assert concurrent.count(True) == 1
    assert 0 < await redis.ttl(CodeStore.key("attempt-b")) <= 30


async def test_an_attempt_is_one_key_with_its_code_and_cool_down(
    store: CodeStore, redis: Redis
) -> None:
    """DESIGN §9 (≤ 1 KiB a call): the record, the code and the cool-down share one hash."""
    await store.open("attempt-a", ["2000000001", "password", "voice", "CA" + "0" * 32], 1200)
    await store.cool_down("attempt-a", "sms", 30)
    await store.issue("attempt-a", delivered=True)
    assert [text(key) for key in await redis.keys("*")] == [CodeStore.key("attempt-a")]
    assert text(await redis.object("encoding", CodeStore.key("attempt-a"))) == "listpack"
    await store.close("attempt-a")
    assert await redis.keys("*") == []
