"""A cheap HTTP/1.1 keep-alive client on asyncio protocols, so the load generator is not the
bottleneck: requests are pre-built bytes, responses are split on Content-Length, nothing else.

Enough for our own two servers (uvicorn answers every request with a Content-Length, or 204);
not a general HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlencode

from gateway.simulator.transport import sign

TIMEOUT_SECONDS = 15.0  # Twilio's webhook timeout


class Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        if b"\r\nconnection: close" in head:
            self.close()
        waiter.set_result((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


class Pool:
    """At most `limit` connections to one server; a request waits for a free one."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.gate = asyncio.Semaphore(limit)
        self.idle: list[Connection] = []
        self.opened = 0

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(Connection, self.host, self.port)
        self.opened += 1
        return connection

    async def request(
        self,
        data: bytes,
        timeout: float = TIMEOUT_SECONDS,  # noqa: ASYNC109 - Twilio's per-webhook timeout
    ) -> tuple[int, bytes]:
        """Send pre-built request bytes; (status, body). Raises TimeoutError, ConnectionError."""
        async with self.gate:
            reused = bool(self.idle)
            connection = self.idle.pop() if reused else await self._connect()
            while connection.closed and self.idle:
                connection = self.idle.pop()
            if connection.closed:
                connection, reused = await self._connect(), False
            try:
                result = await asyncio.wait_for(connection.request(data), timeout)
            except ConnectionError:
                connection.close()
                if not reused:
                    raise
                # The server closed an idle keep-alive connection as we wrote: once more, fresh.
                connection = await self._connect()
                result = await asyncio.wait_for(connection.request(data), timeout)
            except BaseException:
                connection.close()
                raise
            if not connection.closed:
                self.idle.append(connection)
            return result

    def close(self) -> None:
        for connection in self.idle:
            with contextlib.suppress(Exception):
                connection.close()
        self.idle.clear()


def signed_post(base_url: str, token: str, path: str, params: dict[str, str]) -> bytes:
    """The bytes of a POST signed as Twilio signs it (for `base_url + path`)."""
    body = urlencode(params).encode()
    signature = sign(token, base_url + path, params)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nX-Twilio-Signature: {signature}\r\n\r\n"
    )
    return head.encode() + body
