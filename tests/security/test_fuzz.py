"""Property tests over every webhook with correctly signed, arbitrary input (§6.10).

Property: never a 5xx; a 4xx, or a 200/204 whose body (if any) is well-formed TwiML (root
`Response`). Requests that are signed, encodable and within the limits must get past the
signature check, so the fuzz reaches the handlers rather than bouncing off a 403.
"""

from __future__ import annotations

import os
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from twilio.request_validator import RequestValidator

from core.web.signature import MAX_BODY_BYTES, MAX_FIELDS
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, UNKNOWN, Gateway
from tests.security.test_signature_edges import asgi_post

# Bounded for the suite; FUZZ_EXAMPLES=2000 searches harder locally.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize="FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
SIGNATURE = "X-Twilio-Signature"
FORM_TYPE = "application/x-www-form-urlencoded"
VALIDATOR = RequestValidator(AUTH_TOKEN)

# -- strategies -------------------------------------------------------------------------------

# Every code point, lone surrogates included (they cannot be UTF-8-encoded: sent as raw bytes).
ANY_CHAR = st.characters(exclude_categories=())
SPECIALS = [
    "]]>",
    "<![CDATA[",
    "<Say>&amp;</Say>",
    "</Response><Response>",
    "&#0;",
    "&lt;",
    "<!--",
    "\"'",
    "\x00",
    "\x01\x02\x1b\x7f",
    "\ufffe\uffff",
    "\ud800",
    "\udfff\ud800",
    "\u202e",
    "😀",
    "1" * 500,
    "#*0123456789",
    "+79123456789",
    MOBILE_ONLY,
    "оператор",
    "ВОССТАНОВИТЬ " + MOBILE_ONLY,
    "STOP",
    "КОД 123456",
    "%",
    "%ff",
    "&=&=",
    "CA",
    "CA\x00",
    "SM" + "]]>",
]
VALUES = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.sampled_from(SPECIALS),
    st.builds(lambda a, b: a + b, st.sampled_from(SPECIALS), st.text(ANY_CHAR, max_size=10)),
    # Overlong: cheap to build, past the truncation and sometimes past the body limit.
    st.builds(
        lambda c, n: c * n, st.sampled_from(["9", "я", "<", "😀", "\x00"]), st.integers(1, 20_000)
    ),
)
# Query values as a URL can carry them (httpx, like Twilio, refuses URLs past 64 KiB).
QUERY_VALUES = VALUES.map(lambda value: value[:2000])
VOICE_FIELDS = [
    "AccountSid", "ApiVersion", "CallSid", "CallStatus", "Direction", "From", "To", "Digits",
    "SpeechResult", "Confidence", "DialCallStatus", "CallDuration", "ErrorCode",
]  # fmt: skip
SMS_FIELDS = [
    "AccountSid", "MessageSid", "SmsSid", "From", "To", "Body", "NumMedia", "NumSegments",
    "MessageStatus", "SmsStatus", "ErrorCode",
]  # fmt: skip
KEYS = st.one_of(st.sampled_from(VOICE_FIELDS + SMS_FIELDS), st.text(ANY_CHAR, max_size=16))
PAIRS = st.lists(st.tuples(KEYS, VALUES), max_size=12)


@dataclass(frozen=True)
class Fuzzed:
    """What the fuzz adds to a genuine request: fields dropped, pairs added (last one wins)."""

    dropped: frozenset[str]
    pairs: list[tuple[str, str]]


def fuzzed(base_fields: list[str]) -> st.SearchStrategy[Fuzzed]:
    return st.builds(Fuzzed, st.frozensets(st.sampled_from(base_fields)), PAIRS)


# -- signing and sending ----------------------------------------------------------------------


