"""The HTTP directory (§11) against a scripted cabinet: signatures, answers, retries, padding."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trustme
from pydantic import SecretStr

from core.accounts.directory import Applied, DirectoryUnavailable, PasswordNotSet, TemporaryPassword
from core.accounts.http import CabinetClient, CabinetSettler, HttpAccountDirectory, signature
from core.platform.settings import DirectoryKind, Settings, UnsafeSettingsError
from tests.conftest import MOBILE_ONLY
from tests.support.cabinet_server import Cabinet, serve_cabinet

SECRET = "0123456789abcdef0123456789abcdef"
BASE = "https://cabinet.internal/recovery/v1"
EXAMPLE = TemporaryPassword(
    password="k7mz2p9rbt",
    expires_at=datetime(2026, 1, 1, 1, 0, tzinfo=UTC),
    channel="voice",
    reference="r-5f1c2a9e",
)


def test_the_worked_example_of_section_11() -> None:
    """Both signatures of DESIGN §11's worked example, and the body byte for byte."""
    body = EXAMPLE.body()
    assert body == (
        b'{"password":"k7mz2p9rbt","expires_at":"2026-01-01T01:00:00Z","must_change":true,'
        b'"channel":"voice","reference":"r-5f1c2a9e"}'
    )
    target = "/recovery/v1/accounts/1000234528"
    assert signature(SECRET, 1767225600, "GET", target, b"") == (
        "v1=04ba4d2a07cc2fe7397979a8ef3a3320c8eb575155b4ebc42e6a78b46e6e4508"
    )
    assert signature(SECRET, 1767225600, "PUT", target + "/temporary-password", body) == (
        "v1=57cf08d4f6d218740b2ccb93bdd06bc33ef667209d8d561b4a51c4f786794abb"
    )


@pytest.fixture
async def settings_db(settings: Settings) -> Settings:
    """The suite's settings on a migrated database."""
    from core.platform.migrate import upgrade_database

    await upgrade_database(settings.database_url)
    return settings


def http_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "directory": DirectoryKind.http,
        "directory_url": BASE,
        "directory_secret": SecretStr(SECRET),
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"directory_url": ""},
        {"directory_url": "cabinet.internal"},
        {"directory_secret": SecretStr("short")},
        {"directory_client_cert": "/etc/cert.pem"},
    ],
    ids=["no-url", "no-scheme", "short-secret", "cert-without-key"],
)
def test_an_unusable_http_directory_is_refused_at_start_up(overrides: dict[str, object]) -> None:
    with pytest.raises(UnsafeSettingsError) as refused:
        http_settings(**overrides)
    assert SECRET not in str(refused.value)


Handler = Callable[[httpx.Request], httpx.Response]


