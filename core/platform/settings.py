"""Gateway settings, read from GATEWAY_* environment variables and `.env`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import date
from email.utils import parseaddr
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.kit.schedule import parse_hours, parse_zone

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development"})
DEV_SECRET_KEY = "development-only-secret-key-do-not-use-in-production"
DEV_AUTH_TOKEN = "development-only-auth-token"
PLACEHOLDER_ACCOUNT_SID = "AC-not-configured"
# A temporary password lives at most a day (§5): it is a bearer secret sent by SMS.
TEMP_PASSWORD_TTL_MAX_HOURS = 24


class Environment(StrEnum):
    development = "development"
    production = "production"


class MessengerKind(StrEnum):
    twilio = "twilio"
    outbox = "outbox"


class DirectoryKind(StrEnum):
    sql = "sql"  # the gateway's own tables, filled by `accounts import`
    http = "http"  # the personal cabinet's directory API (§11)


class OperatorRoute(StrEnum):
    dial = "dial"  # <Dial> the operator's number or SIP URI
    enqueue = "enqueue"  # <Enqueue> into a named queue that operators dequeue


class UnsafeSettingsError(Exception):
    """Raised when settings would be unsafe (or cannot work, like a database URL without a driver).

    Not a ValueError on purpose: pydantic lets it through unwrapped, so start-up fails with our
    one clear sentence rather than a validation dump that quotes the values (the secrets).
    """


# --- Connection URLs as operators write them (§7) --------------------------------------------
DATABASE_URL_HELP = (
    "write sqlite:///path/to/eirc-gateway.db (a file; four slashes for an absolute path) "
    "or postgresql://user:password@host:5432/dbname"
)
_SQLITE_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "sqlite+aiosqlite"})
_POSTGRES_DRIVERS = frozenset(
    {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg", "postgresql+asyncpg"}
)


def normalize_database_url(url: str) -> str:
    """The async-driver form of a database URL as an operator writes it; refuses others.

    `sqlite:///x.db` gets aiosqlite, `postgresql://` (`postgres://`, `+psycopg2`) asyncpg, and a
    libpq `sslmode=` becomes asyncpg's `ssl=`. The refusal names the scheme, never the URL (it may
    hold a password).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url.strip()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UnsafeSettingsError(
            f"GATEWAY_DATABASE_URL is not a URL (no scheme://): {DATABASE_URL_HELP}."
        ) from None
    driver = parsed.drivername.lower()
    # Only the scheme is replaced: the rest stays exactly as written (quoting, `:memory:`).
    rest = url.split("://", 1)[1]
    if driver in _SQLITE_DRIVERS:
        return f"sqlite+aiosqlite://{rest}"
    if driver in _POSTGRES_DRIVERS:
        if "sslmode" not in parsed.query:
            return f"postgresql+asyncpg://{rest}"
        query = dict(parsed.query)
        query["ssl"] = query.pop("sslmode")
        return parsed.set(drivername="postgresql+asyncpg", query=query).render_as_string(
            hide_password=False
        )
    raise UnsafeSettingsError(
        f"GATEWAY_DATABASE_URL: the gateway cannot use {driver}:// databases; {DATABASE_URL_HELP}."
    )


# --- end of connection URLs -------------------------------------------------------------------


# The SMTP relay (core/delivery/smtp.py sends through it).
# scheme -> (default port, TLS from the start, STARTTLS required)
SCHEMES = {
    "smtp": (25, False, False),
    "smtp+starttls": (587, False, True),
    "smtps": (465, True, False),
}
SMTP_URL_HELP = (
    "write smtp://host:25, smtp+starttls://user:password@host:587 or smtps://user:password@host:465"
)