class Pairs:
    """Form pairs as RequestValidator reads them (getlist per key)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    def __iter__(self) -> Iterator[str]:
        return iter(key for key, _ in self._pairs)

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw(text: str) -> bytes:
    """UTF-8, with lone surrogates passed through as the bytes a broken client would send."""
    return text.encode("utf-8", "surrogatepass")


def form_body(pairs: list[tuple[str, str]]) -> bytes:
    return "&".join(
        quote(raw(key), safe="") + "=" + quote(raw(value), safe="") for key, value in pairs
    ).encode("ascii")


def query(**values: str) -> str:
    return "&".join(f"{key}={quote(raw(value), safe='')}" for key, value in values.items())


@dataclass(frozen=True)
class Sent:
    """A fuzzed request and what a correct gateway may answer it."""

    response: httpx.Response
    signed: bool  # encodable, so correctly signed
    within_limits: bool


async def send_signed(gateway: Gateway, path: str, pairs: list[tuple[str, str]]) -> Sent:
    """POST a form as Twilio would sign it (when it can be signed at all)."""
    body = form_body(pairs)
    url = PUBLIC_BASE_URL + path
    signed = all(encodable(key) and encodable(value) for key, value in pairs)
    signature = VALIDATOR.compute_signature(url, Pairs(pairs)) if signed else "bm90LXNpZ25lZA=="
    headers = {"content-type": FORM_TYPE, SIGNATURE: signature}
    response = await gateway.twilio.http.post(path, content=body, headers=headers)
    within = len(body) <= MAX_BODY_BYTES and len(pairs) <= MAX_FIELDS
    return Sent(response, signed, within)


def assert_safe(response: httpx.Response) -> None:
    """The property: no 5xx; a 4xx, or 200/204 with well-formed TwiML (or nothing)."""
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if 400 <= status < 500:
        return
    assert status in (200, 204), status
    if status == 204 or not response.content:
        assert not response.content
        return
    assert response.headers["content-type"].startswith("application/xml")
    document = ET.fromstring(response.content)  # well-formed, or this raises
    assert document.tag == "Response", document.tag
    for element in document.iter():
        for value in (element.text or "", *element.attrib.values()):
            # The caller's own input is never rendered back into TwiML verbatim.
            assert "]]>" not in value and "<Say>" not in value, value


def assert_handled(sent: Sent) -> None:
    """assert_safe, and a signed request within the limits gets past the intake."""
    status = sent.response.status_code
    assert_safe(sent.response)
    if not sent.within_limits:
        assert 400 <= status < 500, status
    elif not sent.signed:
        # Lone surrogates arrive as bytes that are not UTF-8: a 400, before any handler.
        assert status == 400, (status, sent.response.text[:300])
    else:
        assert status not in (403, 413, 415), (status, sent.response.text[:300])


def merged(base: dict[str, str], fuzz: Fuzzed) -> list[tuple[str, str]]:
    return [(k, v) for k, v in base.items() if k not in fuzz.dropped] + fuzz.pairs


def call_form(call_sid: str, caller: str = MOBILE, **extra: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call_sid,
        "CallStatus": "in-progress",
        "Direction": "inbound",
        "From": caller,
        "To": "+78005550100",
        **extra,
    }


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


async def start_call(gateway: Gateway, keys: list[str]) -> tuple[str, int]:
    """A live call driven through `keys`; its CallSid and the step its Gather posts to."""
    call = gateway.call(caller=f"+7916{secrets.randbelow(10**7):07d}")
    await call.start()
    for key in keys:
        if call.twiml.find("Gather") is None:
            break
        await call.press(key)
    action = call.twiml.find("Gather")
    step = 0
    if action is not None:
        step = int(str(action.get("action")).rsplit("s=", 1)[1])
    return call.call_sid, step


# -- forms on every webhook -------------------------------------------------------------------

DEPTHS = [
    [],
    ["1"],
    ["2"],
    ["1", MOBILE_ONLY + "#"],
    ["1", UNKNOWN + "#", "1"],
    ["1", MOBILE_ONLY + "#", "1"],
    ["1", MOBILE_ONLY + "#", "1", "1"],
    ["9", "1"],
]


@FUZZ
@given(fuzz=fuzzed(list(call_form("CA"))))
async def test_voice_incoming_call(gateway: Gateway, fuzz: Fuzzed) -> None:
    assert_handled(
        await send_signed(gateway, "/ivr/voice", merged(call_form(new_call_sid()), fuzz))
    )


@FUZZ
@given(
    fuzz=fuzzed([*call_form("CA"), "Digits"]),
    depth=st.sampled_from(DEPTHS),
    answer=st.fixed_dictionaries({}, optional={"Digits": VALUES, "SpeechResult": VALUES}),
    stale=st.booleans(),
    fresh=st.booleans(),
)
async def test_voice_menu_step(
    gateway: Gateway,
    redis: Redis,
    fuzz: Fuzzed,
    depth: list[str],
    answer: dict[str, str],
    stale: bool,
    fresh: bool,
) -> None:
    if fresh:
        # Earlier examples' rate limits and failure counts would keep this one from going deep.
        await redis.flushdb()
    call_sid, step = await start_call(gateway, depth)
    path = f"/ivr/step?s={0 if stale else step}"
    base = call_form(call_sid, **{"Digits": "", **answer})
    assert_handled(await send_signed(gateway, path, merged(base, fuzz)))


@FUZZ
@given(fuzz=fuzzed(list(call_form("CA"))), attempt=QUERY_VALUES)
async def test_voice_verification_call(gateway: Gateway, fuzz: Fuzzed, attempt: str) -> None:
    path = "/ivr/verify?" + query(a=attempt)
    assert_handled(await send_signed(gateway, path, merged(call_form(new_call_sid()), fuzz)))


@FUZZ
@given(
    fuzz=fuzzed(list(call_form("CA"))),
    params=st.fixed_dictionaries({}, optional={"c": QUERY_VALUES, "r": QUERY_VALUES}),
    live=st.booleans(),
)
async def test_voice_whisper(
    gateway: Gateway, fuzz: Fuzzed, params: dict[str, str], live: bool
) -> None:
    if live:
        params = {**params, "c": (await start_call(gateway, ["1"]))[0]}
    path = "/ivr/whisper" + ("?" + query(**params) if params else "")
    assert_handled(await send_signed(gateway, path, merged(call_form(new_call_sid()), fuzz)))


@FUZZ
@given(
    fuzz=fuzzed([*call_form("CA"), "DialCallStatus"]),
    call=QUERY_VALUES,
    dial_status=st.one_of(st.sampled_from(["completed", "no-answer", "busy", "failed"]), VALUES),
)
async def test_voice_dial_result(
    gateway: Gateway, fuzz: Fuzzed, call: str, dial_status: str
) -> None:
    base = call_form(new_call_sid(), DialCallStatus=dial_status)
    path = "/ivr/dial-result?" + query(c=call)
    assert_handled(await send_signed(gateway, path, merged(base, fuzz)))


@FUZZ
@given(
    fuzz=fuzzed(list(call_form("CA"))),
    call_status=st.one_of(st.sampled_from(["completed", "ringing", "failed"]), VALUES),
    live=st.booleans(),
)
async def test_voice_status(gateway: Gateway, fuzz: Fuzzed, call_status: str, live: bool) -> None:
    call_sid = (await start_call(gateway, ["1"]))[0] if live else new_call_sid()
    base = call_form(call_sid, CallStatus=call_status)
    assert_handled(await send_signed(gateway, "/ivr/status", merged(base, fuzz)))


def sms_form(sender: str, body: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": "SM" + secrets.token_hex(16),
        "From": sender,
        "To": "+78005550101",
        "Body": body,
        "NumMedia": "0",
    }


SENDERS = st.one_of(
    st.sampled_from([MOBILE, "+79990001122", "89123456789", "EIRC", ""]),
    st.integers(900_000_000, 999_999_999).map(lambda n: f"+7{n}"),
    VALUES,
)


@FUZZ
@given(fuzz=fuzzed(list(sms_form("", ""))), sender=SENDERS, body=VALUES)
async def test_sms_inbound(gateway: Gateway, fuzz: Fuzzed, sender: str, body: str) -> None:
    assert_handled(await send_signed(gateway, "/sms/inbound", merged(sms_form(sender, body), fuzz)))


@FUZZ
@given(
    fuzz=fuzzed(["AccountSid", "MessageSid", "MessageStatus", "ErrorCode"]),
    sid=st.one_of(st.sampled_from(["SM" + f"{1:032d}", "SM" + "0" * 32]), VALUES),
    state=st.one_of(st.sampled_from(["delivered", "undelivered", "failed", "sent"]), VALUES),
)
async def test_sms_status(gateway: Gateway, fuzz: Fuzzed, sid: str, state: str) -> None:
    await gateway.twilio.post(
        "/sms/inbound", sms_form(MOBILE, "ВОССТАНОВИТЬ " + MOBILE_ONLY)
    )  # a code SMS whose status may come back
    base = {"AccountSid": "AC" + "0" * 32, "MessageSid": sid, "MessageStatus": state}
    base["ErrorCode"] = "30007"
    assert_handled(await send_signed(gateway, "/sms/status", merged(base, fuzz)))


# -- raw bodies -------------------------------------------------------------------------------

PATHS = [
    "/ivr/voice",
    "/ivr/step?s=0",
    "/ivr/verify?a=x",
    "/ivr/whisper",
    "/ivr/dial-result",
    "/ivr/status",
    "/sms/inbound",
    "/sms/status",
]
CONTENT_TYPES = st.sampled_from(
    [
        FORM_TYPE,
        FORM_TYPE + "; charset=utf-8",
        FORM_TYPE + "; charset=latin-1",
        "application/json",
        "text/plain",
        "text/xml",
        "multipart/form-data; boundary=xyz",
        "application/octet-stream",
        "",
        "APPLICATION/X-WWW-FORM-URLENCODED",
    ]
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda prefix, junk: prefix + junk,
        st.sampled_from([b"CallSid=CA1&Digits=", b"MessageSid=SM1&Body=", b"From=%2B7&", b""]),
        st.binary(max_size=100),
    ),
    st.sampled_from(
        [
            b"\xff\xfe\xfd",
            b"CallSid=CA%FF%FE",
            b"CallSid=CA%ED%A0%80",  # an encoded lone surrogate
            b"Body=%C0%80",  # overlong NUL
            b"=&=&&&",
            b"%",
            b"a=%zz",
            b'{"CallSid": "CA1"}',
            b"<Response/>",
            b"&".join([b"f=1"] * (MAX_FIELDS + 1)),
        ]
    ),
)


@FUZZ
@given(path=st.sampled_from(PATHS), body=BODIES, content_type=CONTENT_TYPES, sign=st.booleans())
async def test_raw_bodies(
    gateway: Gateway, path: str, body: bytes, content_type: str, sign: bool
) -> None:
    headers = {SIGNATURE: "bm90LXNpZ25lZA=="}
    if content_type:
        headers["content-type"] = content_type
    if sign:
        # Signed over the URL alone: a body that parses to fields no longer matches it.
        headers[SIGNATURE] = VALIDATOR.compute_signature(PUBLIC_BASE_URL + path, {})
    response = await gateway.twilio.http.post(path, content=body, headers=headers)
    assert_safe(response)


@settings(FUZZ, max_examples=min(EXAMPLES, 12))
@given(
    path=st.sampled_from(PATHS),
    size=st.integers(MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES),
    streamed=st.booleans(),
    content_type=CONTENT_TYPES,
)
async def test_overlong_bodies_are_413(
    gateway: Gateway, path: str, size: int, streamed: bool, content_type: str
) -> None:
    body = b"Body=" + b"x" * (size - 5)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    content: bytes | AsyncIterator[bytes] = chunks() if streamed else body
    headers = {"content-type": content_type, SIGNATURE: "bm90LXNpZ25lZA=="}
    response = await gateway.twilio.http.post(path, content=content, headers=headers)
    assert response.status_code == 413, response.status_code


@FUZZ
@given(path=st.sampled_from(PATHS), raw_query=st.binary(max_size=64), sign=st.booleans())
async def test_raw_query_strings(gateway: Gateway, path: str, raw_query: bytes, sign: bool) -> None:
    """Query strings as bytes (no HTTP client sends invalid UTF-8, a raw socket can)."""
    bare = path.split("?")[0]
    form = call_form(new_call_sid())
    text = raw_query.decode("utf-8", "replace")
    signature = VALIDATOR.compute_signature(PUBLIC_BASE_URL + bare + "?" + text, form)
    headers = {"content-type": FORM_TYPE, SIGNATURE: signature if sign else "bm90LXNpZ25lZA=="}
    status, content = await asgi_post(
        gateway.app, bare, raw_query, urlencode(form).encode(), headers
    )
    assert status < 500, (status, content[:300])
    if status == 200 and content:
        assert ET.fromstring(content).tag == "Response"


def test_signing_helper_matches_the_driver() -> None:
    """The fuzz signs like tests.support.twilio_driver (so its 'signed' requests really are)."""
    from tests.support.twilio_driver import sign

    params = {"CallSid": "CA1", "Body": "<]]>&"}
    url = PUBLIC_BASE_URL + "/sms/inbound"
    assert VALIDATOR.compute_signature(url, Pairs(list(params.items()))) == sign(
        AUTH_TOKEN, url, params
    )
