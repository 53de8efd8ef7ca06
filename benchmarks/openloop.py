"""The open-loop load test of DESIGN §9: new calls at a constant rate, each pausing between
webhooks as long as its prompts last, latency counted from each request's scheduled time.

A call's webhook k is due at `start + offsets[k]`, whatever happened before: when the answer to
webhook k-1 comes late, webhook k goes at once and its latency still counts from when it was
due, so a slow server cannot slow the load down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.calls import STEPS, Call, Outbox
from benchmarks.client import Pool
from benchmarks.procs import CpuMeter, runqueue_wait_seconds

# Seconds from each webhook's answer to the caller's next webhook: the prompt the caller hears
# plus the keys they press. Estimated from the prompts of DESIGN §3 (greeting at most 10 s, the
# happy path at most 65 s of speech) without synthesising them: a fixed table.
PAUSES: dict[str, float] = {
    "voice": 10.0,  # greeting and main menu, then `1`
    "menu": 11.0,  # "enter the account number and #", then ten digits and #
    "account": 10.0,  # the number read back digit by digit, then `1` correct
    "confirm": 8.0,  # "1 by SMS, 2 by a call", then `1`
    "method": 15.0,  # "code sent, enter it", then reading the SMS and six keys
    "code": 25.0,  # the password spoken in groups, once; then the caller hangs up
}
CALL_SECONDS = sum(PAUSES.values())
SEND_STEPS = STEPS


def offsets(scale: float = 1.0) -> list[float]:
    """When each webhook of a call is due, seconds after its first, pauses times `scale`."""
    due, at = [0.0], 0.0
    for step in STEPS[:-1]:
        at += PAUSES[step] * scale
        due.append(at)
    return due


def call_starts(rate: float, seconds: float) -> list[float]:
    """Start times of new calls arriving at a constant `rate` per second for `seconds`."""
    return [i / rate for i in range(math.ceil(rate * seconds))]


def rate_for(concurrent_calls: float) -> float:
    """Calls per second that keep `concurrent_calls` calls going (Little's law, real pauses)."""
    return concurrent_calls / CALL_SECONDS


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Sample:
    """One webhook: its step, when it was due (seconds into the run) and its latency."""

    step: str
    due: float
    latency: float
    error: str | None = None


@dataclass
class TrialResult:
    """What one open-loop run measured in its steady-state window."""

    rate: float
    scale: float
    ramp: float
    window: float
    samples: list[Sample] = field(default_factory=list)
    sms_delays: list[float] = field(default_factory=list)
    calls_started: int = 0
    recoveries: int = 0
    client_cpu_s: float = 0.0
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    server_waited_s: float = 0.0

    def in_window(self) -> list[Sample]:
        return [s for s in self.samples if self.ramp <= s.due < self.ramp + self.window]

    def steps(self) -> dict[str, dict[str, float]]:
        """p50/p99/max and errors per step, over the window."""
        table: dict[str, dict[str, float]] = {}
        window = self.in_window()
        for step in STEPS:
            rows = [s for s in window if s.step == step]
            ok = [s.latency * 1000 for s in rows if s.error is None]
            table[step] = {
                "count": len(rows),
                "errors": sum(1 for s in rows if s.error is not None),
                "p50_ms": round(percentile(ok, 50), 2) if ok else math.nan,
                "p99_ms": round(percentile(ok, 99), 2) if ok else math.nan,
                "max_ms": round(max(ok), 2) if ok else math.nan,
            }
        return table

    def errors(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for sample in self.in_window():
            if sample.error is not None:
                kinds[sample.error] = kinds.get(sample.error, 0) + 1
        return kinds

    def meets(self, p99_ms: float, hash_ms: float) -> bool:
        """§9: every step's p99 within the target (the code step may add the hash), no error."""
        if self.errors():
            return False
        for step, row in self.steps().items():
            limit = p99_ms + (hash_ms if step == "code" else 0.0)
            if row["count"] and not row["p99_ms"] <= limit:
                return False
        return True

    def summary(self) -> dict[str, Any]:
        return {
            "calls_per_s": round(self.rate, 3),
            "concurrent_calls": round(self.rate * CALL_SECONDS),
            "pause_scale": self.scale,
            "ramp_s": round(self.ramp, 1),
            "window_s": round(self.window, 1),
            "calls_started": self.calls_started,
            "recoveries": self.recoveries,
            "webhooks_in_window": len(self.in_window()),
            "errors": self.errors(),
            "steps": self.steps(),
            "sms_delay_p99_ms": (
                round(percentile(self.sms_delays, 99) * 1000, 1) if self.sms_delays else None
            ),
            "client_cpu_share": round(self.client_cpu_s / self.wall_s, 3) if self.wall_s else 0,
            # The server's CPU use, and the share of the run its event loop was ready to run
            # but its core was busy with other processes (a shared machine's noise).
            "server_cpu_share": round(self.server_cpu_s / self.wall_s, 3) if self.wall_s else 0,
            "server_runqueue_wait_share": (
                round(self.server_waited_s / self.wall_s, 3) if self.wall_s else 0
            ),
        }


async def run_trial(
    pool: Pool,
    outbox: Outbox,
    new_call: Callable[[], Call],
    rate: float,
    *,
    scale: float,
    window: float,
    timeout: float = 15.0,  # noqa: ASYNC109 - Twilio's per-webhook timeout
    grace: float = 15.0,
    server: CpuMeter | None = None,
) -> TrialResult:
    """Calls arrive at `rate` for one call's length (the ramp) plus `window`; the figures are
    those of the webhooks due in the window, when `rate * call length` calls are under way."""
    due = offsets(scale)
    ramp = due[-1]
    result = TrialResult(rate=rate, scale=scale, ramp=ramp, window=window)
    end = ramp + window
    loop = asyncio.get_running_loop()
    started_at = loop.time() + 0.2
    cpu_0 = time.process_time()
    wall_0 = time.monotonic()
    server_0 = server.seconds() if server else 0.0
    waited_0 = runqueue_wait_seconds(server.root) if server else 0.0

    async def one_call(call: Call, start: float) -> None:
        answered_method = 0.0
        for k, step in enumerate(STEPS):
            at = start + due[k]
            if at >= end:
                return
            if step == "code":
                try:
                    call.code = await asyncio.wait_for(outbox.code_for(call.phone), timeout)
                except TimeoutError:
                    result.samples.append(Sample(step, at, timeout, "no code SMS"))
                    return
                seen = outbox.seen_at.get(call.phone, loop.time())
                result.sms_delays.append(max(0.0, seen - answered_method))
            data = call.request(step)
            wait = started_at + at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                status, body = await pool.request(data, timeout)
            except asyncio.CancelledError:
                # Still unanswered when the run ended: counted, as a timeout would be.
                result.samples.append(Sample(step, at, loop.time() - started_at - at, "unfinished"))
                raise
            except TimeoutError:
                result.samples.append(Sample(step, at, timeout, "timeout"))
                return
            except OSError as exc:
                result.samples.append(Sample(step, at, 0.0, type(exc).__name__))
                return
            latency = loop.time() - (started_at + at)
            problem = call.answer(step, status, body)
            result.samples.append(Sample(step, at, latency, problem))
            if problem is not None:
                return
            if step == "method":
                answered_method = loop.time()
            if step == "status" and outbox.got_password(call.phone):
                result.recoveries += 1

    tasks: list[asyncio.Task[None]] = []
    for start in call_starts(rate, end):
        wait = started_at + start - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one_call(new_call(), start)))
        result.calls_started += 1
    # Nothing due after the window is sent; what is still in flight after `grace` is counted
    # as unfinished (an overloaded server's backlog would otherwise hold the run for minutes).
    if tasks:
        await asyncio.wait(tasks, timeout=grace)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.client_cpu_s = time.process_time() - cpu_0
    result.wall_s = time.monotonic() - wall_0
    if server is not None:
        result.server_cpu_s = server.seconds() - server_0
        result.server_waited_s = runqueue_wait_seconds(server.root) - waited_0
    return result
