"""The engine, and the two ways code meets the database: a read connection, and a
transaction on it that commits before the response goes out (and hands its events to the
bus: app.core.events)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection, ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from app.core.driver import PLAIN
from app.core.errors import Unavailable
from app.core.events import Event, bus
from app.core.settings import settings

if settings.is_sqlite:
    engine_args: dict[str, Any] = {"connect_args": {"timeout": 30}}
else:
    engine_args = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
        "connect_args": {"timeout": 5},  # a database that is away answers 503 soon
    }
    if settings.behind_pooler:  # PgBouncer in transaction mode: no named statements kept
        engine_args["connect_args"] |= {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid4()}__",
        }
engine = create_async_engine(
    settings.async_database_url,
    hide_parameters=True,  # errors and logs never show values: they may be password hashes
    **engine_args,
)

if settings.is_sqlite:

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_connect(conn: DBAPIConnection, _: ConnectionPoolEntry) -> None:
        conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()
        # SQLite's lower() folds ASCII letters only: searches that ignore case use this one
        # (app.core.repository.contains), which folds every letter, as PostgreSQL's does.
        conn.create_function("unicode_lower", 1, _lower, deterministic=True)

    def _lower(value: str | None) -> str | None:
        return None if value is None else value.lower()

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # A writer takes the write lock up front: a deferred transaction that writes later
        # can fail with "database is locked" instead of waiting. Readers never take it.
        writes = not conn.get_execution_options().get("read_only")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

else:

    @event.listens_for(engine.sync_engine, "handle_error")
    def _drop_a_half_sent_statement(context: ExceptionContext) -> None:
        # asyncpg refuses an argument it cannot encode (an int past int32) after the server
        # has the statement, which then waits mid-statement, in a transaction that holds the
        # statement's locks, until the connection's next use. That refusal is raised from
        # the encoder's own error; its connection is closed, not lent again (and only it).
        refused = context.original_exception.__cause__
        if isinstance(refused, asyncpg.DataError) and refused.__cause__ is not None:
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = False


# Reads need no BEGIN/COMMIT on PostgreSQL: under READ COMMITTED each statement has its
# own snapshot anyway, so a transaction would only add two round trips to every GET. Not
# behind a pooler in transaction mode: only a transaction keeps asyncpg's prepare and
# execute on one server connection there.
READ_OPTIONS: dict[str, Any] = (
    {"read_only": True}
    if settings.is_sqlite
    else {"isolation_level": "READ COMMITTED" if settings.behind_pooler else "AUTOCOMMIT"}
)
WRITE_OPTIONS: dict[str, Any] = (
    {"read_only": False} if settings.is_sqlite else {"isolation_level": "READ COMMITTED"}
)
_reader = engine.execution_options(**READ_OPTIONS)
# Where a read connection commits each statement as it runs: a write that is one statement
# needs no transaction there (publish_committed sends its events).
EACH_STATEMENT_COMMITS = READ_OPTIONS.get("isolation_level") == "AUTOCOMMIT"


class Turns:
    """At most MAX_CONCURRENT_REQUESTS connections in use at once, about the pool's size;
    the rest wait their turn in order, and beyond REQUEST_QUEUE_SIZE waiting, 503 at once.
    Without it, a burst piles onto the pool's own queue, where some wait for many seconds.
    A turn is waited for at most `timeout` (DB_POOL_TIMEOUT, as a connection is): while the
    turns are held by requests that cannot finish, the queue would otherwise drain at a few
    503s per pool timeout, and its last request wait for minutes. Only code that holds a
    connection takes a turn: a request whose body is still arriving, or that waits for a
    password hash, holds none."""

    def __init__(self, size: int, queue: int, timeout: float) -> None:
        self.slots, self.queue, self.waiting = asyncio.Semaphore(size), queue, 0
        self.timeout = timeout

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        if self.waiting >= self.queue:
            raise Unavailable("Server busy; try again in a moment")
        self.waiting += 1
        try:
            if not self.slots.locked():  # a free turn: no deadline to set up on the hot path
                await self.slots.acquire()
            else:
                async with asyncio.timeout(self.timeout):
                    await self.slots.acquire()
        except TimeoutError:
            raise Unavailable("Server busy; try again in a moment") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()


turn = Turns(
    settings.max_concurrent_requests, settings.request_queue_size, settings.db_pool_timeout
)


@asynccontextmanager
async def connect(*, queued: bool = True) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for reads, once it is our turn. `queued=False`: for background
    work, which is bounded by itself (one batch at a time) and must not wait behind, or
    crowd out, requests."""
    async with turn() if queued else nullcontext(), _reader.connect() as conn:
        yield conn


