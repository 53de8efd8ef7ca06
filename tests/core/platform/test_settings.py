"""Settings refuse what would break a rule: unsafe bounds (§5, §6.5) in any environment, the
public placeholder auth token outside development, and warn about it loudly in development."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError
from structlog.testing import capture_logs

from core.platform.settings import DEV_AUTH_TOKEN, Environment, Settings, UnsafeSettingsError
from gateway.app import create_app
from tests.conftest import AUTH_TOKEN
from tests.ivr.test_webhooks import SAFE_PRODUCTION

ALPHABET_16 = "abcdefghkmnprstu"

# (setting, the widest value the rule allows, a value just beyond it, an absurd one)
BOUNDS: list[tuple[str, Any, Any, Any]] = [
    # §5: a code is valid at most 10 minutes ...
    ("code_ttl_seconds", 600, 601, 24 * 3600),
    # ... and is invalidated after at most 5 wrong entries.
    ("code_max_wrong", 5, 6, 50),
    # §6.5: the failed-verification cap is a cap.
    ("failed_verifications_per_day", 50, 51, 10_000),
    ("failed_verifications_per_day", 1, 0, -1),
    # §5: the temporary password is long enough and drawn from a large enough alphabet.
    ("temp_password_length", 8, 7, 4),
    ("temp_password_alphabet", ALPHABET_16, ALPHABET_16[:-1], "a" * 40),
]


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


@pytest.mark.parametrize(("name", "limit", "beyond", "absurd"), BOUNDS)
def test_settings_refuse_values_beyond_the_rules(
    name: str, limit: Any, beyond: Any, absurd: Any
) -> None:
    assert getattr(make(**{name: limit}), name) == limit  # the bound itself is allowed
    for value in (beyond, absurd):
        with pytest.raises((ValidationError, UnsafeSettingsError)):
            make(**{name: value})


def test_the_defaults_are_within_the_bounds() -> None:
    settings = make()
    assert settings.code_ttl_seconds <= 600 and settings.code_max_wrong <= 5
    assert settings.failed_verifications_per_day == 10


# -- the public placeholder auth token ---------------------------------------------------------


@pytest.mark.parametrize(
    "environment", [e for e in Environment if e is not Environment.development]
)
@pytest.mark.parametrize("token", [DEV_AUTH_TOKEN, "", "changeme"])
def test_every_environment_but_development_refuses_the_placeholder_token(
    environment: Environment, token: str
) -> None:
    values = {**SAFE_PRODUCTION, "environment": environment.value, "twilio_auth_token": token}
    with pytest.raises(UnsafeSettingsError, match="GATEWAY_TWILIO_AUTH_TOKEN"):
        make(**values)


def test_an_unknown_environment_does_not_start() -> None:
    with pytest.raises(ValidationError):
        make(**{**SAFE_PRODUCTION, "environment": "staging"})


async def startup_warnings(settings: Settings) -> list[MutableMapping[str, Any]]:
    """The warnings the app logs while it starts."""
    app = create_app(settings)
    with capture_logs() as logs:
        async with app.router.lifespan_context(app):
            pass
    return [entry for entry in logs if entry["event"] == "startup.unsafe_setting"]


@pytest.mark.usefixtures("restore_logging")
async def test_development_warns_at_start_up_about_the_placeholder_token(
    settings: Settings,
) -> None:
    placeholder = settings.model_copy(update={"twilio_auth_token": SecretStr(DEV_AUTH_TOKEN)})
    warnings = await startup_warnings(placeholder)
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "GATEWAY_TWILIO_AUTH_TOKEN" in warnings[0]["warning"]
    assert DEV_AUTH_TOKEN not in repr(warnings)


@pytest.mark.usefixtures("restore_logging")
async def test_development_warns_when_the_signature_check_is_off(settings: Settings) -> None:
    unchecked = settings.model_copy(update={"dev_disable_signature_check": True})
    warnings = await startup_warnings(unchecked)
    assert ["GATEWAY_DEV_DISABLE_SIGNATURE_CHECK" in w["warning"] for w in warnings] == [True]


@pytest.mark.usefixtures("restore_logging")
async def test_a_real_token_starts_without_a_warning(settings: Settings) -> None:
    assert settings.twilio_auth_token.get_secret_value() == AUTH_TOKEN
    assert await startup_warnings(settings) == []
