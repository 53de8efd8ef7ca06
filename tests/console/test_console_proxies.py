"""The console's per-address sign-in limit believes X-Forwarded-For only from the proxies in
GATEWAY_TRUSTED_PROXIES; by default the peer address is the client, even on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from core.web.proxies import client_address, parse_networks
from gateway.cli import main as cli
from tests.conftest import Gateway
from tests.console.conftest import OPERATOR, PASSWORD, SUPERVISOR, ConsoleClient, csrf_token

LOOPBACK = ("127.0.0.1", 51000)


def served_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """The proxy options `eirc-gateway serve` gives uvicorn."""
    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: captured.update(options))
    monkeypatch.chdir(tmp_path)  # no stray .env
    result = CliRunner().invoke(cli.app, ["serve"], env={"GATEWAY_WORKERS": "1"})
    assert result.exit_code == 0, result.output
    return {
        name: captured[name]
        for name in ("proxy_headers", "forwarded_allow_ips")
        if name in captured
    }


@asynccontextmanager
async def as_served(gateway: Gateway, options: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """The app wrapped as uvicorn serves it with these options, reached from loopback."""
    config = uvicorn.Config(gateway.app, log_config=None, **options)
    config.load()
    transport = httpx.ASGITransport(app=config.loaded_app, client=LOOPBACK)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://console.eirc.example"
    ) as http:
        yield http


async def sign_in(http: httpx.AsyncClient, username: str, password: str, forwarded: str) -> int:
    headers = {"X-Forwarded-For": forwarded}
    page = await http.get("/console/login", headers=headers)
    response = await http.post(
        "/console/login",
        data={"csrf_token": csrf_token(page.text), "username": username, "password": password},
        headers=headers,
    )
    return response.status_code


async def test_by_default_a_loopback_client_cannot_escape_the_address_limit_with_the_header(
    console: ConsoleClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with as_served(gateway, served_options(monkeypatch, tmp_path)) as http:
        # The console conftest allows 5 attempts per address: a fresh "address" each time.
        for index in range(5):
            assert await sign_in(http, f"guess{index}", "guess", f"203.0.113.{index}") == 401
        assert await sign_in(http, SUPERVISOR, PASSWORD, "203.0.113.99") == 429


async def test_behind_a_trusted_proxy_the_forwarded_client_is_limited_alone(
    console: ConsoleClient, gateway: Gateway, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = gateway.app.state.services
    services.settings = services.settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    async with as_served(gateway, served_options(monkeypatch, tmp_path)) as http:
        for index in range(5):
            # Whatever the client writes before the proxy's own entry is not believed.
            forwarded = f"198.51.100.{index}, 203.0.113.7"
            assert await sign_in(http, f"guess{index}", "guess", forwarded) == 401
        assert await sign_in(http, SUPERVISOR, PASSWORD, "203.0.113.7") == 429
        # Another client behind the same proxy is not held back.
        assert await sign_in(http, OPERATOR, PASSWORD, "203.0.113.8") == 303


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("127.0.0.1", "203.0.113.7", [], "127.0.0.1"),
        ("10.0.0.5", "203.0.113.7", ["127.0.0.1"], "10.0.0.5"),
        ("127.0.0.1", "203.0.113.7", ["127.0.0.1"], "203.0.113.7"),
        ("127.0.0.1", "1.2.3.4, 203.0.113.7", ["127.0.0.1"], "203.0.113.7"),
        ("127.0.0.1", "203.0.113.7, 10.1.2.3", ["127.0.0.1", "10.0.0.0/8"], "203.0.113.7"),
        ("127.0.0.1", "", ["127.0.0.1"], "127.0.0.1"),
        ("127.0.0.1", "not-an-ip", ["127.0.0.1"], "not-an-ip"),
        ("::1", "2001:db8::7", ["::1"], "2001:db8::7"),
        (None, "203.0.113.7", ["127.0.0.1"], "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: str, trusted: list[str], client: str) -> None:
    assert client_address(peer, forwarded, parse_networks(trusted)) == client


def test_trusted_proxies_are_addresses_or_networks() -> None:
    from pydantic import ValidationError

    from core.platform.settings import Settings

    assert Settings(_env_file=None).trusted_proxies == []
    ok = Settings(_env_file=None, trusted_proxies=["127.0.0.1", "10.0.0.0/8", "::1"])
    assert parse_networks(ok.trusted_proxies)[1] == ip_network("10.0.0.0/8")
    with pytest.raises(ValidationError):
        Settings(_env_file=None, trusted_proxies=["proxy.example"])
