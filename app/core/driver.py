"""Statements run on the driver's own connection: the one place that steps around
SQLAlchemy's execute path, for speed, and where it may (`fetch`)."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from sqlalchemy import Select, TextClause
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


class Rows(NamedTuple):
    keys: tuple[str, ...]  # a Select's columns (a text statement's rows: by position)
    rows: Sequence[Any]  # each indexed by position, in the order of `keys`


_GIVEN = object()  # a parameter the caller gives, not one the statement holds
# While a connection's `info` holds this key, its statements take the plain path: a block
# whose statements must not run twice, as under a time limit (app.core.db.time_limit),
# where the second run after a timeout would take as long again.
PLAIN = "plain statements"


class _ForDriver(NamedTuple):
    """A statement as asyncpg's own text. Its parameters in their positions ($1, $2, ...),
    each with SQLAlchemy's converter, if it has one, and the value the statement holds."""

    sql: str
    params: tuple[tuple[str, Callable[[Any], Any] | None, Any], ...]
    keys: tuple[str, ...]

    def args(self, given: dict[str, Any]) -> list[Any]:
        values = (
            (given[name] if held is _GIVEN else given.get(name, held), convert)
            for name, convert, held in self.params
        )
        return [value if convert is None else convert(value) for value, convert in values]


_compiled: WeakKeyDictionary[Any, _ForDriver | None] = WeakKeyDictionary()


def _for_the_driver(stmt: Any, dialect: Dialect) -> _ForDriver | None:
    """`stmt` compiled once for asyncpg; None for one whose rows SQLAlchemy converts, or
    that it compiles again for each call (the plain path takes those)."""
    if not isinstance(stmt, Select | TextClause):
        return None
    if stmt not in _compiled:
        compiled = stmt.compile(dialect=dialect)
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        columns = stmt.selected_columns if isinstance(stmt, Select) else None
        keys = () if columns is None else tuple(columns.keys())
        converts = any(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns or ()
        )
        per_call = compiled.literal_execute_params or compiled.post_compile_params
        params = tuple(
            (
                b.key,
                b.type.dialect_impl(dialect).bind_processor(dialect),
                _GIVEN if b.required else b.value,
            )
            for b in binds
        )
        plain = converts or per_call or any(b.callable is not None for b in binds)
        _compiled[stmt] = None if plain else _ForDriver(compiled.string, params, keys)
    return _compiled[stmt]


async def fetch(conn: AsyncConnection, stmt: Any, params: dict[str, Any]) -> Rows:
    """The rows of a statement, for the few that every page and every send runs.
    SQLAlchemy's execute path costs about 50 µs of CPU per statement beyond asyncpg's
    own: a page of messages runs five, a fifth of its request. Where each statement
    commits as it runs (a read connection on PostgreSQL), the same statement, compiled
    once, runs on the driver's connection instead. Elsewhere (SQLite, inside a
    transaction, behind a pooler, with a listener on statements such as telemetry's, or
    under PLAIN) it is conn.execute, and so is a statement whose rows SQLAlchemy converts.
    After an error the plain path runs it once more, to fail as every statement fails: a
    lost connection discarded by the pool and answered 503, a value out of range 422. A
    statement that writes is safe to run again: it failed as a whole, or it committed and
    lost its connection, on which the second run fails at once."""
    sync = conn.sync_connection
    if (
        sync is not None
        and not sync.invalidated
        and PLAIN not in sync.info
        and not sync.dispatch.before_cursor_execute
        and sync.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        and (compiled := _for_the_driver(stmt, conn.dialect)) is not None
    ):
        driver: Any = sync.connection.driver_connection
        try:
            return Rows(compiled.keys, await driver.fetch(compiled.sql, *compiled.args(params)))
        except Exception:  # run again below, to fail as SQLAlchemy fails
            pass
    result = await conn.execute(stmt, params)
    return Rows(tuple(result.keys()), result.all())
