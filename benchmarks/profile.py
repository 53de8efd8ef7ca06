"""Where the gateway's CPU goes: a py-spy profile (collapsed stacks) summed by kind of work.

    uv run python -m benchmarks.run --quick --profile benchmarks/results/profile   # records
    uv run python -m benchmarks.profile benchmarks/results/profile/*.txt [--top 25]

Each sample is charged to the innermost frame that names a kind of work below (so SQLAlchemy
called from the recovery service counts as the database, not as the service), and the top
functions by own and by inclusive samples are listed.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# Innermost match wins; the order only breaks ties inside one frame.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("argon2id hash", ("argon2",)),
    ("signature check", ("request_validator", "twilio_security", "hmac")),
    ("sealing (AES-GCM, keyring)", ("core/platform/crypto", "cryptography")),
    ("SQL: sqlite driver", ("sqlite3", "aiosqlite")),
    ("SQL: asyncpg driver", ("asyncpg",)),
    ("SQL: SQLAlchemy (ORM, compile)", ("sqlalchemy",)),
    ("Redis client", ("redis/",)),
    ("TwiML rendering", ("ivr/twiml", "ivr/screens", "xml/etree", "voice_prompts")),
    ("logging", ("structlog", "logging/")),
    ("metrics", ("prometheus_client",)),
    ("form parsing", ("multipart", "urllib/parse", "parse_form")),
    ("pydantic", ("pydantic",)),
    ("audit chain", ("core/audit/log",)),
    ("outbox dispatcher", ("core/delivery/dispatcher", "core/delivery/outbox")),
    ("FastAPI / Starlette routing and deps", ("fastapi/", "starlette/")),
    ("uvicorn / HTTP / event loop", ("uvicorn", "httptools", "asyncio", "uvloop", "selectors")),
)


# Leaves that wait rather than work: py-spy's own idle detection did not drop them here (the
# target is paused under ptrace while sampled), so they are dropped by name: aiosqlite's worker
# waiting for its next statement, an idle pool thread, and the event loop in epoll (uvloop's
# run_forever is C: its wait shows as the Python frame that called it).
IDLE_LEAVES = (
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "_worker (concurrent/futures/thread.py:81)",
    "Runner.run (asyncio/runners.py:118)",
)


def read(path: Path) -> list[tuple[list[str], int]]:
    """The working stacks (outermost first) and their sample counts; idle waits left out."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            if frames[-1] not in IDLE_LEAVES:
                stacks.append((frames, int(count)))
    return stacks


def kind_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        for kind, needles in KINDS:
            if any(needle in frame for needle in needles):
                return kind
    return "other (gateway code)"


def summarise(path: Path, top: int = 20) -> dict[str, list[tuple[str, float]]]:
    """Shares (percent of samples) by kind, and the top functions by own and inclusive time."""
    stacks = read(path)
    total = sum(count for _, count in stacks) or 1
    kinds: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks:
        kinds[kind_of(stack)] += count
        own[stack[-1]] += count
        for frame in set(stack):
            inclusive[frame] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, round(100 * value / total, 1)) for name, value in counter.most_common(n)]

    return {
        "by_kind": shares(kinds, len(KINDS) + 1),
        "own": shares(own, top),
        "inclusive": shares(inclusive, top),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile")
    parser.add_argument("paths", type=Path, nargs="+", help="py-spy raw files (one per step)")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.paths:
        print(f"=== {path}")
        for section, rows in summarise(path, args.top).items():
            print(f"--- {section} (% of samples)")
            for name, share in rows:
                print(f"{share:6.1f}  {name}")


if __name__ == "__main__":
    main()
