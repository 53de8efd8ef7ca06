"""The FastAPI application: the one place that wires every part together."""

from __future__ import annotations

import asyncio
import gc
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from console import install_console
from core.accounts.http import CabinetSettler
from core.delivery.messenger import Messenger
from core.delivery.outbox import purge_expired_secrets
from core.platform.container import Services
from core.platform.db import transaction
from core.platform.settings import Settings
from core.web.deps import ServicesDep
from gateway.logging import configure_logging
from ivr.router import routers as voice_routers
from sms.router import router as sms_router
from voice_prompts.recordings import AUDIO_PATH

log = structlog.get_logger(__name__)


LOOPBACK = frozenset({"127.0.0.1", "::1"})
# The contract the cabinet's developers implement (DESIGN §11), shipped with the gateway.
CABINET_API = Path(__file__).resolve().parents[1] / "docs" / "cabinet-api.yaml"

SWEEP_INTERVAL_SECONDS = 30
# The sweeper wakes for a retry that falls due sooner, but not more often than this.
SWEEP_MIN_SECONDS = 0.2


async def _sweep_outbox(services: Services) -> None:
    """Send anything left queued or due for a retry, and blank expired secrets."""
    while not services.dispatcher.stopping:
        wait: float = SWEEP_INTERVAL_SECONDS
        try:
            await services.dispatcher.drain()
            async with transaction(services.sessionmaker) as session:
                purged = await purge_expired_secrets(session, services.settings)
            if purged:
                log.info("outbox.purged", messages=purged)
            due = await services.dispatcher.seconds_until_due()
            if due is not None:
                wait = min(wait, max(due, SWEEP_MIN_SECONDS))
        except Exception as exc:
            log.warning("outbox.sweep_failed", error=type(exc).__name__)
        # Woken early when a request's send schedules a retry that may fall due sooner.
        await services.dispatcher.nap(wait)


async def _settle_cabinet(services: Services, settler: CabinetSettler) -> None:
    """Repeat the temporary-password PUTs whose outcome was unknown until the cabinet answers."""
    while not services.dispatcher.stopping:
        try:
            await settler.settle()
        except Exception as exc:
            log.warning("cabinet.settle_failed", error=type(exc).__name__)
        await services.dispatcher.nap(SWEEP_INTERVAL_SECONDS)


def create_app(settings: Settings | None = None, *, messenger: Messenger | None = None) -> FastAPI:
    """Build the gateway app; tests pass their own settings and messenger."""
    settings = settings or Settings()
    configure_logging(json=settings.log_json, level=settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Outside development these refuse to start (core/platform/settings.py); here they are loud.
        for warning in settings.development_warnings():
            log.warning("startup.unsafe_setting", warning=warning)
        services = Services.build(settings, messenger=messenger)
        app.state.services = services
        purger = asyncio.create_task(_sweep_outbox(services))
        settler = services.cabinet_settler()
        settling = asyncio.create_task(_settle_cabinet(services, settler)) if settler else None
        # Everything built so far (modules, the app, its routes, the services) lives as long as
        # the process: moved out of the collector's generations, it is not walked again by every
        # full collection, which otherwise costs a busy server more CPU than whole menu steps
        # (docs/performance.md). Objects made later are collected as ever.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            # Graceful shutdown (outbound delivery): uvicorn has finished the in-flight requests
            # (and the sends they started); now stop claiming rows and let the sends in flight
            # (the sweeper's) finish, bounded. Whatever is still queued waits for the next
            # process: it was committed, nothing is lost.
            grace = settings.outbox_shutdown_grace_seconds
            await services.dispatcher.close(grace)
            # The sweeper, woken, ends at its next check rather than being cut off mid-query.
            with suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(purger, timeout=max(grace, 1.0))
            if settling is not None:
                settling.cancel()
                with suppress(asyncio.CancelledError):
                    await settling
            await services.close()

    app = FastAPI(
        title="EIRC Recovery Gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    for router in voice_routers:
        app.include_router(router)
    app.include_router(sms_router)
    if settings.prompt_audio_dir is not None and not settings.prompt_audio_url:
        # Recorded prompts (§3), fetched by Twilio for <Play>: read-only files, GET only.
        app.mount(
            AUDIO_PATH,
            StaticFiles(directory=settings.prompt_audio_dir, check_dir=False),
            name="audio",
        )
    # The operator console (/console/): signed-in operators, not Twilio webhooks.
    install_console(app)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        """The process is up."""
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse)
    async def readyz(services: ServicesDep, response: Response) -> str:
        """The database, Redis and (GATEWAY_DIRECTORY=http) the cabinet's API are reachable: 503
        naming the ones that are not (names only, never a URL or an error text). All are asked
        at once, each within its own timeout, so a stalled dependency cannot hold the probe."""

        async def database() -> None:
            async with services.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

        async def redis() -> None:
            await services.redis.ping()

        async def down(name: str, check: Callable[[], Awaitable[None]], seconds: float) -> str:
            try:
                # Twice the timeout: Redis retries once, the database may connect, then query.
                await asyncio.wait_for(check(), timeout=2 * seconds)
            except Exception:
                return name
            return ""

        async def cabinet() -> None:
            if services.cabinet is not None and not await services.cabinet.ping():
                raise ConnectionError("cabinet")

        settings = services.settings
        problems = [
            name
            for name in await asyncio.gather(
                down("database", database, settings.database_timeout_seconds),
                down("redis", redis, settings.redis_timeout_seconds),
                # The cabinet's API (GATEWAY_DIRECTORY=http): a signed GET answered without 5xx.
                down("cabinet", cabinet, settings.directory_timeout_seconds),
            )
            if name
        ]
        if problems:
            response.status_code = 503
            return "unavailable: " + ", ".join(problems)
        return "ready"

    @app.get("/cabinet-api.yaml", response_class=PlainTextResponse)
    async def cabinet_api() -> Response:
        """The cabinet directory API (§11) as OpenAPI: what a billing centre's cabinet serves."""
        document = await asyncio.to_thread(CABINET_API.read_bytes)
        return Response(document, media_type="application/yaml")

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: with GATEWAY_METRICS_TOKEN, to the bearer of that token only
        (401 otherwise); without one (development only), to loopback clients only (404)."""
        token = settings.metrics_token
        if token is None:
            client = request.client.host if request.client else ""
            if client not in LOOPBACK:
                return Response(status_code=404)
        elif not _bearer_matches(
            request.headers.get("authorization", ""), token.get_secret_value()
        ):
            log.warning("metrics.unauthorized")
            return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header carries this bearer token (compared in constant time)."""
    scheme, _, credentials = header.partition(" ")
    presented = credentials.strip().encode() if scheme.lower() == "bearer" else b""
    return hmac.compare_digest(presented, token.encode())
