"""Engine, sessions, and what every table shares: id, timestamps, soft delete."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Ge, Le
from fastapi import Depends, Request
from pydantic import ConfigDict, StringConstraints
from sqlalchemy import DateTime, Dialect, event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.settings import settings

# Stable constraint names, so Alembic can drop and alter them on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database: SQLite stores no offset, so restore it on load."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must carry a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(SQLModel):
    """Columns of every table. Rows are never removed, only marked `deleted`."""

    # None until the row is inserted; typed int so queries and responses need no checks.
    id: int = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        nullable=False,
        sa_column_kwargs={"onupdate": utcnow},
    )
    deleted: bool = Field(default=False, nullable=False)


# PostgreSQL text cannot hold NUL: such input is a 422, not a database error.
NoNul = StringConstraints(pattern=r"^[^\x00]*$")
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
# A row id in a path, a query or a body: out of range is a 422, never a database error.
Id = Annotated[int, Ge(1), Le(MAX_ID)]


def examples(*items: dict[str, Any]) -> Any:
    """A model_config that shows request examples in the docs (typed Any: SQLModel's
    own config type is private)."""
    return ConfigDict(json_schema_extra={"examples": list(items)})


class RowOut(SQLModel):
    """What every response shows of a row."""

    id: int
    created_at: datetime
    updated_at: datetime


engine = create_async_engine(
    settings.async_database_url,
    hide_parameters=True,  # errors and logs never show values: they may be password hashes
    **(
        {"connect_args": {"timeout": 30}}
        if settings.is_sqlite
        else {
            "pool_size": settings.db_pool_size,
            "max_overflow": settings.db_max_overflow,
            "pool_timeout": 10,
            "connect_args": {"timeout": 5},  # a database that is away answers 503 soon
        }
    ),
)

if settings.is_sqlite:

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_connect(conn: DBAPIConnection, _: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy emit BEGIN itself (below) instead of the driver's deferred one.
        conn.isolation_level = None
        cursor = conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        # Take the write lock up front: a deferred transaction that later writes can fail
        # with "database is locked" instead of waiting. Readers are not blocked in WAL mode.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


SessionMaker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
# Reads need no BEGIN/COMMIT on PostgreSQL: under READ COMMITTED each statement has its
# own snapshot anyway, so a transaction would only add two round trips to every GET.
read_engine = (
    engine if settings.is_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request that changes data: committed when the route returns,
    rolled back if it raises. Realtime events the route published go out with the
    commit, and only if it succeeds.
    """
    from app import realtime

    bind = read_engine if request.method in ("GET", "HEAD") else engine
    async with SessionMaker(bind=bind) as session:
        async with session.begin():
            yield session
            await session.flush()
            await realtime.send_pending(session)
        realtime.after_commit(session)


# scope="function": commit before the response is sent, so a 2xx means the data is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]


def migrate_to_head() -> None:
    """`alembic upgrade head` for the configured database (blocking; run it in a thread)."""
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    config = Config(str(root / "alembic.ini"))
    config.set_main_option("script_location", str(root / "migrations"))
    config.attributes["configure_logger"] = False  # keep the app's own log format
    command.upgrade(config, "head")
