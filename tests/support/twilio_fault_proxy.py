"""An HTTP proxy in front of the Twilio contract mock (Prism) that can misbehave on cue.

Each request takes the next step of `plan` (then `default`): "forward" it to the mock, answer
an HTTP error itself in Twilio's error format ("503", "429", "400:21211"), "stall" (accept and
never answer), or "hold" (forward once `release` is set; "hold_later": `release_later`). Every request is counted, so a test
can tell exactly how many times the gateway asked Twilio for something.

Why a proxy and not Prism's own `Prefer: code=503`: Twilio's OpenAPI document defines only 201
for the Messages and Calls create operations, and Prism answers any other requested code with
404 "Requested status code 503 is not defined in the document".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

import httpx

REASONS = {
    201: "Created",
    400: "Bad Request",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
HOP_BY_HOP = {"host", "connection", "content-length", "keep-alive", "transfer-encoding"}


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the proxy received."""

    method: str
    path: str
    form: dict[str, str]
    answered: str


@dataclass
class FaultProxy:
    """A loopback proxy to `upstream`; start() returns its base URL."""

    upstream: str
    plan: list[str] = field(default_factory=list)
    default: str = "forward"
    retry_after: str = "7"
    seen: list[Seen] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    # For "hold_later": a second hold, released separately.
    release_later: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> str:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and drop every connection (stalled ones included)."""
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def wait_for(self, count: int) -> None:
        """Until at least `count` requests have arrived."""
        while True:
            self.arrived.clear()
            if len(self.seen) >= count:
                return
            await self.arrived.wait()

    def creates(self, resource: str = "Messages.json") -> list[Seen]:
        """The create (POST) requests for one resource."""
        return [s for s in self.seen if s.method == "POST" and s.path.endswith(resource)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip()] = value.strip()
            length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), 0))
            body = await reader.readexactly(length) if length else b""
            step = self.plan.pop(0) if self.plan else self.default
            form = dict(httpx.QueryParams(body.decode("utf-8", "replace")))
            self.seen.append(Seen(method, path, form, step))
            self.arrived.set()
            if step == "stall":
                await self._closing.wait()
                return
            if step in ("hold", "hold_later"):
                await (self.release if step == "hold" else self.release_later).wait()
                step = "forward"
            if step == "forward":
                status, content_type, payload = await self._forward(method, path, headers, body)
            else:
                answer, _, code = step.partition(":")
                status, content_type = int(answer), "application/json"
                payload = json.dumps(
                    {
                        "code": int(code) if code else 20000 + int(status),
                        "message": "fault injected by the test proxy",
                        "more_info": "https://www.twilio.com/docs/errors",
                        "status": int(status),
                    }
                ).encode()
            extra = f"Retry-After: {self.retry_after}\r\n" if status == 429 else ""
            writer.write(
                (
                    f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
                    f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                    f"{extra}Connection: close\r\n\r\n"
                ).encode()
                + payload
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        kept = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
        async with httpx.AsyncClient(timeout=60.0) as client:
            response = await client.request(
                method, self.upstream + path, headers=kept, content=body
            )
        return (
            response.status_code,
            response.headers.get("content-type", "application/json"),
            response.content,
        )
