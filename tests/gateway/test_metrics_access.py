"""/metrics is not for everyone (issue 10): with GATEWAY_METRICS_TOKEN only to the bearer of
that token (401 otherwise), without one (development only) only to loopback clients (404), and
production refuses to start without a real token."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from core.platform.settings import Settings, UnsafeSettingsError
from tests.conftest import Gateway
from tests.ivr.test_webhooks import production

TOKEN = "prom-" + "3f9d1c7a" * 5
WITH_TOKEN = {"metrics_token": SecretStr(TOKEN)}
WITHOUT_TOKEN: dict[str, object] = {}


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides: Mapping[str, object] = getattr(request, "param", WITH_TOKEN)
    return settings.model_copy(update=dict(overrides))


@pytest.fixture
async def remote(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A client from another host (not loopback), on the same app."""
    transport = httpx.ASGITransport(app=gateway.app, client=("203.0.113.7", 40522))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.internal") as http:
        yield http


def is_metrics(response: httpx.Response) -> bool:
    return response.status_code == 200 and "gateway_webhook_seconds" in response.text


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
    ],
)
async def test_without_the_token_metrics_are_401(
    gateway: Gateway, remote: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with capture_logs() as logs:
        for http in (gateway.twilio.http, remote):  # loopback is no exception once a token is set
            response = await http.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"
            assert "gateway_" not in response.text
    assert [entry["event"] for entry in logs] == ["metrics.unauthorized"] * 2
    assert TOKEN[:12] not in repr(logs)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
async def test_with_the_token_metrics_are_served(
    gateway: Gateway, remote: httpx.AsyncClient, scheme: str
) -> None:
    for http in (gateway.twilio.http, remote):
        response = await http.get("/metrics", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert is_metrics(response)


@pytest.mark.parametrize("settings", [WITHOUT_TOKEN], indirect=True)
async def test_without_a_token_only_loopback_clients_get_metrics(
    gateway: Gateway, remote: httpx.AsyncClient
) -> None:
    assert gateway.settings.metrics_token is None
    assert (await remote.get("/metrics")).status_code == 404
    assert (
        await remote.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    ).status_code == 404
    assert is_metrics(await gateway.twilio.http.get("/metrics"))


@pytest.mark.parametrize("token", [None, "", "changeme", "short-but-random-9f8e7d", "development"])
def test_production_refuses_to_start_without_a_real_metrics_token(token: str | None) -> None:
    with pytest.raises(UnsafeSettingsError, match="GATEWAY_METRICS_TOKEN") as refused:
        production(metrics_token=token)
    if token:
        assert token not in str(refused.value)


def test_production_starts_with_a_metrics_token() -> None:
    assert production(metrics_token=TOKEN).metrics_token is not None
