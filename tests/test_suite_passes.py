"""The suite's two passes: each test's database starts migrated, database-independent tests run once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from sqlalchemy import text

from core.platform.db import create_engine
from core.platform.settings import Settings
from tests.conftest import head_revision
from tests.support.servers import (
    DATABASE_INDEPENDENT,
    pytest_collection_modifyitems,
    refuse_if_classified_database_independent,
)


async def test_the_suite_database_starts_migrated(settings: Settings) -> None:
    """A copy of a migrated template, on SQLite as on PostgreSQL: no test replays Alembic."""
    engine = create_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert version == head_revision()


@dataclass
class FakeItem:
    name: str
    fixturenames: list[str]
    stash: pytest.Stash = field(default_factory=pytest.Stash)
    nodeid: str = "tests/test_example.py::test_example"


@dataclass
class FakeHook:
    deselected: list[Any] = field(default_factory=list)

    def pytest_deselected(self, items: list[Any]) -> None:
        self.deselected.extend(items)


@dataclass
class FakeConfig:
    database: str
    hook: FakeHook = field(default_factory=FakeHook)

    def getoption(self, name: str) -> str:
        assert name == "--database"
        return self.database


def collect(database: str) -> tuple[list[str], list[str], list[FakeItem]]:
    """What one pass keeps and deselects of a database test, a settings test and a pure one."""
    made = [
        FakeItem("pure", ["tmp_path"]),
        FakeItem("settings", ["settings", "suite_database_url", "database_kind", "redis_url"]),
        FakeItem("database", ["new_database", "database_kind"]),
        FakeItem("postgres_always", ["postgres_url", "new_postgres_database"]),
    ]
    items = list(made)
    config = FakeConfig(database)
    pytest_collection_modifyitems(cast(pytest.Config, config), cast(list[pytest.Item], items))
    return [item.name for item in items], [item.name for item in config.hook.deselected], made


def test_the_sqlite_pass_runs_every_test() -> None:
    kept, deselected, _ = collect("sqlite")
    assert kept == ["pure", "settings", "database", "postgres_always"] and deselected == []


def test_the_postgresql_pass_runs_only_the_tests_that_reach_the_suite_database() -> None:
    kept, deselected, _ = collect("postgresql")
    assert kept == ["settings", "database"]
    assert deselected == ["pure", "postgres_always"]


def test_a_test_asking_for_the_database_only_at_run_time_is_refused() -> None:
    """getfixturevalue("settings") in a test whose signature names no database fixture would
    run in the SQLite pass only: it fails there instead of silently missing PostgreSQL."""
    _, _, (pure, settings, *_) = collect("sqlite")
    assert pure.stash.get(DATABASE_INDEPENDENT, False)
    assert not settings.stash.get(DATABASE_INDEPENDENT, False)

    @dataclass
    class FakeRequest:
        node: FakeItem

    refuse_if_classified_database_independent(cast(pytest.FixtureRequest, FakeRequest(settings)))
    with pytest.raises(pytest.fail.Exception, match="asks for the suite's database at run time"):
        refuse_if_classified_database_independent(cast(pytest.FixtureRequest, FakeRequest(pure)))