@dataclass(frozen=True, slots=True)
class SmtpRelay:
    """Where and how to reach the relay; the password never shows in a repr."""

    hostname: str
    port: int
    use_tls: bool
    start_tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_smtp_url(url: str) -> SmtpRelay:
    """The relay a GATEWAY_SMTP_URL names; refuses what cannot work (never quoting the URL)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UnsafeSettingsError(f"GATEWAY_SMTP_URL is not a URL: {SMTP_URL_HELP}.") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        named = f"{scheme}://" if scheme else "no scheme"
        raise UnsafeSettingsError(f"GATEWAY_SMTP_URL has {named}: {SMTP_URL_HELP}.")
    if not parts.hostname:
        raise UnsafeSettingsError(f"GATEWAY_SMTP_URL names no host: {SMTP_URL_HELP}.")
    default_port, use_tls, start_tls = SCHEMES[scheme]
    return SmtpRelay(
        hostname=parts.hostname,
        port=port or default_port,
        use_tls=use_tls,
        start_tls=start_tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def mail_address(value: str) -> str:
    """The bare address of `Name <user@host>` or `user@host`; "" if there is none."""
    address = parseaddr(value)[1]
    local, at, domain = address.rpartition("@")
    return address if at and local and "." in domain else ""


class Settings(BaseSettings):
    """Everything the gateway can be configured with."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        # A refusal must not quote the values it was given: they include the secrets.
        hide_input_in_errors=True,
    )

    environment: Environment = Environment.development
    database_url: str = "sqlite+aiosqlite:///./eirc-gateway.db"
    redis_url: str = "memory://"
    public_base_url: str = "http://127.0.0.1:8000"
    workers: Annotated[int, Field(ge=1)] = 1

    twilio_account_sid: str = PLACEHOLDER_ACCOUNT_SID
    twilio_auth_token: SecretStr = SecretStr(DEV_AUTH_TOKEN)
    twilio_api_url: str | None = None
    twilio_timeout_seconds: float = 10.0
    messenger: MessengerKind = MessengerKind.outbox
    # Only an explicit development flag turns the X-Twilio-Signature check off (§6.1).
    dev_disable_signature_check: bool = False

    hotline_number: str = "+78005550100"
    sms_number: str = "+78005550101"
    operator_number: str = "+78005550199"
    default_region: str = "RU"
    allowed_countries: list[str] = ["RU"]

    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    account_number_pattern: str = r"^\d{6,12}$"
    account_number_max_length: Annotated[int, Field(ge=1, le=32)] = 12

    code_ttl_seconds: Annotated[int, Field(ge=30, le=600)] = 600
    code_max_wrong: Annotated[int, Field(ge=1, le=5)] = 5
    code_resend_cooldown_seconds: Annotated[int, Field(ge=0)] = 30
    call_state_ttl_seconds: Annotated[int, Field(ge=60)] = 3600

    temp_password_length: Annotated[int, Field(ge=8, le=64)] = 10
    # Lowercase Latin letters and digits without look-alikes (i l o 0 1) or letters that
    # Russian callers mishear or write in Cyrillic when dictated (h c j q w x y, §3).
    temp_password_alphabet: str = "abdefgkmnprstuvz23456789"
    temp_password_ttl_hours: Annotated[int, Field(ge=1, le=TEMP_PASSWORD_TTL_MAX_HOURS)] = 1

    menu_max_tries: Annotated[int, Field(ge=1, le=5)] = 3
    # §6.5: a cap, not a formality; above 50 a day it would no longer slow a guesser down.
    failed_verifications_per_day: Annotated[int, Field(ge=1, le=50)] = 10

    # Rate limits (§6.4), sliding windows in Redis (core/recovery/limits.py). A limit that trips is
    # an apology and the operator, never an error.
    # Recovery starts from one caller number (or SMS sender) per hour.
    rate_limit_caller_starts_per_hour: Annotated[int, Field(ge=1)] = 10
    # Code sends (SMS or call) asked for one account number, existing or not.
    rate_limit_account_sends_per_hour: Annotated[int, Field(ge=1)] = 5
    rate_limit_account_sends_per_day: Annotated[int, Field(ge=1)] = 10
    # Code messages or calls that actually went to one phone.
    rate_limit_destination_sends_per_hour: Annotated[int, Field(ge=1)] = 5
    # Codes to one number range (the number without its last 4 digits): pumping uses ranges.
    rate_limit_prefix_sends_per_hour: Annotated[int, Field(ge=1)] = 10
    # Every code SMS: the SMS-pumping breaker; every code call: the toll-fraud breaker. Kept
    # apart, so that a tripped SMS breaker can still offer the code by call (§6.17).
    rate_limit_global_outbound_per_hour: Annotated[int, Field(ge=1)] = 500
    rate_limit_global_calls_per_hour: Annotated[int, Field(ge=1)] = 200
    # The share of each budget that only destinations without a code in the last hour may use,
    # so that one attacker sending to a few hundred phones cannot deny codes to the city.
    rate_limit_global_reserve_percent: Annotated[int, Field(ge=10, le=90)] = 30
    # SMS replies (TwiML <Message>, §6.14): to one sender with no recovery in progress; to one
    # recovery (its request, wrong codes, the call, the operator...); and all replies together,
    # a budget of their own so that replies cannot spend the codes' budget (or codes theirs).
    rate_limit_sender_replies_per_hour: Annotated[int, Field(ge=1)] = 5
    rate_limit_replies_per_recovery: Annotated[int, Field(ge=1)] = 8
    rate_limit_global_replies_per_hour: Annotated[int, Field(ge=1)] = 1000

    # TTS voices; SSML (<break>, <sub>, <prosody>) is used with Polly./Google. voices only.
    voice_ru: str = "Polly.Tatyana"
    voice_en: str = "Polly.Joanna"
    # How long a menu waits for a key.
    gather_timeout_seconds: Annotated[int, Field(ge=3, le=30)] = 7
    # How long the account number and code entry wait: the caller is finding the bill or
    # reading the SMS on the phone in hand (§3).
    entry_timeout_seconds: Annotated[int, Field(ge=15, le=60)] = 20
    # Recorded prompts (§3): `<dir>/<language>/<prompt key>.wav|mp3` played instead of TTS.
    # Served by the gateway at /audio, or from `prompt_audio_url` (a CDN with the same files).
    prompt_audio_dir: Path | None = None
    prompt_audio_url: str = ""

    # Outbound messages leave this long after the webhook's response, so that the response is
    # on its way before the CPU turns to the provider round trip (timing must not tell, §6.2).
    dispatch_delay_ms: Annotated[int, Field(ge=0, le=5000)] = 50

    # --- Dependency timeouts (docs/operations.md "Faults"). Twilio gives a webhook 15 s; a
    # Redis or database that is down or stalled must turn into the apology and the operator
    # within a couple of seconds, never into dead air.
    # Redis: connecting and each command; a failed command is retried once on a new connection
    # (a restarted server), so a stalled Redis costs a webhook at most about twice this.
    redis_timeout_seconds: Annotated[float, Field(gt=0, le=10)] = 1.0
    # PostgreSQL: connecting, waiting for a pooled connection, and each statement.
    database_timeout_seconds: Annotated[float, Field(gt=0, le=10)] = 3.0
    # --- end of the dependency timeouts block -------------------------------------------------

    # --- Operator console (console) -------------------------------------------------
    # Sign-in sessions live in Redis; the cookie holds only an opaque random id.
    console_session_minutes: Annotated[int, Field(ge=5, le=24 * 60)] = 480
    # None: Secure cookies exactly when GATEWAY_PUBLIC_BASE_URL is https (off for the plain-http
    # demo); true/false forces it, e.g. behind a TLS-terminating proxy on a private http URL.
    console_cookie_secure: bool | None = None
    # Sign-in attempts per quarter hour, per username and per client address (sliding windows).
    console_signin_per_user: Annotated[int, Field(ge=1)] = 5
    console_signin_per_ip: Annotated[int, Field(ge=1)] = 20
    # --- end of the operator console block ----------------------------------------------------

    # -- Operator routing and working hours (§3, issue 5; docs/operations.md) --------------
    # `operator_number` (above) is an E.164 number or a `sip:` URI; with the enqueue route the
    # caller waits in `operator_queue`, and operators' phones dial in to /ivr/operator-desk.
    operator_route: OperatorRoute = OperatorRoute.dial
    operator_queue: Annotated[str, Field(min_length=1, max_length=64)] = "eirc-operators"
    operator_dial_timeout_seconds: Annotated[int, Field(ge=5, le=120)] = 30
    # The hold prompt (position, estimated wait) is repeated after this pause.
    operator_queue_repeat_seconds: Annotated[int, Field(ge=5, le=120)] = 20
    # The operators' working hours, e.g. "mon-fri 08:00-20:00; sat 10:00-16:00" (core/kit/).
    # Empty: the desk is always open (and holidays do not apply).
    operator_hours: str = ""
    operator_timezone: str = "Europe/Moscow"
    # Extra days off, e.g. ["2026-12-30"]; Russia's official holidays come from `holidays`.
    operator_holidays: list[date] = []
    operator_official_holidays: bool = True

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("smtp_url", mode="before")
    @classmethod
    def _empty_smtp_url_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("operator_number")
    @classmethod
    def _check_operator_number(cls, value: str) -> str:
        if not re.fullmatch(r"\+[1-9]\d{6,14}|sip:[^\s<>\"]+@[^\s<>\"]+", value):
            raise ValueError("GATEWAY_OPERATOR_NUMBER must be an E.164 number or a sip: URI")
        return value

    @field_validator("operator_hours")
    @classmethod
    def _check_operator_hours(cls, value: str) -> str:
        parse_hours(value)  # a HoursError (a ValueError) names what is wrong
        return value

    @field_validator("operator_timezone")
    @classmethod
    def _check_operator_timezone(cls, value: str) -> str:
        parse_zone(value)
        return value

    # -- end of operator routing and working hours -----------------------------------------

    # --- Outbound delivery: retries and failures (core/delivery/, docs/operations.md) ---
    # A send Twilio certainly did not take (5xx, 429, no connection) is retried with exponential
    # backoff and full jitter: attempt n waits a random time up to min(max, base * 2^(n-1))
    # seconds (at least Retry-After on a 429), and gives up after max_attempts requests.
    outbox_max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    outbox_retry_base_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    outbox_retry_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # How long a dispatcher's claim on a row lasts: longer than one Twilio request can take.
    outbox_lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # A code is not sent in the last seconds of its validity: it must arrive while valid.
    outbox_code_send_margin_seconds: Annotated[int, Field(ge=0, le=300)] = 60
    # On shutdown, how long in-flight sends may take to finish; unsent rows stay queued.
    outbox_shutdown_grace_seconds: Annotated[float, Field(ge=0, le=60)] = 10.0

    # --- The code by a voice call (§3; core/recovery/code_calls.py) ---
    # Asked for in a call, it is placed once that call has ended: on the inbound call's
    # `completed` status callback, or after this many seconds when no callback comes (the
    # number's "call status changes" webhook is not configured).
    verification_call_wait_seconds: Annotated[int, Field(ge=0, le=120)] = 20
    # Busy, no answer or failed: placed again this many times, this many seconds apart.
    verification_call_retries: Annotated[int, Field(ge=0, le=5)] = 2
    verification_call_retry_seconds: Annotated[int, Field(ge=10, le=300)] = 120

    # --- The accounts directory (§7, §11; docs/cabinet-api.md) ---------------------------------
    directory: DirectoryKind = DirectoryKind.sql
    # The cabinet's API base URL without a trailing slash, e.g. https://cabinet.internal/recovery/v1
    directory_url: str = ""
    directory_secret: SecretStr = SecretStr("")
    directory_timeout_seconds: Annotated[float, Field(gt=0, le=5)] = 2.0
    # Every look-up takes at least this long, so the cabinet's timing tells nothing (§6.2).
    directory_min_lookup_ms: Annotated[int, Field(ge=0, le=3000)] = 300
    # Mutual TLS (optional): the gateway's client certificate and key, and the cabinet's CA.
    directory_client_cert: str | None = None
    directory_client_key: str | None = None
    directory_ca: str | None = None
    # --- end of the accounts directory block ------------------------------------------------
    # --- Operators' desk, console sends, Argon2id, trusted proxies (issue 10: §5, §6.11, §6.15)
    # The desk (/ivr/operator-desk) bridges nobody before an operator's own PIN (§6.11). Failed
    # PIN checks per calling number per hour, and in all per hour from numbers no operator has
    # signed in from yet (a recognised desk phone is never held back by strangers' guesses).
    operator_desk_signin_per_caller: Annotated[int, Field(ge=1, le=20)] = 5
    operator_desk_signin_unrecognised: Annotated[int, Field(ge=1, le=200)] = 10
    # A SIP desk whose endpoints the PBX authenticates may skip the PIN: applied only when the
    # call's From is a sip: URI (a PSTN caller ID never is). Off by default.
    operator_desk_trust_sip: bool = False
    # Console credential sends (§6.15): per operator per hour, per account number per day.
    console_sends_per_operator: Annotated[int, Field(ge=1, le=200)] = 20
    console_sends_per_account: Annotated[int, Field(ge=1, le=20)] = 3
    # Argon2id (§5): OWASP's minimum by default, configurable upwards only; hashes run in a
    # bounded pool of this many threads (each holds its memory cost while it runs).
    argon2_memory_kib: Annotated[int, Field(ge=19 * 1024, le=1024 * 1024)] = 19 * 1024
    argon2_time_cost: Annotated[int, Field(ge=2, le=20)] = 2
    argon2_parallelism: Annotated[int, Field(ge=1, le=16)] = 1
    argon2_pool_size: Annotated[int, Field(ge=1, le=32)] = 2
    # Proxies whose X-Forwarded-For the console believes (addresses or CIDRs, e.g.
    # ["127.0.0.1"] behind the nginx of deploy/). Empty: the peer address is the client.
    trusted_proxies: list[str] = []

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    "GATEWAY_TRUSTED_PROXIES must list IP addresses or networks (CIDR)"
                ) from None
        return [entry.strip() for entry in value]

    # --- end of the issue 10 block -------------------------------------------------------------
    # --- E-mail notices (§6.8, §7; core/delivery/smtp.py, docs/operations.md) ---
    # The billing centre's relay: smtp://host:25, smtp+starttls://user:password@host:587 or
    # smtps://user:password@host:465. Unset: e-mails stay in the outbox (`eirc-gateway outbox`).
    smtp_url: SecretStr | None = None
    # The From header, e.g. "ЕИРЦ <noreply@eirc.example.ru>"; required with GATEWAY_SMTP_URL.
    mail_from: str = ""
    # Connecting and each SMTP command.
    smtp_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    # CA certificates (PEM) for a relay whose certificate an internal CA signed; unset: the
    # system's CAs. The relay's certificate is always checked (TLS and STARTTLS).
    smtp_ca_file: str | None = None
    # --- end of the e-mail block ------------------------------------------------------------

    log_json: bool = False
    log_level: str = "INFO"

    # --- Issue 10: metrics and start-up checks (docs/operations.md "What to monitor") ------
    # Prometheus sends it as `Authorization: Bearer …`; required outside development. Unset in
    # development, /metrics answers loopback clients only.
    metrics_token: SecretStr | None = None
    # --- end of the issue 10 block --------------------------------------------------------

    @cached_property
    def account_number_regex(self) -> re.Pattern[str]:
        """The compiled account number pattern."""
        return re.compile(self.account_number_pattern)

    @property
    def signature_check_enabled(self) -> bool:
        """Whether webhooks must carry a valid X-Twilio-Signature."""
        return not self.dev_disable_signature_check

    @property
    def console_cookies_secure(self) -> bool:
        """Whether console cookies carry the Secure flag."""
        if self.console_cookie_secure is not None:
            return self.console_cookie_secure
        return self.public_base_url.startswith("https://")

    @property
    def uses_memory_redis(self) -> bool:
        """Whether Redis is the in-process stand-in."""
        return self.redis_url.startswith("memory://")

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Self:
        if self.uses_memory_redis and self.workers > 1:
            raise UnsafeSettingsError(
                "GATEWAY_REDIS_URL=memory:// keeps state inside one process; "
                "set a real Redis URL to run more than one worker."
            )
        if self.directory is DirectoryKind.http:
            self._check_directory()
        if len(set(self.temp_password_alphabet)) < 16:
            raise UnsafeSettingsError(
                "GATEWAY_TEMP_PASSWORD_ALPHABET needs at least 16 characters."
            )
        if self.smtp_url is not None:
            self._check_mail()
        # Every environment but development is held to production's rules.
        if self.environment is not Environment.development:
            self._refuse_unsafe_production()
        return self

    def development_warnings(self) -> list[str]:
        """What a development start-up must warn about: settings names only, never values."""
        warnings: list[str] = []
        if _is_placeholder_token(self.twilio_auth_token):
            warnings.append(
                "GATEWAY_TWILIO_AUTH_TOKEN is the public development placeholder: anyone can "
                "sign webhooks for this gateway"
            )
        if self.dev_disable_signature_check:
            warnings.append(
                "GATEWAY_DEV_DISABLE_SIGNATURE_CHECK is on: webhooks are not authenticated"
            )
        return warnings

    def _check_directory(self) -> None:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.directory_url):
            raise UnsafeSettingsError(
                "GATEWAY_DIRECTORY=http needs GATEWAY_DIRECTORY_URL, the cabinet API's base URL, "
                "e.g. https://cabinet.internal/recovery/v1."
            )
        if len(self.directory_secret.get_secret_value()) < 32:
            raise UnsafeSettingsError(
                "GATEWAY_DIRECTORY_SECRET must be the secret shared with the cabinet, "
                "at least 32 characters."
            )
        if bool(self.directory_client_cert) != bool(self.directory_client_key):
            raise UnsafeSettingsError(
                "Mutual TLS needs both GATEWAY_DIRECTORY_CLIENT_CERT and "
                "GATEWAY_DIRECTORY_CLIENT_KEY."
            )

    def _check_mail(self) -> None:
        assert self.smtp_url is not None
        parse_smtp_url(self.smtp_url.get_secret_value())
        if not mail_address(self.mail_from):
            raise UnsafeSettingsError(
                "GATEWAY_SMTP_URL needs GATEWAY_MAIL_FROM, the sender's address, "
                'e.g. "ЕИРЦ <noreply@eirc.example.ru>".'
            )

    def _refuse_unsafe_production(self) -> None:
        problems: list[str] = []
        if _is_placeholder_token(self.twilio_auth_token):
            problems.append("GATEWAY_TWILIO_AUTH_TOKEN is a placeholder")
        key = self.secret_key.get_secret_value()
        if key.lower() in PLACEHOLDER_SECRETS or key == DEV_SECRET_KEY or len(key) < 32:
            problems.append("GATEWAY_SECRET_KEY must be a random value of at least 32 characters")
        if self.twilio_account_sid == PLACEHOLDER_ACCOUNT_SID:
            problems.append("GATEWAY_TWILIO_ACCOUNT_SID is not set")
        if self.dev_disable_signature_check:
            problems.append("GATEWAY_DEV_DISABLE_SIGNATURE_CHECK is on")
        if self.uses_memory_redis:
            problems.append("GATEWAY_REDIS_URL=memory:// is for the demo only")
        if not self.public_base_url.startswith("https://"):
            problems.append("GATEWAY_PUBLIC_BASE_URL must be the https:// address Twilio calls")
        metrics = self.metrics_token.get_secret_value() if self.metrics_token else ""
        if metrics.lower() in PLACEHOLDER_SECRETS or len(metrics) < 32:
            problems.append(
                "GATEWAY_METRICS_TOKEN must be a random value of at least 32 characters"
            )
        if problems:
            raise UnsafeSettingsError(
                f"Refusing to start in {self.environment.value}: " + "; ".join(problems) + "."
            )


def _is_placeholder_token(token: SecretStr) -> bool:
    value = token.get_secret_value()
    return value.lower() in PLACEHOLDER_SECRETS or value == DEV_AUTH_TOKEN
