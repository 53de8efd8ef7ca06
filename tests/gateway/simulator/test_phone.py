"""The phone simulator against a small fake gateway that checks every Twilio signature."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from rich.console import Console
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from gateway.simulator import (
    CallerHungUp,
    CallResult,
    OutboxChannel,
    OutboxItem,
    PhoneSimulator,
    RichConsoleIO,
    ScriptedAnswer,
    ScriptedIO,
    sms_segments,
)

# The gateway is reached at one address but signs against another, as behind a proxy.
PUBLIC = "https://eirc.example.org"
GATEWAY = "http://gateway.internal:8000"
ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
AUTH_TOKEN = "simulator-test-auth-token-0123456789"
CALLER = "+79001234567"
OTHER_PHONE = "+79007654321"
HOTLINE = "+78005550100"
SMS_NUMBER = "+78005550101"
OPERATOR = "+78005550199"
OPERATOR_SIP = "sip:operator@pbx.example.org"
SMS_CODE = "481516"
CALL_SID = re.compile(r"^CA[0-9a-f]{32}$")

GREETING = "Здравствуйте. Восстановить пароль: 1."
NO_INPUT = "Мы вас не услышали. До свидания."


class FakeOutbox:
    """An in-memory outbox implementing the simulator's OutboxReader protocol."""

    def __init__(self) -> None:
        self.items: list[OutboxItem] = []

    def add(
        self,
        channel: OutboxChannel,
        to_number: str,
        *,
        body: str = "",
        url: str | None = None,
        sid: str | None = None,
    ) -> OutboxItem:
        from_number = SMS_NUMBER if channel == "sms" else HOTLINE
        item = OutboxItem(len(self.items) + 1, channel, to_number, from_number, body, url, sid)
        self.items.append(item)
        return item

    async def messages_for(self, phone_number: str, after_id: int) -> list[OutboxItem]:
        return [i for i in self.items if i.to_number == phone_number and i.id > after_id]


@dataclass
class Hit:
    path: str
    method: str
    form: dict[str, str]


@dataclass
class FakeGateway:
    app: FastAPI
    hits: list[Hit] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]

    def form(self, path: str) -> dict[str, str]:
        matches = [hit.form for hit in self.hits if hit.path == path]
        assert len(matches) == 1, f"{path} was requested {len(matches)} times"
        return matches[0]


def twiml(document: Any) -> Response:
    return Response(content=str(document), media_type="application/xml")


async def signed_form(request: Request) -> dict[str, str]:
    """Twilio's parameters, once X-Twilio-Signature checks out against the public URL."""
    # Validated against the public URL, never the Host header the request came in with.
    query = f"?{request.url.query}" if request.url.query else ""
    url = f"{PUBLIC}{request.url.path}{query}"
    if request.method == "GET":
        params: dict[str, str] = {}
        form = dict(request.query_params)
    else:
        params = {key: str(value) for key, value in (await request.form()).items()}
        form = {**dict(request.query_params), **params}
    signature = request.headers.get("X-Twilio-Signature", "")
    if not RequestValidator(AUTH_TOKEN).validate(url, params, signature):
        raise HTTPException(status_code=403)
    hits: list[Hit] = request.app.state.hits
    hits.append(Hit(request.url.path, request.method, form))
    return form


Form = Annotated[dict[str, str], Depends(signed_form)]


