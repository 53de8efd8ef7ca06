"""Server CPU per webhook, step by step, and Redis memory per held call.

N calls are brought up to a step, then only that step's N requests are measured: the server's
CPU (from /proc) before the first and after the last answer and after the sends they caused
have left (the outbox drained by the gateway's own dispatcher), divided by N.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from benchmarks.calls import Call, Outbox
from benchmarks.client import Pool
from benchmarks.procs import CpuMeter

SETTLE_SECONDS = 0.25  # a little more than the dispatcher's delay after a response (50 ms)


@dataclass
class StepCost:
    """CPU of one step over all the requests that measured it."""

    requests: int = 0
    cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    wall_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, other: StepCost) -> None:
        self.requests += other.requests
        self.cpu_s += other.cpu_s
        self.db_cpu_s += other.db_cpu_s
        self.wall_s += other.wall_s
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count

    @property
    def ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.requests if self.requests else float("nan")

    @property
    def db_ms_per_request(self) -> float:
        return self.db_cpu_s * 1000 / self.requests if self.requests else float("nan")


async def settle(meter: CpuMeter, outbox: Outbox | None, limit: float = 30.0) -> None:
    """Until the sends the requests caused have left and the server's CPU stands still."""
    await asyncio.sleep(SETTLE_SECONDS)
    deadline = time.monotonic() + limit
    while outbox is not None and time.monotonic() < deadline:
        if not await outbox.pending():
            break
        await asyncio.sleep(0.05)
    last = meter.seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = meter.seconds()
        if now == last:
            return
        last = now


async def send_all(
    pool: Pool, requests: Sequence[bytes], concurrency: int
) -> list[tuple[int, bytes] | str]:
    """Send the requests, `concurrency` at a time; each answer, or the error's name."""
    answers: list[tuple[int, bytes] | str] = [""] * len(requests)
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(requests):
            mine = position
            position += 1
            try:
                answers[mine] = await pool.request(requests[mine])
            except (OSError, TimeoutError) as exc:
                answers[mine] = type(exc).__name__

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def measure(
    pool: Pool,
    meter: CpuMeter,
    db_meter: CpuMeter | None,
    outbox: Outbox | None,
    requests: Sequence[bytes],
    concurrency: int,
) -> tuple[StepCost, list[tuple[int, bytes] | str]]:
    """Send a batch and read the server's CPU around it (and the database server's)."""
    await settle(meter, outbox)
    cpu_0 = meter.sample()
    db_0 = db_meter.sample() if db_meter else None
    wall_0 = time.monotonic()
    answers = await send_all(pool, requests, concurrency)
    wall = time.monotonic() - wall_0
    await settle(meter, outbox)
    cost = StepCost(
        requests=len(requests),
        cpu_s=meter.sample().since(cpu_0),
        db_cpu_s=db_meter.sample().since(db_0) if db_meter and db_0 else 0.0,
        wall_s=wall,
    )
    return cost, answers


async def run_step(
    pool: Pool,
    meter: CpuMeter,
    db_meter: CpuMeter | None,
    outbox: Outbox,
    calls: list[Call],
    step: str,
    concurrency: int,
) -> tuple[StepCost, list[Call]]:
    """One step of every call, measured; the calls that answered as expected."""
    if step == "code":
        for call in calls:
            call.code = outbox.codes.pop(call.phone, "")
    cost, answers = await measure(
        pool, meter, db_meter, outbox, [call.request(step) for call in calls], concurrency
    )
    survivors = []
    for call, answer in zip(calls, answers, strict=True):
        problem = answer if isinstance(answer, str) else call.answer(step, *answer)
        if problem:
            cost.errors[problem] = cost.errors.get(problem, 0) + 1
        else:
            survivors.append(call)
    if step == "method":
        await read_codes(outbox, survivors, cost)
    return cost, survivors


async def read_codes(outbox: Outbox, calls: list[Call], cost: StepCost) -> None:
    """Poll the outbox until every call's code SMS is there (or 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await outbox.poll()
        if all(call.phone in outbox.codes for call in calls):
            return
        await asyncio.sleep(0.1)
    missing = sum(1 for call in calls if call.phone not in outbox.codes)
    cost.errors["no code SMS"] = cost.errors.get("no code SMS", 0) + missing


async def dataset_bytes(redis: Redis) -> int:
    """`used_memory_dataset`: keys and values, without client buffers and other overhead."""
    info = await redis.info("memory")
    return int(info["used_memory_dataset"])


async def key_bytes_by_prefix(redis: Redis) -> dict[str, int]:
    """MEMORY USAGE of every key, summed by the key's prefix (up to the first colon)."""
    sizes: dict[str, int] = {}
    async for key in redis.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        prefix = name.split(":", 1)[0]
        sizes[prefix] = sizes.get(prefix, 0) + int(await redis.memory_usage(key) or 0)
    return sizes


def per_call(total: dict[str, int], calls: int) -> dict[str, Any]:
    return {key: round(value / max(calls, 1)) for key, value in sorted(total.items())}
