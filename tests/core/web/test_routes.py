"""The guarded route class (core/web/routes.py): a request's transaction is committed before
its response, rolled back when the endpoint fails, and refused on a route that cannot finish it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import httpx
from fastapi import APIRouter, BackgroundTasks, FastAPI, Request, Response
from sqlalchemy import text

from core.platform.container import Services
from core.platform.db import create_engine, create_sessionmaker
from core.web.deps import request_transaction
from core.web.routes import fallback_route
from core.web.signature import TwilioForm


class Crash(Exception):
    pass


def sorry(_request: Request, _form: TwilioForm | None) -> Response:
    return Response("sorry", media_type="text/plain")


class FakeDispatcher:
    """Counts drains; `notify` marks the current request as having queued a message."""

    def __init__(self) -> None:
        self.flag = [False]
        self.drains = 0

    def track_request(self) -> list[bool]:
        self.flag = [False]
        return self.flag

    def notify(self) -> None:
        self.flag[0] = True

    async def drain(self) -> int:
        self.drains += 1
        return 0


async def test_what_a_request_queued_is_sent_once_its_response_is_out() -> None:
    dispatcher = FakeDispatcher()
    services = SimpleNamespace(dispatcher=dispatcher, settings=SimpleNamespace(dispatch_delay_ms=0))
    guarded = APIRouter(route_class=fallback_route(sorry))
    drains_when_answered: list[int] = []

    @guarded.post("/step/{queues}")
    async def step(queues: str, background: BackgroundTasks) -> Response:
        if queues == "yes":
            dispatcher.notify()
        # An endpoint's own background task still runs, before the send.
        background.add_task(lambda: drains_when_answered.append(dispatcher.drains))
        return Response(queues, media_type="text/plain")

    app = FastAPI()
    app.state.services = services
    app.include_router(guarded)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.post("/step/no")).text == "no"
        assert dispatcher.drains == 0  # a menu step queues nothing: nothing is drained
        assert (await client.post("/step/yes")).text == "yes"
        assert dispatcher.drains == 1
    assert drains_when_answered == [0, 0]


async def test_a_request_transaction_commits_before_the_response_and_rolls_back_on_failure(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'routes.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE seen (word TEXT)"))
    services = cast(
        Services,
        SimpleNamespace(sessionmaker=create_sessionmaker(engine), dispatcher=FakeDispatcher()),
    )
    guarded = APIRouter(route_class=fallback_route(sorry))
    plain = APIRouter()

    async def words() -> list[str]:
        async with engine.connect() as connection:
            return list((await connection.execute(text("SELECT word FROM seen"))).scalars())

    @guarded.post("/write/{word}")
    async def write(request: Request, word: str) -> Response:
        db = request_transaction(request, services)
        await db.session.execute(text("INSERT INTO seen VALUES (:word)"), {"word": word})
        if word == "crash":
            raise Crash
        # The response is built after the write; the route commits before it leaves.
        assert await words() == ["kept"] * (word == "again")
        return Response(word, media_type="text/plain")

    @plain.post("/unguarded")
    async def unguarded(request: Request) -> Response:
        request_transaction(request, services)
        return Response("never")

    app = FastAPI()
    app.state.services = services
    app.include_router(guarded)
    app.include_router(plain)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.post("/write/kept")).text == "kept"
            assert await words() == ["kept"]
            assert (await client.post("/write/crash")).text == "sorry"
            assert await words() == ["kept"]  # the failed request's write was rolled back
            assert (await client.post("/write/again")).text == "again"
            assert await words() == ["kept", "again"]
            # Nothing would commit or close it there: refused (a 500, never a silent loss).
            assert (await client.post("/unguarded")).status_code == 500
    finally:
        await engine.dispose()
