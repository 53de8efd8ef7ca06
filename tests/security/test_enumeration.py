"""§6.2: a known and an unknown account get the same answers, and the same timing.

The timing test runs the gateway the way production does, as a separate uvicorn process on
loopback, and measures what Twilio would: the time to the response of the step that sends the
code, for accounts with a mobile, with a landline only, and unknown, interleaved at random.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from core.platform.settings import Settings
from tests.conftest import (
    AUTH_TOKEN,
    LANDLINE_ONLY,
    MOBILE_ONLY,
    PUBLIC_BASE_URL,
    UNKNOWN,
    Gateway,
    seed_accounts,
)
from tests.support.twilio_driver import Call, Phone, Twilio

STRANGER = "+79990001122"
SAMPLES = 300


async def answers(gateway: Gateway, account: str) -> list[str]:
    """The exact documents a stranger gets from the main menu to the second code prompt."""
    call = gateway.call(caller=STRANGER)
    await call.start()
    documents = [call.raw]
    for keys in ("1", account + "#", "1", "1", "123"):
        await call.press(keys)
        documents.append(call.raw)
    return documents


async def test_answers_are_byte_identical(gateway: Gateway) -> None:
    known = await answers(gateway, MOBILE_ONLY)
    landline = await answers(gateway, LANDLINE_ONLY)
    unknown = await answers(gateway, UNKNOWN)
    # Only the read-back of the digits may differ (each caller hears the number they keyed).
    for index, (a, b, c) in enumerate(zip(known, landline, unknown, strict=True)):
        if index == 2:
            continue
        assert a == b == c, f"document {index} differs"
    sms = [
        await Phone(gateway.twilio, STRANGER).text(f"ВОССТАНОВИТЬ {account}")
        for account in (MOBILE_ONLY, LANDLINE_ONLY, UNKNOWN)
    ]
    assert sms[0] == sms[1] == sms[2]


def rank_sum_p_value(a: list[float], b: list[float]) -> float:
    """Two-sided Mann-Whitney U test (normal approximation, ties averaged)."""
    pooled = sorted([(value, 0) for value in a] + [(value, 1) for value in b])
    ranks = [0.0] * len(pooled)
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    rank_a = sum(rank for rank, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    n1, n2 = len(a), len(b)
    u = rank_a - n1 * (n1 + 1) / 2
    z = (u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return math.erfc(abs(z) / math.sqrt(2))


def test_rank_sum_sees_a_real_difference() -> None:
    rng = random.Random(1)
    same = [rng.gauss(10, 2) for _ in range(200)]
    other = [rng.gauss(10, 2) for _ in range(200)]
    shifted = [value + 1.0 for value in other]
    assert rank_sum_p_value(same, other) > 0.01
    assert rank_sum_p_value(same, shifted) < 1e-4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def served(settings: Settings, redis_url: str) -> AsyncIterator[Twilio]:
    """The gateway as its own uvicorn process on loopback, with limits out of the way."""
    await seed_accounts(settings)
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "GATEWAY_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "GATEWAY_MESSENGER": "outbox",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    for limit in (
        "CALLER_STARTS_PER_HOUR",
        "ACCOUNT_SENDS_PER_HOUR",
        "ACCOUNT_SENDS_PER_DAY",
        "DESTINATION_SENDS_PER_HOUR",
        "GLOBAL_OUTBOUND_PER_HOUR",
    ):
        env[f"GATEWAY_RATE_LIMIT_{limit}"] = "1000000"
    port = _free_port()
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "uvicorn", "gateway.app:create_app", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        env=env,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(200):
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            yield Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), timeout=10)


async def test_sending_a_code_takes_the_same_time_for_every_account(served: Twilio) -> None:
    rng = random.Random(20261124)
    accounts = {"mobile": MOBILE_ONLY, "landline": LANDLINE_ONLY, "unknown": UNKNOWN}
    timings: dict[str, list[float]] = {kind: [] for kind in accounts}
    for _ in range(SAMPLES):
        kind = rng.choice(list(accounts))
        call = Call(served, caller=STRANGER)
        await call.start()
        for keys in ("1", accounts[kind] + "#", "1"):
            await call.press(keys)
        started = time.perf_counter()
        await call.press("1")  # the step that sends the code (or nothing)
        timings[kind].append(time.perf_counter() - started)
    medians = {kind: round(statistics.median(v) * 1000, 2) for kind, v in timings.items()}
    print(f"median ms per kind: {medians}, samples: { {k: len(v) for k, v in timings.items()} }")
    for kind in ("landline", "unknown"):
        p = rank_sum_p_value(timings["mobile"], timings[kind])
        # Equal paths give a uniform p (a false alarm once in a thousand runs); a leak of even a
        # fraction of a millisecond at this sample size gives p far below it.
        assert p > 0.001, f"timing separates mobile from {kind}: p={p:.2e}, medians {medians}"