def build_gateway(outbox: FakeOutbox) -> FakeGateway:
    app = FastAPI()
    gateway = FakeGateway(app)
    app.state.hits = gateway.hits

    @app.post("/ivr/voice")
    async def voice(form: Form) -> Response:
        response = VoiceResponse()
        response.say(GREETING, language="ru-RU")
        gather = response.gather(
            num_digits=1, action="menu", input="dtmf speech", language="ru-RU", timeout=5
        )
        gather.say("Нажмите клавишу.", language="ru-RU")
        response.say(NO_INPUT, language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.post("/ivr/menu")
    async def menu(form: Form) -> Response:
        spoken = {"один": "1", "два": "2"}
        choice = form.get("Digits") or spoken.get(form.get("SpeechResult", "").lower(), "")
        response = VoiceResponse()
        if choice == "1":
            gather = response.gather(
                action="account",
                finish_on_key="#",
                input="dtmf speech",
                action_on_empty_result=True,
                language="ru-RU",
            )
            gather.say("Введите номер лицевого счёта и нажмите решётку.", language="ru-RU")
        elif choice == "2":
            response.redirect("redirected")
        elif choice == "3":
            response.redirect("/ivr/broken")
        elif choice == "4":
            response.redirect("loop")
        elif choice == "5":
            dial = response.dial(action="after-dial", caller_id=HOTLINE)
            dial.sip(OPERATOR_SIP)
        elif choice == "6":
            response.redirect("/ivr/not-xml")
        elif choice == "7":
            outbox.add("call", CALLER, url=f"{PUBLIC}/ivr/callback?attempt=42", sid="CA" + "7" * 32)
            response.say("Положите трубку, мы перезвоним.", language="ru-RU")
            response.hangup()
        elif choice == "8":
            outbox.add("sms", OTHER_PHONE, body="Код: 000000")
            outbox.add("sms", CALLER, body=f"Код: {SMS_CODE}")
            gather = response.gather(num_digits=6, action="code")
            gather.say("Введите код из SMS.", language="ru-RU")
        elif choice == "9":
            response.redirect("get-step?step=9", method="GET")
        elif choice == "0":
            response.enqueue("operators")
        else:
            response.say("Неверный выбор.", language="ru-RU")
            response.hangup()
        return twiml(response)

    @app.post("/ivr/account")
    async def account(form: Form) -> Response:
        number = form.get("Digits") or form.get("SpeechResult", "")
        response = VoiceResponse()
        if not number:
            response.say("Номер не введён.", language="ru-RU")
            response.hangup()
            return twiml(response)
        response.say(f"Вы ввели {number}", language="ru-RU")
        dial = response.dial(caller_id=HOTLINE)
        dial.number(OPERATOR, url=f"whisper?account={number[-4:]}")
        return twiml(response)

    @app.post("/ivr/whisper")
    async def whisper(form: Form) -> Response:
        response = VoiceResponse()
        response.say(f"Абонент, счёт на {form['account']}", language="ru-RU")
        return twiml(response)

    @app.post("/ivr/after-dial")
    async def after_dial(form: Form) -> Response:
        response = VoiceResponse()
        response.say("Спасибо, до свидания.", language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.post("/ivr/redirected")
    async def redirected(form: Form) -> Response:
        response = VoiceResponse()
        response.say("Вы были перенаправлены.", language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.get("/ivr/get-step")
    async def get_step(form: Form) -> Response:
        response = VoiceResponse()
        response.say(f"Шаг {form['step']}", language="ru-RU")
        return twiml(response)

    @app.post("/ivr/broken")
    async def broken(form: Form) -> Response:
        return Response(status_code=500)

    @app.post("/ivr/not-xml")
    async def not_xml(form: Form) -> Response:
        return Response(content="<Response><Say>unterminated", media_type="application/xml")

    @app.post("/ivr/loop")
    async def loop(form: Form) -> Response:
        response = VoiceResponse()
        response.redirect("loop")
        return twiml(response)

    @app.post("/ivr/code")
    async def code(form: Form) -> Response:
        response = VoiceResponse()
        correct = form.get("Digits") == SMS_CODE
        response.say("Код верный." if correct else "Код неверный.", language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.post("/ivr/callback")
    async def callback(form: Form) -> Response:
        response = VoiceResponse()
        gather = response.gather(num_digits=1, action="callback-code")
        gather.say("Нажмите любую клавишу, чтобы услышать код.", language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.post("/ivr/callback-code")
    async def callback_code(form: Form) -> Response:
        response = VoiceResponse()
        response.say("Ваш код: 4 8 1 5 1 6.", language="ru-RU")
        response.hangup()
        return twiml(response)

    @app.post("/ivr/status")
    async def status(form: Form) -> Response:
        return Response(status_code=204)

    @app.post("/sms/inbound")
    async def sms_inbound(form: Form) -> Response:
        body = form["Body"]
        if body.strip().upper() == "КОД":
            outbox.add("sms", CALLER, body="Код: 123456")
        response = MessagingResponse()
        response.message(f"Принято: {body}")
        return twiml(response)

    return gateway


@pytest.fixture
def outbox() -> FakeOutbox:
    return FakeOutbox()


@pytest.fixture
def gateway(outbox: FakeOutbox) -> FakeGateway:
    return build_gateway(outbox)


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app)) as http:
        yield http


SimFactory = Callable[..., PhoneSimulator]


@pytest.fixture
def make_sim(client: httpx.AsyncClient, outbox: FakeOutbox) -> SimFactory:
    def make(
        io: ScriptedIO, *, auth_token: str = AUTH_TOKEN, with_outbox: bool = True, **kwargs: Any
    ) -> PhoneSimulator:
        return PhoneSimulator(
            gateway_url=GATEWAY,
            public_base_url=PUBLIC,
            account_sid=ACCOUNT_SID,
            auth_token=auth_token,
            phone_number=CALLER,
            service_number=HOTLINE,
            sms_number=SMS_NUMBER,
            io=io,
            outbox=outbox if with_outbox else None,
            client=client,
            **kwargs,
        )

    return make


async def run_call(
    make_sim: SimFactory, answers: list[ScriptedAnswer]
) -> tuple[CallResult, ScriptedIO]:
    io_ = ScriptedIO(answers)
    result = await make_sim(io_).call()
    return result, io_


async def test_keys_lead_through_the_menu_to_an_operator_with_a_whisper(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, io_ = await run_call(make_sim, ["1", "1234567890#"])

    assert result.ended_by == "dial"
    assert io_.said[0] == (GREETING, "ru-RU")
    assert "Вы ввели 1234567890" in result.texts("say")
    assert "[transfer to +78005550199]" in io_.infos
    assert "[operator hears: Абонент, счёт на 7890]" in io_.infos
    assert gateway.paths() == [
        "/ivr/voice",
        "/ivr/menu",
        "/ivr/account",
        "/ivr/whisper",
        "/ivr/status",
    ]
    assert result.requests == 5
    assert result.dialed == [OPERATOR]

    first = gateway.form("/ivr/voice")
    assert CALL_SID.match(first["CallSid"])
    assert first["CallSid"] == result.call_sid
    assert first["CallStatus"] == "ringing"
    assert first["Direction"] == "inbound"
    assert (first["From"], first["To"]) == (CALLER, HOTLINE)
    assert (first["Caller"], first["Called"]) == (CALLER, HOTLINE)
    assert (first["FromCountry"], first["ToCountry"]) == ("RU", "RU")
    assert (first["AccountSid"], first["ApiVersion"]) == (ACCOUNT_SID, "2010-04-01")

    menu = gateway.form("/ivr/menu")
    assert menu["Digits"] == "1"
    assert menu["CallStatus"] == "in-progress"
    assert menu["CallSid"] == result.call_sid
    assert "SpeechResult" not in menu
    assert gateway.form("/ivr/account")["Digits"] == "1234567890"

    whisper = gateway.form("/ivr/whisper")
    assert whisper["Direction"] == "outbound-dial"
    assert whisper["ParentCallSid"] == result.call_sid
    assert CALL_SID.match(whisper["CallSid"])
    assert whisper["CallSid"] != result.call_sid
    assert (whisper["From"], whisper["To"]) == (HOTLINE, OPERATOR)

    status = gateway.form("/ivr/status")
    assert status["CallStatus"] == "completed"
    assert status["CallDuration"].isdigit()
    assert status["CallSid"] == result.call_sid


async def test_a_wrong_auth_token_gets_403_and_ends_the_call_as_an_error(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    io_ = ScriptedIO(["1"])
    result = await make_sim(io_, auth_token="not-the-auth-token").call()

    assert result.ended_by == "error"
    assert "[gateway answered HTTP 403]" in io_.infos
    assert "[gateway answered HTTP 403]" in result.errors
    assert gateway.hits == []
    assert io_.said == []
    assert io_.remaining == 1


async def test_speech_answers_send_speech_result_and_no_digits(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, _ = await run_call(make_sim, ["s:Один", "s: сто двадцать три"])

    menu = gateway.form("/ivr/menu")
    assert menu["SpeechResult"] == "Один"
    assert menu["Confidence"] == "0.9"
    assert "Digits" not in menu
    account = gateway.form("/ivr/account")
    assert account["SpeechResult"] == "сто двадцать три"
    assert "Digits" not in account
    assert "Вы ввели сто двадцать три" in result.texts("say")
    assert "speech: Один" in result.texts("input")


async def test_silence_falls_through_to_the_verbs_after_gather(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, io_ = await run_call(make_sim, [None])

    assert result.ended_by == "hangup"
    assert io_.said[-1] == (NO_INPUT, "ru-RU")
    assert gateway.paths() == ["/ivr/voice", "/ivr/status"]
    assert result.texts("input") == ["(silence)"]


async def test_silence_with_action_on_empty_result_posts_empty_digits(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, _ = await run_call(make_sim, ["1", ""])

    assert gateway.form("/ivr/account")["Digits"] == ""
    assert "Номер не введён." in result.texts("say")
    assert result.ended_by == "hangup"


async def test_num_digits_and_finish_on_key_shape_the_digits(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    await run_call(make_sim, ["15", "12 34#99"])

    assert gateway.form("/ivr/menu")["Digits"] == "1"
    assert gateway.form("/ivr/account")["Digits"] == "1234"


async def test_relative_redirect_is_followed(make_sim: SimFactory, gateway: FakeGateway) -> None:
    result, _ = await run_call(make_sim, ["2"])

    assert gateway.paths() == ["/ivr/voice", "/ivr/menu", "/ivr/redirected", "/ivr/status"]
    assert "Вы были перенаправлены." in result.texts("say")
    assert result.ended_by == "hangup"


async def test_get_redirect_is_signed_with_its_query(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, _ = await run_call(make_sim, ["9"])

    hit = gateway.hits[2]
    assert (hit.path, hit.method) == ("/ivr/get-step", "GET")
    assert hit.form["CallSid"] == result.call_sid
    assert "Шаг 9" in result.texts("say")
    assert result.ended_by == "end"


async def test_dial_with_action_posts_the_dial_status_and_goes_on(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, io_ = await run_call(make_sim, ["5"])

    after = gateway.form("/ivr/after-dial")
    assert after["DialCallStatus"] == "completed"
    assert CALL_SID.match(after["DialCallSid"])
    assert result.dialed == [OPERATOR_SIP]
    assert f"[transfer to {OPERATOR_SIP}]" in io_.infos
    assert "Спасибо, до свидания." in result.texts("say")
    assert result.ended_by == "hangup"


async def test_enqueue_ends_the_call(make_sim: SimFactory, gateway: FakeGateway) -> None:
    result, io_ = await run_call(make_sim, ["0"])

    assert result.ended_by == "enqueue"
    assert any("operators" in info for info in io_.infos)
    assert gateway.paths()[-1] == "/ivr/status"


@pytest.mark.parametrize(
    ("key", "shown"),
    [("3", "[gateway answered HTTP 500]"), ("6", "[gateway answered invalid XML")],
)
async def test_a_broken_answer_ends_the_call_as_an_error_without_crashing(
    make_sim: SimFactory, gateway: FakeGateway, key: str, shown: str
) -> None:
    result, io_ = await run_call(make_sim, [key])

    assert result.ended_by == "error"
    assert any(error.startswith(shown) for error in result.errors)
    assert any(info.startswith(shown) for info in io_.infos)
    assert gateway.form("/ivr/status")["CallStatus"] == "completed"


async def test_a_redirect_loop_is_cut_off(make_sim: SimFactory, gateway: FakeGateway) -> None:
    io_ = ScriptedIO(["4"])
    result = await make_sim(io_, max_requests=10).call()

    assert result.ended_by == "error"
    assert result.requests == 11  # ten TwiML fetches, then the status callback
    assert gateway.paths().count("/ivr/loop") == 8
    assert any("stopped after 10 requests" in error for error in result.errors)


async def test_sms_arriving_during_the_call_is_shown_and_can_be_keyed_back(
    make_sim: SimFactory, gateway: FakeGateway, outbox: FakeOutbox
) -> None:
    outbox.add("sms", CALLER, body="an SMS from before the simulator started")

    def code_from_sms() -> str:
        return sim.inbox[-1].body.removeprefix("Код: ")

    io_ = ScriptedIO(["8", code_from_sms])
    sim = make_sim(io_)
    result = await sim.call()

    assert f"[SMS from {SMS_NUMBER}: Код: {SMS_CODE}]" in io_.infos
    assert not any("000000" in info or "before the simulator" in info for info in io_.infos)
    assert [item.body for item in sim.inbox] == [f"Код: {SMS_CODE}"]
    assert gateway.form("/ivr/code")["Digits"] == SMS_CODE
    assert "Код верный." in result.texts("say")
    assert result.texts("sms") == [f"Код: {SMS_CODE}"]
    assert SMS_CODE not in repr(result)
    assert SMS_CODE not in repr(sim.inbox[-1])


async def test_a_call_from_the_outbox_is_answered_after_the_call_ends(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, io_ = await run_call(make_sim, ["7", "y", "5"])

    assert result.ended_by == "hangup"
    assert len(result.followup_calls) == 1
    callback = result.followup_calls[0]
    assert callback.direction == "outbound-api"
    assert callback.call_sid == "CA" + "7" * 32
    assert callback.ended_by == "hangup"
    assert "Ваш код: 4 8 1 5 1 6." in callback.texts("say")
    assert f"[incoming call from {HOTLINE}]" in io_.infos

    first = next(hit.form for hit in gateway.hits if hit.path == "/ivr/callback")
    assert first["attempt"] == "42"
    assert first["Direction"] == "outbound-api"
    assert first["CallStatus"] == "in-progress"
    assert (first["From"], first["To"]) == (HOTLINE, CALLER)
    assert first["CallSid"] == callback.call_sid
    assert gateway.form("/ivr/callback-code")["Digits"] == "5"
    statuses = [hit.form["CallSid"] for hit in gateway.hits if hit.path == "/ivr/status"]
    assert statuses == [result.call_sid, callback.call_sid]


async def test_a_declined_call_from_the_outbox_reports_no_answer(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, _ = await run_call(make_sim, ["7", "n"])

    callback = result.followup_calls[0]
    assert callback.ended_by == "caller"
    assert "/ivr/callback" not in gateway.paths()
    last = gateway.hits[-1]
    assert last.path == "/ivr/status"
    assert (last.form["CallSid"], last.form["CallStatus"]) == (callback.call_sid, "no-answer")


async def test_sms_gets_the_reply_and_the_sms_from_the_outbox(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    io_ = ScriptedIO()
    replies = await make_sim(io_).sms("код")

    assert replies == ["Принято: код"]
    assert io_.infos == ["[reply: Принято: код]", f"[SMS from {SMS_NUMBER}: Код: 123456]"]
    form = gateway.form("/sms/inbound")
    assert re.match(r"^SM[0-9a-f]{32}$", form["MessageSid"])
    assert form["SmsSid"] == form["MessageSid"]
    assert (form["From"], form["To"], form["Body"]) == (CALLER, SMS_NUMBER, "код")
    assert (form["NumSegments"], form["NumMedia"]) == ("1", "0")
    assert (form["AccountSid"], form["ApiVersion"]) == (ACCOUNT_SID, "2010-04-01")


async def test_sms_with_a_wrong_auth_token_shows_the_403(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    io_ = ScriptedIO()
    replies = await make_sim(io_, auth_token="not-the-auth-token").sms("HELP")

    assert replies == []
    assert io_.infos == ["[gateway answered HTTP 403]"]


async def test_the_caller_hangs_up_when_the_script_runs_out(
    make_sim: SimFactory, gateway: FakeGateway
) -> None:
    result, _ = await run_call(make_sim, [])

    assert result.ended_by == "caller"
    assert gateway.paths() == ["/ivr/voice", "/ivr/status"]


async def test_the_auth_token_stays_out_of_the_repr(make_sim: SimFactory) -> None:
    assert AUTH_TOKEN not in repr(make_sim(ScriptedIO()))


def test_rich_console_io_reads_keys_speech_silence_and_hang_up() -> None:
    out = io.StringIO()
    console_io = RichConsoleIO(
        Console(file=out, width=200, color_system=None),
        stdin=io.StringIO("1234#\n\ns:сто\nh\n"),
    )

    assert console_io.ask("press keys") == "1234#"
    assert console_io.ask("press keys") is None
    assert console_io.ask("press keys") == "s:сто"
    with pytest.raises(CallerHungUp):
        console_io.ask("press keys")
    with pytest.raises(CallerHungUp):
        console_io.ask("press keys")  # end of input

    console_io.say("Здравствуйте [1]", "ru-RU")
    console_io.info("[transfer to +78005550199]")
    printed = out.getvalue()
    assert "Здравствуйте [1]" in printed
    assert "[transfer to +78005550199]" in printed


@pytest.mark.parametrize(
    ("body", "segments"),
    [("код", 1), ("a" * 160, 1), ("a" * 161, 2), ("ж" * 70, 1), ("ж" * 71, 2), ("{" * 81, 2)],
)
def test_sms_segments(body: str, segments: int) -> None:
    assert sms_segments(body) == segments
