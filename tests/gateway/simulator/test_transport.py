"""The one Twilio-like signing client: what it signs, where it sends, and that nobody else signs."""

from __future__ import annotations

import ast
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from gateway.simulator.transport import (
    SIGNATURE_HEADER,
    WebhookClient,
    WebhookRequest,
    sign,
)

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "transport-test-token-0123456789abcdef"
PUBLIC = "https://hotline.eirc.example"
GATEWAY = "http://127.0.0.1:8000"


def test_sign_is_what_twilio_s_validator_accepts() -> None:
    params = {"CallSid": "CA" + "1" * 32, "Digits": "1234#", "Body": "код 123456"}
    url = PUBLIC + "/ivr/voice?step=2"
    signature = sign(TOKEN, url, params)
    assert RequestValidator(TOKEN).validate(url, params, signature)
    assert not RequestValidator(TOKEN).validate(url, {**params, "Digits": "9"}, signature)
    assert sign("another-token", url, params) != signature


def recording_client(seen: list[httpx.Request], gateway_url: str = GATEWAY) -> WebhookClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="<Response/>")

    http = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://app")
    return WebhookClient(http, PUBLIC, TOKEN, gateway_url=gateway_url)


async def test_a_post_is_signed_for_the_public_url_and_sent_to_the_gateway() -> None:
    seen: list[httpx.Request] = []
    client = recording_client(seen)
    await client.post("/sms/inbound", {"From": "+79123456789", "Body": "ПАРОЛЬ"})
    (request,) = seen
    assert str(request.url) == GATEWAY + "/sms/inbound"
    form = dict(parse_qsl(request.content.decode()))
    assert form == {"From": "+79123456789", "Body": "ПАРОЛЬ"}
    assert RequestValidator(TOKEN).validate(
        PUBLIC + "/sms/inbound", form, request.headers[SIGNATURE_HEADER]
    )


async def test_without_a_gateway_url_the_path_goes_to_the_client_s_base() -> None:
    seen: list[httpx.Request] = []
    await recording_client(seen, gateway_url="").post("/ivr/voice", {})
    assert str(seen[0].url) == "http://app/ivr/voice"


async def test_a_get_carries_its_params_in_the_signed_query() -> None:
    seen: list[httpx.Request] = []
    client = recording_client(seen)
    await client.send(WebhookRequest(PUBLIC + "/ivr/hold?q=1", "GET", {"QueuePosition": "1"}))
    (request,) = seen
    assert request.method == "GET" and not request.content
    assert dict(parse_qsl(urlsplit(str(request.url)).query)) == {"q": "1", "QueuePosition": "1"}
    public = PUBLIC + "/ivr/hold?q=1&QueuePosition=1"
    assert RequestValidator(TOKEN).validate(public, {}, request.headers[SIGNATURE_HEADER])


async def test_a_url_outside_the_public_base_is_not_redirected() -> None:
    seen: list[httpx.Request] = []
    await recording_client(seen).send(WebhookRequest("https://elsewhere.example/x", "POST", {}))
    assert str(seen[0].url) == "https://elsewhere.example/x"


def _python_files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))]


def test_only_the_transport_computes_twilio_signatures() -> None:
    """The simulator, the tests' driver, the benchmark and the scripts sign through `sign`."""
    signing = [
        path.relative_to(ROOT).as_posix()
        for path in _python_files("core", "ivr", "sms", "gateway", "benchmarks", "scripts")
        + _python_files("tests/support")
        if "compute_signature" in path.read_text(encoding="utf-8")
    ]
    assert signing == ["gateway/simulator/transport.py"]


def test_the_benchmarks_import_nothing_from_tests() -> None:
    offenders: list[str] = []
    for path in _python_files("benchmarks"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "tests"]
    assert offenders == []
