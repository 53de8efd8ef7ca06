"""A real SMTP server (aiosmtpd) on 127.0.0.1 for the e-mail tests: it keeps what arrives.

Replies can be scripted per stage: `rcpt_replies` / `data_replies` are popped one per message
("451 ..." defers, "550 ..." refuses, None accepts); `drop_after_data` closes the connection
after the message was received, without a reply (the ambiguous case).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.support.servers import free_port

WAIT_SECONDS = 10.0


@dataclass
class Received:
    """One message as the server got it."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def text(self) -> str:
        body = self.message.get_body(("plain",))
        assert body is not None
        return str(body.get_content())


@dataclass
class Handler:
    """aiosmtpd's handler hooks; runs in the server's own thread."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: list[str | None] = field(default_factory=list)
    data_replies: list[str | None] = field(default_factory=list)
    drop_after_data: bool = False
    attempts: int = 0

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.pop(0) if self.rcpt_replies else None
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.attempts += 1
        if self.drop_after_data:
            server.transport.close()
            return "250 OK"
        reply = self.data_replies.pop(0) if self.data_replies else None
        if reply:
            return reply
        self.received.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        )
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    """The running server and what it received."""

    host: str
    port: int
    handler: Handler

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    async def wait_for(self, count: int = 1) -> list[Received]:
        """Wait (without blocking the event loop) until `count` messages have arrived."""
        deadline = time.monotonic() + WAIT_SECONDS
        while len(self.handler.received) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.handler.received)} of {count} e-mails arrived"
            )
            await asyncio.sleep(0.02)
        return list(self.handler.received)


@contextmanager
def running_smtp_server(handler: Handler | None = None, **options: Any) -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1; `options` go to aiosmtpd (TLS contexts, authenticator)."""
    handler = handler or Handler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A fresh plain SMTP server on 127.0.0.1 for one test."""
    with running_smtp_server() as server:
        yield server
