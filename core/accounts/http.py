"""The accounts directory over the personal cabinet's HTTP API (DESIGN §11, contract v1).

Every request is signed (`X-EIRC-Signature: v1=<hex HMAC-SHA256>` over timestamp, method,
request target and body); look-ups are padded to a fixed minimum so that the cabinet's timing
cannot tell a known account from an unknown one (§6.2); a temporary password is set with one
idempotent PUT per recovery, retried with the same key within the webhook's budget.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx
import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.accounts.directory import (
    AccountRecord,
    Applied,
    DirectoryUnavailable,
    PasswordCheck,
    PasswordNotSet,
    TemporaryPassword,
)
from core.delivery.outbox import CABINET_PENDING
from core.kit.phones import InvalidPhoneNumber, Phone, mask_account, parse_phone
from core.models import OutboundChannel, OutboxMessage, OutboxStatus
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import transaction
from core.platform.settings import Settings

log = structlog.get_logger(__name__)

SIGNATURE_VERSION = "v1"
# One webhook's budget for the cabinet (§11): the first try and at most two more, within 5 s.
MAX_RETRIES = 2
TOTAL_BUDGET_SECONDS = 5.0
RETRY_PAUSES = (0.2, 0.6)


class CabinetOutcome(StrEnum):
    """How one cabinet request ended; the metrics' label vocabulary."""

    ok = "ok"
    not_found = "not_found"
    disabled = "disabled"
    unauthorized = "unauthorized"
    refused = "refused"
    retry = "retry"
    timeout = "timeout"
    unreachable = "unreachable"


