"""The benchmark's own machinery: open-loop schedule (no coordinated omission), CPU from /proc,
and the cheap HTTP client, against a tiny scripted server. No timing of the gateway here."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import openloop, procs
from benchmarks.calls import STEPS, Call
from benchmarks.client import Pool

GATHER = b'<Response><Gather action="/ivr/step?s=1"/></Response>'


def test_calls_arrive_at_a_constant_rate_and_pause_by_the_table() -> None:
    assert openloop.call_starts(4.0, 1.0) == [0.0, 0.25, 0.5, 0.75]
    due = openloop.offsets(scale=0.5)
    assert len(due) == len(STEPS)
    assert due[0] == 0.0
    assert due[-1] == pytest.approx(openloop.CALL_SECONDS * 0.5)
    # Little's law: 1,000 calls under way at the real pauses.
    assert openloop.rate_for(1000) * openloop.CALL_SECONDS == pytest.approx(1000)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert openloop.percentile(values, 50) == 50.0
    assert openloop.percentile(values, 99) == 99.0
    assert openloop.percentile([7.0], 99) == 7.0


class FakeOutbox:
    """The code of every call is 123456, already sent; every call got its password."""

    def __init__(self) -> None:
        self.seen_at: dict[str, float] = {}

    async def code_for(self, phone: str) -> str:
        return "123456"

    def got_password(self, phone: str) -> bool:
        return True


async def test_latency_counts_from_the_schedule_not_from_the_send() -> None:
    """The server stalls 0.6 s on its first request; webhooks due during the stall wait for a
    connection, and their latency counts from when they were due (no coordinated omission)."""
    stalled = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if not stalled.is_set():
                stalled.set()
                await asyncio.sleep(0.6)
            body = GATHER
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/xml\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool("127.0.0.1", port, limit=1)  # one connection: the stall blocks everyone
    numbers = iter(range(1000))
    try:
        result = await openloop.run_trial(
            pool,
            FakeOutbox(),  # type: ignore[arg-type]
            lambda: Call(next(numbers)),
            rate=20.0,
            scale=0.01,
            window=0.5,
            grace=5.0,
        )
    finally:
        pool.close()
        server.close()
    samples = result.samples
    assert samples and all(s.error is None for s in samples)
    # Calls started during the stall were due while the connection was held: each one's
    # latency includes its wait, so the early ones show most of the 0.6 s.
    first_voices = sorted((s for s in samples if s.step == "voice"), key=lambda s: s.due)[:4]
    assert first_voices[0].latency >= 0.5
    assert all(s.latency >= 0.6 - s.due - 0.05 for s in first_voices)
    # The first call's next webhook was due 0.1 s in, during the stall of its own first one: it
    # could only go after that answer, and its latency still counts from when it was due.
    first_menu = min((s for s in samples if s.step == "menu"), key=lambda s: s.due)
    assert first_menu.due == pytest.approx(0.1)
    assert first_menu.latency >= 0.4
    assert result.recoveries > 0
    assert result.steps()["voice"]["count"] > 0


def write_stat(proc: Path, pid: int, ppid: int, ticks: tuple[int, int, int, int]) -> None:
    utime, stime, cutime, cstime = ticks
    fields = ["S", str(ppid), *["0"] * 9, str(utime), str(stime), str(cutime), str(cstime)]
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (python (x)) " + " ".join(fields) + " 0 0\n")


def test_cpu_counts_the_tree_and_reaped_children_only(tmp_path: Path) -> None:
    write_stat(tmp_path, 10, 1, (100, 20, 5, 1))  # the server
    write_stat(tmp_path, 11, 10, (30, 3, 0, 0))  # its worker
    write_stat(tmp_path, 12, 11, (7, 0, 0, 0))  # a grandchild
    write_stat(tmp_path, 20, 1, (999, 999, 0, 0))  # the load generator: not counted
    assert sorted(procs.process_tree(10, tmp_path)) == [10, 11, 12]
    assert procs.cpu_ticks(procs.process_tree(10, tmp_path), tmp_path) == 126 + 33 + 7
    meter = procs.CpuMeter(10, tmp_path)
    assert meter.seconds() == pytest.approx(166 / procs.CLK_TCK)


def write_threads(proc: Path, pid: int, nanoseconds: dict[int, int]) -> None:
    for tid, ns in nanoseconds.items():
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "task" / str(tid) / "schedstat").write_text(f"{ns} 0 0\n")


def test_cpu_between_samples_is_counted_in_nanoseconds_while_the_threads_stay(
    tmp_path: Path,
) -> None:
    write_stat(tmp_path, 10, 1, (100, 20, 0, 0))
    write_threads(tmp_path, 10, {10: 1_000_000_000, 13: 500_000_000})
    meter = procs.CpuMeter(10, tmp_path)
    before = meter.sample()
    write_stat(tmp_path, 10, 1, (101, 20, 0, 0))
    write_threads(tmp_path, 10, {10: 1_003_250_000, 13: 500_100_000})
    # 3.35 ms by the scheduler, where the ticks say 10 ms.
    assert meter.sample().since(before) == pytest.approx(0.00335)
    # A thread gone: its count went with it, so the ticks decide.
    (tmp_path / "10" / "task" / "13" / "schedstat").unlink()
    (tmp_path / "10" / "task" / "13").rmdir()
    assert meter.sample().since(before) == pytest.approx(1 / procs.CLK_TCK)


def test_cpu_of_a_real_child_is_read_from_the_kernel() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.process_time() + 0.3\n"
            "while time.process_time() < end: pass\ninput()",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        meter = procs.CpuMeter(child.pid)
        for _ in range(200):
            if meter.seconds() >= 0.25:
                break
            os.sched_yield()
            time.sleep(0.05)
        assert meter.seconds() >= 0.25
        # The scheduler's count agrees with the ticks, to within a tick or two.
        start = procs.CpuSample(0.0, meter.sample().tasks, 0)
        assert meter.sample().since(start) == pytest.approx(meter.seconds(), abs=0.03)
    finally:
        child.communicate(b"\n", timeout=10)