@asynccontextmanager
async def transaction(conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
    """Turn a read connection into one transaction: committed when the block ends, rolled
    back if it raises."""
    if conn.in_transaction():  # SQLite's deferred read snapshot
        await conn.commit()
    await conn.execution_options(**WRITE_OPTIONS)
    events: list[Event] = []
    conn.info["events"] = events
    try:
        async with conn.begin():
            yield conn
            if events:
                await bus.before_commit(conn, events)
    finally:
        # A connection lost meanwhile would reconnect to show its info (MissingGreenlet, a
        # 500, not the loss: 503); its pool record forgets that info when it reconnects.
        if not conn.invalidated:
            conn.info.pop("events", None)
    if events:
        await conn.execution_options(**READ_OPTIONS)  # no BEGIN for what follows
        await bus.committed(conn, events)


async def publish_committed(conn: AsyncConnection, *events: Event) -> None:
    """The events of one statement that committed as it ran (EACH_STATEMENT_COMMITS):
    this process's handlers, then the channel, as `transaction` does after its commit."""
    await bus.committed(conn, list(events))


@asynccontextmanager
async def begin(*, queued: bool = True) -> AsyncIterator[AsyncConnection]:
    """A short transaction of its own: for services that must not hold a connection while
    they wait for something else (a login waits for a hashing slot), and for jobs."""
    async with connect(queued=queued) as conn, transaction(conn):
        yield conn


_TIME_LIMIT = text("SELECT set_config('statement_timeout', :ms, :local)")
_NO_TIME_LIMIT = text("RESET statement_timeout")


@asynccontextmanager
async def time_limit(conn: AsyncConnection, seconds: float) -> AsyncIterator[None]:
    """Statements in the block that run longer are cancelled (PostgreSQL's query_canceled,
    which the HTTP layer answers 503): for queries whose cost the client's input decides.
    Local to the transaction behind a pooler, where the session is shared; else reset."""
    if settings.is_sqlite:
        yield
        return
    local = settings.behind_pooler  # the transaction ends it: nothing to reset
    await conn.execute(_TIME_LIMIT, {"ms": str(int(seconds * 1000)), "local": local})
    conn.info[PLAIN] = True
    try:
        yield
    finally:
        if not conn.invalidated:  # a lost connection's settings and info are gone with it
            conn.info.pop(PLAIN, None)
            if not local:
                await conn.execute(_NO_TIME_LIMIT)


async def refuse_a_hidden_pooler() -> None:
    """Start-up: refuse a DATABASE_URL that is a pooler's when DATABASE_URL_DIRECT is unset.
    Taken for PostgreSQL, a pooler in transaction mode fails at random (a statement
    prepared on one server connection runs on another: 500s) and LISTEN through it hears
    nothing. It gives itself away: the backend it announces at connect is not the one that
    answers (it lends many). A database that is away is not checked: health says so."""
    if settings.is_sqlite or settings.behind_pooler:
        return
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            announced = raw.driver_connection.get_server_pid()  # type: ignore[union-attr]
            try:
                answering = await conn.scalar(text("SELECT pg_backend_pid()"))
            except DBAPIError as exc:  # its prepared statement went to another backend
                if "prepared statement" not in str(exc):
                    raise
                answering = None
    except (OSError, DBAPIError):
        return
    if answering != announced:
        raise RuntimeError(
            "DATABASE_URL reaches PostgreSQL through a pooler (its backend ids do not match): "
            "set DATABASE_URL_DIRECT to PostgreSQL itself (deploy/README.md)"
        )


def migrate_to_head() -> None:
    """`alembic upgrade head` for the configured database (blocking; run it in a thread)."""
    root = Path(__file__).resolve().parents[2]
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["configure_logger"] = False  # keep the app's own log format
    command.upgrade(config, "head")
