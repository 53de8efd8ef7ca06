"""SQLAlchemy's aiosqlite dialect, with one thread hop per statement instead of four.

aiosqlite runs every call on its connection's own thread and hands the result back to the event
loop, and SQLAlchemy's adapter makes four such calls per statement: create a cursor, execute,
fetch the rows, close the cursor. Each hop costs this VM 0.1–0.2 ms of CPU (a futex, a write to
the loop's self-pipe, an epoll wake-up), far more than the statement itself (docs/performance.md,
"The writing steps"). This cursor makes one call that does all four on the connection's thread.
Commits and rollbacks were one hop already. What SQLAlchemy sees is unchanged: the description,
the rows, `rowcount` (read after the rows were fetched, so an `UPDATE … RETURNING` counts them)
and `lastrowid`.

It uses two private names of aiosqlite, `Connection._execute` (queue a function for the
connection's thread) and `Connection._conn` (the sqlite3 connection); the version is pinned in
uv.lock, and the whole test suite runs on this dialect.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT

# The driver name in URLs: `sqlite+eirc_aiosqlite:///path` (core/platform/db.py maps the usual
# `sqlite+aiosqlite` onto it).
DRIVER = "eirc_aiosqlite"

Result = tuple[Any, list[Any], int, int | None]


def _run(connection: sqlite3.Connection, operation: str, parameters: Any) -> Result:
    """On the connection's thread: execute, fetch everything, close."""
    cursor = connection.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


def _run_many(connection: sqlite3.Connection, operation: str, parameters: Sequence[Any]) -> Result:
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, parameters)
        return None, [], cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose every statement is one call on the connection's thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No aiosqlite cursor is made (that would be a hop of its own).
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        pass

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        await self._call(_run, operation, parameters)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        await self._call(_run_many, operation, seq_of_parameters)

    async def _call(self, function: Any, operation: Any, parameters: Any) -> None:
        connection = self._connection
        async with self._adapt_connection._execute_mutex:
            result: Result = await connection._execute(
                function,
                connection._conn,
                operation,
                parameters,
            )
        self._description, rows, self._rowcount, self._lastrowid = result
        self._rows = collections.deque(rows)


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()

    _cursor_cls = OneHopCursor


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


class OneHopSQLiteDialect(SQLiteDialect_aiosqlite):
    """`sqlite+eirc_aiosqlite`: aiosqlite with `OneHopCursor`."""

    # The same driver as far as anything that asks is concerned: only the cursor differs.
    driver = "aiosqlite"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> OneHopDBAPI:
        import aiosqlite

        return OneHopDBAPI(aiosqlite, sqlite3)