class ScriptedCabinet:
    """A scripted cabinet: answers from a list, records what it was sent, checks signatures."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        timestamp = int(request.headers["X-EIRC-Timestamp"])
        target = request.url.raw_path.decode()
        expected = signature(SECRET, timestamp, request.method, target, request.content)
        assert request.headers["X-EIRC-Signature"] == expected
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def directory(cabinet: ScriptedCabinet, **overrides: object) -> tuple[HttpAccountDirectory, Sleeps]:
    sleeps = Sleeps()
    config = http_settings(**overrides)
    client = CabinetClient(
        config, transport=httpx.MockTransport(cabinet), clock=lambda: 1767225600, sleep=sleeps
    )
    ticks = iter(range(1000))
    # A monotonic clock that moves 10 ms a reading: the look-up "took" one tick.
    return HttpAccountDirectory(
        client, config, monotonic=lambda: next(ticks) / 100, sleep=sleeps
    ), sleeps


def account(status: str = "active", phones: object = ("+79123456789",)) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "account_number": "1000234528",
            "login": "ivanova.mv",
            "phones": list(phones) if isinstance(phones, tuple) else phones,
            "email": None,
            "status": status,
            "extra": "ignored",
        },
    )


async def test_a_lookup_is_signed_and_parsed() -> None:
    cabinet = ScriptedCabinet(account(phones=("8 (912) 345-67-89", "not a phone", "+74951234567")))
    found, _ = directory(cabinet)
    record = await found.lookup("1000234528")
    assert record is not None and record.login == "ivanova.mv"
    assert [phone.e164 for phone in record.phones] == ["+79123456789", "+74951234567"]
    assert record.first_mobile is not None
    (request,) = cabinet.requests
    assert str(request.url) == f"{BASE}/accounts/1000234528"
    # Asked once per request, however often the flow looks.
    assert await found.lookup("1000234528") == record
    assert len(cabinet.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(404, json={"error": "not_found"}),
        account(status="disabled"),
        account(status="closed"),
    ],
    ids=["unknown", "disabled", "other-status"],
)
async def test_unknown_and_disabled_read_the_same(answer: httpx.Response) -> None:
    found, _ = directory(ScriptedCabinet(answer))
    assert await found.lookup("1000234528") is None


async def test_every_lookup_is_padded_to_the_minimum() -> None:
    """§6.2: the look-up took 10 ms here; the directory waits out the other 290."""
    found, sleeps = directory(ScriptedCabinet(httpx.Response(404)), directory_min_lookup_ms=300)
    await found.lookup("1")
    assert sleeps.slept == [pytest.approx(0.29)]


@pytest.mark.parametrize(
    "answers",
    [
        [httpx.Response(401)],
        [httpx.Response(503)] * 3,
        [httpx.Response(429)] * 3,
        [httpx.ReadTimeout("slow")] * 3,
        [httpx.ConnectError("down")] * 3,
        [httpx.Response(200, content=b"not json")],
    ],
    ids=["401", "503", "429", "timeout", "down", "garbage"],
)
async def test_a_cabinet_that_cannot_answer_is_unavailable_not_unknown(
    answers: list[httpx.Response | Exception],
) -> None:
    cabinet = ScriptedCabinet(*answers)
    found, _ = directory(cabinet)
    with pytest.raises(DirectoryUnavailable):
        await found.lookup("1000234528")
    # Retried at most twice more, and a 401 not at all.
    assert len(cabinet.requests) == (1 if len(answers) == 1 else 3)


async def test_transient_failures_are_retried_with_the_same_key() -> None:
    cabinet = ScriptedCabinet(httpx.Response(503), httpx.Response(409), httpx.Response(204))
    found, _ = directory(cabinet)
    assert await found.issue_temporary_password("1000234528", EXAMPLE) is Applied.applied
    assert [r.headers["Idempotency-Key"] for r in cabinet.requests] == ["r-5f1c2a9e"] * 3
    assert {r.content for r in cabinet.requests} == {EXAMPLE.body()}
    body = json.loads(cabinet.requests[0].content)
    assert body["reference"] == cabinet.requests[0].headers["Idempotency-Key"]
    assert body["must_change"] is True


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (httpx.Response(404, json={"error": "not_found"}), "404 not_found"),
        (httpx.Response(403, json={"error": "disabled"}), "403 disabled"),
        (httpx.Response(422, json={"error": "password_policy"}), "422 password_policy"),
        (httpx.Response(401), "401"),
        (httpx.Response(500), "500"),
    ],
)
async def test_a_definite_refusal_sets_nothing(answer: httpx.Response, reason: str) -> None:
    found, _ = directory(ScriptedCabinet(answer))
    with pytest.raises(PasswordNotSet) as refused:
        await found.issue_temporary_password("1000234528", EXAMPLE)
    assert refused.value.reason == reason
    assert EXAMPLE.password not in str(refused.value)


async def test_a_time_out_is_ambiguous() -> None:
    """The PUT may have been applied: the caller delivers, and the PUT is settled later."""
    found, _ = directory(ScriptedCabinet(httpx.ReadTimeout("slow")))
    assert await found.issue_temporary_password("1000234528", EXAMPLE) is Applied.ambiguous


async def test_a_connection_refused_is_not_ambiguous() -> None:
    found, _ = directory(ScriptedCabinet(httpx.ConnectError("refused")))
    with pytest.raises(PasswordNotSet):
        await found.issue_temporary_password("1000234528", EXAMPLE)


def test_reprs_hold_no_secret() -> None:
    config = http_settings()
    assert EXAMPLE.password not in repr(EXAMPLE)
    assert SECRET not in repr(CabinetClient(config)) and SECRET not in repr(config)


# -- the ambiguous PUT, held and settled ----------------------------------------------------


async def test_a_held_put_is_repeated_byte_for_byte_until_the_cabinet_answers(
    settings_db: Settings,
) -> None:
    """§11: after a time-out the same PUT (same key, same body) is repeated until settled."""
    from sqlalchemy import select

    from core.delivery.outbox import Delivery
    from core.models import OutboundChannel, OutboxMessage
    from core.platform.crypto import Keyring
    from core.platform.db import create_engine, create_sessionmaker, transaction

    config = settings_db.model_copy(
        update={
            "directory": DirectoryKind.http,
            "directory_url": BASE,
            "directory_secret": SecretStr(SECRET),
        }
    )
    keyring = Keyring(config)
    engine = create_engine(config.database_url)
    sessionmaker = create_sessionmaker(engine)
    future = TemporaryPassword("k7mz2p9rbt", datetime(2099, 1, 1, tzinfo=UTC), "voice", "r-1")
    async with transaction(sessionmaker) as session:
        delivery = Delivery(config, session, keyring, lambda: None)
        await delivery.hold_for_cabinet("1000234528", future.body().decode(), future.expires_at)

    cabinet = ScriptedCabinet(httpx.Response(503), httpx.Response(204))
    client = CabinetClient(config, transport=httpx.MockTransport(cabinet), sleep=Sleeps())
    settler = CabinetSettler(client, sessionmaker, keyring)
    try:
        # The first round meets a cabinet still in trouble (503, retried, then 204).
        assert await settler.settle() == 1
    finally:
        await client.close()
    assert {r.content for r in cabinet.requests} == {future.body()}
    assert {r.headers["Idempotency-Key"] for r in cabinet.requests} == {"r-1"}
    async with transaction(sessionmaker) as session:
        row = (
            await session.scalars(
                select(OutboxMessage).where(OutboxMessage.channel == OutboundChannel.cabinet)
            )
        ).one()
        assert (row.status, row.reason, row.body) == ("sent", "applied", "")
    assert await settler.settle() == 0  # nothing left
    await engine.dispose()


# -- mutual TLS, against the reference cabinet over real TLS on loopback --------------------


async def test_mutual_tls_with_the_gateways_certificate(tmp_path: Path) -> None:
    """GATEWAY_DIRECTORY_CLIENT_CERT/_KEY/_CA: a cabinet that requires a client certificate
    answers the gateway that shows one signed by its CA, and nobody else."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("eirc-gateway.internal")
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "server", "client", "client-key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["server"]))
    client.cert_chain_pems[0].write_to_path(str(files["client"]))
    client.private_key_pem.write_to_path(str(files["client-key"]))
    tls = {
        "ssl_certfile": str(files["server"]),
        "ssl_ca_certs": str(files["ca"]),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }
    with serve_cabinet(tmp_path / "cabinet", **tls) as cabinet:
        assert cabinet.url.startswith("https://")
        mutual = cabinet_http_settings(
            cabinet,
            directory_client_cert=str(files["client"]),
            directory_client_key=str(files["client-key"]),
            directory_ca=str(files["ca"]),
        )
        client_ = CabinetClient(mutual)
        try:
            record = await HttpAccountDirectory(client_, mutual).lookup(MOBILE_ONLY)
        finally:
            await client_.close()
        assert record is not None and record.login == "ivanova.mv"

        # Without the client certificate the handshake fails: unavailable, never "unknown".
        anonymous = cabinet_http_settings(cabinet, directory_ca=str(files["ca"]))
        client_ = CabinetClient(anonymous, sleep=Sleeps())
        try:
            with pytest.raises(DirectoryUnavailable):
                await HttpAccountDirectory(client_, anonymous).lookup(MOBILE_ONLY)
        finally:
            await client_.close()


def cabinet_http_settings(cabinet: Cabinet, **overrides: object) -> Settings:
    return http_settings(
        directory_url=cabinet.api_url,
        directory_secret=SecretStr(cabinet.secret),
        directory_min_lookup_ms=0,
        **overrides,
    )
