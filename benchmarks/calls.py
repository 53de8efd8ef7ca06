"""A simulated voice recovery, webhook by webhook, and the codes read from the gateway's outbox."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urljoin

from sqlalchemy import func, select

from benchmarks.client import signed_post
from core.delivery.outbox import list_outbox, readable_body
from core.models import OutboxMessage
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker
from core.platform.settings import Settings

AUTH_TOKEN = "bench-auth-token-" + "0123456789abcdef"
PUBLIC_BASE_URL = "https://hotline.bench.example"
HOTLINE = "+78005550100"
# The webhooks of one voice recovery, in order (DESIGN §3): greeting, `1` restore password,
# the account number and `#`, `1` correct, `1` code by SMS, the code, then the status callback.
STEPS = ("voice", "menu", "account", "confirm", "method", "code", "status")
MENU_STEPS = ("voice", "menu", "account")
ACTION = re.compile(rb'<Gather[^>]*\saction="([^"]+)"')
CODE = re.compile(r"\b(\d{6})\b")
PENDING = ("queued", "claimed", "sending")


def account_number(index: int) -> str:
    """The account of simulated caller `index`."""
    return str(2_000_000_000 + index)


def mobile(index: int) -> str:
    """The mobile on file for account `index` (a valid Russian mobile range)."""
    return f"+7912{index:07d}"


def accounts_csv(first: int, count: int) -> str:
    """The import file of accounts `first .. first + count - 1`, one mobile each."""
    lines = ["account_number,login,full_name,phones,email"]
    lines += [
        f"{account_number(i)},bench{i},Тестов Тест Тестович,{mobile(i)},"
        for i in range(first, first + count)
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Call:
    """One caller: builds each signed webhook once the previous answer told where to post it."""

    index: int
    call_sid: str = field(default_factory=lambda: "CA" + secrets.token_hex(16))
    path: str = "/ivr/voice"
    code: str = ""

    @property
    def phone(self) -> str:
        return mobile(self.index)

    def params(self, **extra: str) -> dict[str, str]:
        return {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": self.phone,
            "To": HOTLINE,
            **extra,
        }

    def request(self, step: str) -> bytes:
        """The signed bytes of this call's webhook for `step`."""
        if step == "voice":
            return signed_post(
                PUBLIC_BASE_URL, AUTH_TOKEN, "/ivr/voice", self.params(CallStatus="ringing")
            )
        if step == "status":
            return signed_post(
                PUBLIC_BASE_URL, AUTH_TOKEN, "/ivr/status", self.params(CallStatus="completed")
            )
        digits = {
            "menu": "1",
            "account": account_number(self.index) + "#",
            "confirm": "1",
            "method": "1",
            "code": self.code,
        }[step]
        return signed_post(PUBLIC_BASE_URL, AUTH_TOKEN, self.path, self.params(Digits=digits))

    def answer(self, step: str, status: int, body: bytes) -> str | None:
        """Take the answer to `step`; the problem with it, or None."""
        if step == "status":
            return None if status in (200, 204) else f"HTTP {status}"
        if status != 200:
            return f"HTTP {status}"
        if step == "code":
            return None
        match = ACTION.search(body)
        if match is None:
            return "no Gather action"
        self.path = urljoin(self.path, html.unescape(match.group(1).decode()))
        return None


class Outbox:
    """Reads what the gateway queued: codes by phone, and which phones got a password."""

    def __init__(self, settings: Settings) -> None:
        self.engine = create_engine(settings.database_url)
        self.sessionmaker = create_sessionmaker(self.engine)
        self.keyring = Keyring(settings)
        self.after_id = 0
        self.codes: dict[str, str] = {}
        self.seen_at: dict[str, float] = {}
        self.purposes: dict[str, list[str]] = defaultdict(list)
        self.waiters: dict[str, asyncio.Future[str]] = {}

    async def poll(self) -> int:
        """Read the rows added since the last poll; how many."""
        async with self.sessionmaker() as session:
            rows = await list_outbox(session, after_id=self.after_id)
        now = time.monotonic()
        for row in rows:
            self.after_id = max(self.after_id, row.id)
            self.purposes[row.to_number].append(str(row.purpose))
            if str(row.purpose) != "code":
                continue
            match = CODE.search(readable_body(row, self.keyring))
            if match:
                self.codes[row.to_number] = match.group(1)
                self.seen_at[row.to_number] = now
                waiter = self.waiters.pop(row.to_number, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(match.group(1))
        return len(rows)

    async def pending(self) -> int:
        """Rows not yet handed to the messenger (queued, claimed or sending)."""
        async with self.sessionmaker() as session:
            query = select(func.count()).where(OutboxMessage.status.in_(PENDING))
            return int(await session.scalar(query) or 0)

    async def code_for(self, phone: str) -> str:
        """The latest code sent to `phone`, once the poller has seen it."""
        if phone in self.codes:
            return self.codes.pop(phone)
        waiter = self.waiters.setdefault(phone, asyncio.get_running_loop().create_future())
        code = await waiter
        self.codes.pop(phone, None)
        return code

    def got_password(self, phone: str) -> bool:
        """Whether anything but a code went to `phone` (the password SMS)."""
        return any(purpose != "code" for purpose in self.purposes.get(phone, ()))

    async def run_poller(self, interval: float) -> None:
        """Poll until cancelled."""
        while True:
            with contextlib.suppress(Exception):
                await self.poll()
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await self.engine.dispose()