CABINET_REQUESTS = Counter(
    "gateway_cabinet_requests",
    "Requests to the personal cabinet's directory API (§11), by operation and outcome.",
    ["operation", "outcome"],
)
CABINET_SECONDS = Histogram(
    "gateway_cabinet_request_seconds",
    "Time of one request to the cabinet's directory API, unpadded.",
    ["operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
)
for _operation in ("lookup", "set_password"):
    for _outcome in CabinetOutcome:
        CABINET_REQUESTS.labels(operation=_operation, outcome=_outcome)


def signature(secret: str, timestamp: int, method: str, target: str, body: bytes) -> str:
    """`v1=` and the lowercase hex HMAC-SHA256 of timestamp, method, request target and body."""
    message = f"{timestamp}\n{method.upper()}\n{target}\n".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def request_target(url: httpx.URL) -> str:
    """The percent-encoded path as sent on the wire, with `?query` when there is one."""
    return url.raw_path.decode("ascii")


class CabinetClient:
    """Signed, timed, retried requests to the cabinet; one per process (it pools connections)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not settings.directory_url:
            raise ValueError("GATEWAY_DIRECTORY_URL is not set")
        self._settings = settings
        self._base = settings.directory_url.rstrip("/")
        self._secret = settings.directory_secret.get_secret_value()
        self._clock = clock
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            timeout=settings.directory_timeout_seconds,
            transport=transport,
            verify=_tls_context(settings),
            headers={"User-Agent": "eirc-recovery-gateway"},
        )

    def __repr__(self) -> str:
        return f"CabinetClient({self._base})"

    async def close(self) -> None:
        """Release the pooled connections."""
        await self._http.aclose()

    def account_url(self, account_number: str, suffix: str = "") -> str:
        """The cabinet's URL of one account (the number percent-encoded as one segment)."""
        return f"{self._base}/accounts/{quote(account_number, safe='')}{suffix}"

    async def get(self, account_number: str) -> httpx.Response:
        """GET the account, with the retries of §11."""
        return await self._send("lookup", "GET", self.account_url(account_number), b"", {})

    async def put_password(
        self, account_number: str, temporary: TemporaryPassword
    ) -> httpx.Response:
        """PUT the temporary password, idempotent by its reference, with the retries of §11."""
        return await self.put_raw(account_number, temporary.reference, temporary.body())

    async def put_raw(self, account_number: str, reference: str, body: bytes) -> httpx.Response:
        """PUT a temporary-password body as it was first sent (the settler repeats it)."""
        url = self.account_url(account_number, "/temporary-password")
        headers = {"Idempotency-Key": reference, "Content-Type": "application/json"}
        return await self._send("set_password", "PUT", url, body, headers)

    async def ping(self) -> bool:
        """Whether the cabinet answers a signed request at all (for /readyz): any non-5xx."""
        try:
            response = await self._once("GET", self.account_url("0"), b"", {})
        except httpx.HTTPError:
            return False
        return response.status_code < 500 and response.status_code != 401

    async def _send(
        self, operation: str, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """One request and its retries (5xx, 429, 409, time-outs), within the budget.

        Raises httpx.TimeoutException or httpx.TransportError when the last try got no
        answer; the caller decides what that means (a GET: unreachable; a PUT: ambiguous).
        """
        deadline = time.monotonic() + TOTAL_BUDGET_SECONDS
        for attempt in range(MAX_RETRIES + 1):
            started = time.monotonic()
            try:
                response = await self._once(method, url, body, headers)
            except httpx.HTTPError as exc:
                outcome = (
                    CabinetOutcome.timeout
                    if isinstance(exc, httpx.TimeoutException)
                    else CabinetOutcome.unreachable
                )
                self._count(operation, outcome, started)
                if not self._may_retry(attempt, deadline):
                    raise
            else:
                outcome = _classify(response)
                self._count(operation, outcome, started)
                if outcome is not CabinetOutcome.retry or not self._may_retry(attempt, deadline):
                    if outcome is CabinetOutcome.unauthorized:
                        # A wrong secret or a clock off by minutes: never "unknown account".
                        log.error("cabinet.unauthorized", operation=operation)
                    return response
            await self._sleep(RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)])
        raise AssertionError("unreachable")  # pragma: no cover

    def _may_retry(self, attempt: int, deadline: float) -> bool:
        pause = RETRY_PAUSES[min(attempt, len(RETRY_PAUSES) - 1)]
        time_left = deadline - time.monotonic() - pause
        return attempt < MAX_RETRIES and time_left >= self._settings.directory_timeout_seconds

    async def _once(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        request = self._http.build_request(method, url, content=body or None, headers=headers)
        timestamp = int(self._clock())
        request.headers["X-EIRC-Timestamp"] = str(timestamp)
        request.headers["X-EIRC-Signature"] = signature(
            self._secret, timestamp, method, request_target(request.url), body
        )
        return await self._http.send(request)

    @staticmethod
    def _count(operation: str, outcome: CabinetOutcome, started: float) -> None:
        CABINET_REQUESTS.labels(operation=operation, outcome=outcome).inc()
        CABINET_SECONDS.labels(operation=operation).observe(time.monotonic() - started)


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """The cabinet's CA (or the system's), and the gateway's client certificate for mutual TLS."""
    context = ssl.create_default_context(cafile=settings.directory_ca)
    if settings.directory_client_cert and settings.directory_client_key:
        context.load_cert_chain(settings.directory_client_cert, settings.directory_client_key)
    return context


def _classify(response: httpx.Response) -> CabinetOutcome:
    status = response.status_code
    if status in (200, 204):
        return CabinetOutcome.ok
    if status == 404:
        return CabinetOutcome.not_found
    if status == 403:
        return CabinetOutcome.disabled
    if status == 401:
        return CabinetOutcome.unauthorized
    if status in (409, 429) or status >= 500:
        return CabinetOutcome.retry
    return CabinetOutcome.refused


class HttpAccountDirectory:
    """The directory port over the cabinet (§11); one per request (it remembers its look-ups)."""

    def __init__(
        self,
        client: CabinetClient,
        settings: Settings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._settings = settings
        self._monotonic = monotonic
        self._sleep = sleep
        self._region = settings.default_region
        self._looked_up: dict[str, AccountRecord | None] = {}

    async def lookup(self, account_number: str) -> AccountRecord | None:
        """The active account with this number, or None (unknown and disabled alike).

        Padded to GATEWAY_DIRECTORY_MIN_LOOKUP_MS (§6.2); asked once per request.
        """
        number = account_number.strip()
        if number in self._looked_up:
            return self._looked_up[number]
        floor = self._monotonic() + self._settings.directory_min_lookup_ms / 1000
        try:
            record = await self._lookup(number)
        finally:
            await self._sleep(max(0.0, floor - self._monotonic()))
        self._looked_up[number] = record
        return record

    async def _lookup(self, number: str) -> AccountRecord | None:
        try:
            response = await self._client.get(number)
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"cabinet look-up failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise DirectoryUnavailable(f"cabinet look-up answered {response.status_code}")
        try:
            data: Any = response.json()
            if not isinstance(data, dict):
                raise TypeError("not an object")
            if data.get("status") != "active":
                return None
            return AccountRecord(
                account_number=number,
                login=str(data.get("login") or ""),
                full_name="",
                email=_optional_text(data.get("email")),
                phones=_phones(data.get("phones"), self._region),
            )
        except (ValueError, TypeError):
            raise DirectoryUnavailable("cabinet look-up answered an unreadable body") from None

    async def issue_temporary_password(
        self, account_number: str, temporary: TemporaryPassword
    ) -> Applied:
        """Have the cabinet store the gateway's temporary password (§11); raises PasswordNotSet."""
        try:
            response = await self._client.put_password(account_number.strip(), temporary)
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError):
            # The request may have reached the cabinet: deliver, and settle it later (§11).
            log.warning("cabinet.ambiguous", account=mask_account(account_number))
            return Applied.ambiguous
        except httpx.HTTPError as exc:
            raise PasswordNotSet(type(exc).__name__) from None
        if response.status_code == 204:
            return Applied.applied
        reason = _error_code(response)
        if response.status_code == 422:
            # The gateway's settings and the cabinet's policy disagree: someone must fix them.
            log.error("cabinet.refused_password", reason=reason)
        raise PasswordNotSet(reason)

    async def verify_password(self, account_number: str, password: str) -> PasswordCheck:
        """Not offered by §11: the cabinet's own sign-in is the check."""
        raise NotImplementedError("with GATEWAY_DIRECTORY=http the cabinet's sign-in checks it")

    async def change_password(
        self, account_number: str, current_password: str, new_password: str
    ) -> None:
        """Not offered by §11: residents change passwords in the cabinet."""
        raise NotImplementedError("with GATEWAY_DIRECTORY=http residents change it in the cabinet")


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _phones(raw: object, region: str) -> tuple[Phone, ...]:
    """The phones the cabinet lists, parsed with the default region; what does not parse is
    ignored (§11), and each number counts once."""
    if not isinstance(raw, list):
        return ()
    phones: dict[str, Phone] = {}
    for item in raw:
        if not isinstance(item, str):
            continue
        try:
            phone = parse_phone(item, region)
        except InvalidPhoneNumber:
            continue
        phones.setdefault(phone.e164, phone)
    return tuple(phones.values())


def _error_code(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    code = data.get("error") if isinstance(data, dict) else None
    return f"{response.status_code} {code}" if isinstance(code, str) else str(response.status_code)


__all__ = [
    "CABINET_REQUESTS",
    "CabinetClient",
    "CabinetOutcome",
    "CabinetSettler",
    "HttpAccountDirectory",
    "request_target",
    "signature",
]


class CabinetSettler:
    """Repeats the PUTs whose outcome was unknown until the cabinet answers (§11).

    A held PUT is an outbox row (channel `cabinet`, status `pending`) with the sealed body as
    first sent: the same bytes and the same Idempotency-Key, so the cabinet applies it once.
    """

    def __init__(
        self,
        client: CabinetClient,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: Keyring,
    ) -> None:
        self._client = client
        self._sessionmaker = sessionmaker
        self._keyring = keyring

    async def settle(self, limit: int = 20) -> int:
        """Try the pending PUTs once each; how many were settled (either way)."""
        now = utcnow()
        async with transaction(self._sessionmaker) as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(
                        OutboxMessage.channel == OutboundChannel.cabinet,
                        OutboxMessage.status == CABINET_PENDING,
                    )
                    .order_by(OutboxMessage.id)
                    .limit(limit)
                )
            ).all()
            settled = 0
            for row in rows:
                settled += await self._settle(row, now)
        return settled

    async def _settle(self, row: OutboxMessage, now: datetime) -> int:
        row.attempts += 1
        if row.send_before is not None and _aware(row.send_before) <= now:
            # The password has expired: whatever the cabinet did, it opens nothing any more.
            self._close(row, "expired")
            log.error("cabinet.unsettled", reason="expired")
            return 1
        body = self._keyring.unseal(row.body) or ""
        reference = json.loads(body)["reference"] if body else ""
        temporary_body = body.encode("ascii")
        try:
            response = await self._client.put_raw(row.to_number, reference, temporary_body)
        except httpx.HTTPError:
            return 0
        if response.status_code == 204:
            self._close(row, "applied", status=OutboxStatus.sent)
            log.info("cabinet.settled", account=mask_account(row.to_number))
            return 1
        if _classify(response) is CabinetOutcome.retry:
            return 0
        # A definite refusal after the password was delivered: the resident holds a password
        # the cabinet does not know, and keeps the old one. An operator must call them.
        self._close(row, _error_code(response))
        log.error("cabinet.unsettled", reason=_error_code(response))
        return 1

    @staticmethod
    def _close(
        row: OutboxMessage, reason: str, *, status: OutboxStatus = OutboxStatus.failed
    ) -> None:
        row.status = status
        row.reason = reason[:32]
        row.body = ""


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
