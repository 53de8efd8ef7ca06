"""Long-lived parts built once per process and handed to requests by dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.accounts.directory import AccountDirectory, SqlAccountDirectory
from core.accounts.http import CabinetClient, CabinetSettler, HttpAccountDirectory
from core.accounts.passwords import configure_hashing
from core.audit.log import AuditLog
from core.delivery.dispatcher import Dispatcher, RetryPolicy
from core.delivery.messenger import Messenger
from core.delivery.outbox import Delivery, build_messenger
from core.delivery.smtp import build_mailer
from core.escalations.service import CaseService
from core.models import OutboxMessage
from core.platform.clock import Clock, utcnow
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker
from core.platform.redis import create_redis
from core.platform.settings import DirectoryKind, Settings
from core.recovery.service import RecoveryService
from core.web.signature import SignatureVerifier
from voice_prompts import Catalogue, load_catalogue


@dataclass(eq=False)
class Services:
    """The process-wide parts: engine, sessions, Redis, keys, messenger, prompts."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    redis: Redis
    keyring: Keyring
    messenger: Messenger
    prompts: Catalogue
    verifier: SignatureVerifier
    dispatcher: Dispatcher
    # The cabinet's API client (GATEWAY_DIRECTORY=http), else None: the gateway's own tables.
    cabinet: CabinetClient | None = None
    # The one clock of the webhooks (working hours, the apology); tests set their own here.
    clock: Clock = utcnow

    def __repr__(self) -> str:
        return "Services(...)"

    @classmethod
    def build(cls, settings: Settings, messenger: Messenger | None = None) -> Services:
        """Build everything from settings; tests may pass a messenger of their own."""
        configure_hashing(settings)
        engine = create_engine(
            settings.database_url, timeout_seconds=settings.database_timeout_seconds
        )
        sessionmaker = create_sessionmaker(engine)
        keyring = Keyring(settings)
        messenger = messenger or build_messenger(settings)
        prompts = load_catalogue()
        services: Services

        async def on_failure(session: AsyncSession, row: OutboxMessage) -> None:
            if row.purpose == "code" and row.attempt_ref:
                # Bounced, refused, given up, too late or unknown: the call is offered.
                await services.recovery(session).mark_undelivered(
                    row.attempt_ref, row.error_code or row.reason or "send"
                )

        services = cls(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            redis=create_redis(settings.redis_url, timeout_seconds=settings.redis_timeout_seconds),
            keyring=keyring,
            messenger=messenger,
            prompts=prompts,
            verifier=SignatureVerifier(settings),
            dispatcher=Dispatcher(
                sessionmaker,
                messenger,
                keyring,
                on_failure,
                RetryPolicy.from_settings(settings),
                mailer=build_mailer(settings, prompts),
            ),
            cabinet=CabinetClient(settings) if settings.directory is DirectoryKind.http else None,
        )
        return services

    def directory(self, session: AsyncSession) -> AccountDirectory:
        """The accounts directory for one request: the cabinet's API, or the SQL tables bound to
        the request's transaction."""
        if self.cabinet is not None:
            return HttpAccountDirectory(self.cabinet, self.settings)
        return SqlAccountDirectory(session, self.settings)

    def cabinet_settler(self) -> CabinetSettler | None:
        """Repeats temporary-password PUTs whose outcome was unknown (§11), with the cabinet."""
        if self.cabinet is None:
            return None
        return CabinetSettler(self.cabinet, self.sessionmaker, self.keyring)

    async def close(self) -> None:
        """Release connections."""
        await self.redis.aclose()
        if self.cabinet is not None:
            await self.cabinet.close()
        await self.engine.dispose()

    def cases(self, session: AsyncSession) -> CaseService:
        """The operator cases, in one request's transaction."""
        return CaseService(session, self.keyring)

    def recovery(self, session: AsyncSession) -> RecoveryService:
        """The recovery service for one request's transaction."""
        return RecoveryService(
            settings=self.settings,
            redis=self.redis,
            keyring=self.keyring,
            directory=self.directory(session),
            delivery=Delivery(
                self.settings, session, self.keyring, self.dispatcher.notify, self.dispatcher.wake
            ),
            audit=AuditLog(session, self.keyring),
            prompts=self.prompts,
        )
