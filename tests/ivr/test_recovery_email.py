"""A completed recovery mails the e-mail on file through a real SMTP relay (§6.8, §7)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from core.platform.settings import Settings
from tests.conftest import SECOND_MOBILE, TWO_MOBILES_EMAIL, Gateway, queued_emails
from tests.ivr.test_voice_recovery import last_code, reach_method_choice, spoken_password
from tests.support.smtp_server import SmtpServer

EMAIL = "e.smirnova@example.ru"
FIRST_MOBILE = "+79037771230"


@pytest.fixture
def settings(settings: Settings, smtp_server: SmtpServer) -> Settings:
    return settings.model_copy(
        update={"smtp_url": SecretStr(smtp_server.url), "mail_from": "ЕИРЦ <noreply@eirc.example>"}
    )


async def test_a_voice_recovery_mails_a_notice_without_secrets(
    gateway: Gateway, smtp_server: SmtpServer
) -> None:
    call = gateway.call()
    await reach_method_choice(call, TWO_MOBILES_EMAIL)
    await call.press("1")  # the code by SMS to the first mobile
    code = last_code(gateway, FIRST_MOBILE)
    await call.press(code)
    password = await spoken_password(call)

    (mail,) = await smtp_server.wait_for(1)
    assert mail.rcpt_tos == [EMAIL] and mail.message["To"] == EMAIL
    text = mail.text
    # Russian, then an English line; the hotline to call if it was not the resident.
    assert "восстановлен через горячую линию" in text
    assert "restored through the hotline" in text
    assert gateway.settings.hotline_number in text
    for secret in (password, code):
        assert secret not in text and secret.encode() not in mail.raw
    # The outbox row says it went, and keeps no text.
    assert await queued_emails(gateway.settings, EMAIL) == [""]
    assert len(gateway.messenger.to(SECOND_MOBILE)) == 1  # the SMS notice as before
