"""A statement that commits as it runs skips SQLAlchemy's execute path on PostgreSQL
(app.core.driver): held here to return what the plain path returns, to stay inside a
transaction when there is one, and to fail as the plain path fails."""

import time
from typing import Any

import pytest
from sqlalchemy import (
    Integer,
    Select,
    TextClause,
    bindparam,
    case,
    event,
    func,
    literal,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError

from app.core.accounts.models import User
from app.core.db import begin, connect, engine, time_limit
from app.core.driver import PLAIN, fetch
from app.core.models import table
from app.core.repository import in_ids, live
from app.core.settings import settings
from tests.helpers import MakeUser

users = table(User)
on_postgres = pytest.mark.skipif(settings.is_sqlite, reason="the plain path is SQLite's only")

READS = {  # each with the rows it finds
    "columns of every kind (timestamps, booleans, nulls)": (select(users).where(live(users)), 3),
    "ids as one array, values the statement holds, labels": (
        select(
            users.c.id,
            case((users.c.id == bindparam("mine"), 1), else_=0).label("me"),
            func.lower(users.c.email).label("lowered"),
        )
        .where(in_ids(users.c.id, "ids"))
        .order_by(users.c.id.desc())
        .limit(bindparam("limit")),
        2,
    ),
    "text": (text('SELECT id, email FROM "user" WHERE id = :mine'), 1),
    "no rows": (select(users.c.id).where(users.c.id == bindparam("mine"), users.c.id < 0), 0),
}


@pytest.mark.parametrize(("stmt", "rows"), READS.values(), ids=READS.keys())
async def test_a_read_returns_what_the_plain_path_returns(
    make_user: MakeUser, stmt: Select[Any] | TextClause, rows: int
) -> None:
    made = [await make_user() for _ in range(3)]
    params = {"ids": [u["id"] for u in made][:2], "mine": made[0]["id"], "limit": 5}
    async with connect() as conn:
        found = await fetch(conn, stmt, params)
        took_the_driver = not conn.in_transaction()  # the plain path begins one
        plain = await conn.execute(stmt, params)
        if isinstance(stmt, Select):  # a text statement's rows are read by position
            assert found.keys == tuple(plain.keys())
        assert [tuple(row) for row in found.rows] == [tuple(row) for row in plain.all()]
    assert took_the_driver == (not settings.is_sqlite)
    assert len(found.rows) == rows


async def test_a_listener_on_statements_sees_every_read(make_user: MakeUser) -> None:
    """Telemetry listens to the engine's statements: with a listener, reads take the plain
    path, so none goes untraced."""
    await make_user()
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", listener)
    try:
        async with connect() as conn:
            found = await fetch(conn, select(users.c.email), {})
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", listener)
    assert len(found.rows) == 1
    assert [sql for sql in seen if "email" in sql] != []


@on_postgres
async def test_inside_a_transaction_a_read_is_part_of_it() -> None:
    """The first statement of a transaction included: asyncpg begins it only when
    SQLAlchemy runs one, so the driver's path would run outside it."""
    current = select(func.pg_current_xact_id().cast(users.c.email.type).label("xact"))
    async with begin() as conn:
        first = (await fetch(conn, current, {})).rows[0][0]
        again = (await conn.execute(current)).scalar()
    assert first == again


@on_postgres
async def test_an_error_fails_as_sqlalchemy_fails() -> None:
    """An error on the driver's path is raised by the plain path: SQLAlchemy's DBAPIError,
    which the HTTP layer knows (a value out of range: 422; the database away: 503), never
    asyncpg's own."""
    stmt = select((literal(1) // bindparam("zero", type_=Integer())).label("q"))
    async with connect() as conn:
        with pytest.raises(DBAPIError) as raised:
            await fetch(conn, stmt, {"zero": 0})
        assert "division by zero" in str(raised.value.orig)
        assert (await fetch(conn, select(users.c.id), {})).keys == ("id",)  # still usable


@on_postgres
async def test_a_connection_ended_under_a_read_is_discarded() -> None:
    """PostgreSQL ends the connection (a restart, an administrator): the read fails as
    the plain path fails, with the connection invalidated, so the pool does not lend it
    again and the HTTP layer answers 503."""
    stmt = select(users.c.id)
    async with connect() as conn:
        await fetch(conn, stmt, {})
        pid = (await fetch(conn, select(func.pg_backend_pid()), {})).rows[0][0]
        async with engine.connect() as other:
            await other.execute(select(func.pg_terminate_backend(pid)))
        with pytest.raises(DBAPIError) as raised:
            await fetch(conn, stmt, {})
        assert raised.value.connection_invalidated
    async with connect() as conn:
        assert (await fetch(conn, select(func.pg_backend_pid()), {})).rows[0][0] != pid


@on_postgres
async def test_a_statement_under_a_time_limit_runs_once() -> None:
    """Under `time_limit` a statement takes the plain path: after a timeout on the driver's,
    the second run would take as long again."""
    async with connect() as conn:
        async with time_limit(conn, 0.3):
            started = time.monotonic()
            with pytest.raises(DBAPIError) as raised:
                await fetch(conn, select(func.pg_sleep(1.5)), {})
            took = time.monotonic() - started
        assert raised.value.orig.sqlstate == "57014"  # type: ignore[union-attr]
        assert took < 0.55, took
        assert PLAIN not in conn.info  # the driver's path again, once the limit is off
