"""Limits counted in the database, so every process shares one count and parallel requests
cannot slip past them: failed logins, signups, mails, sends. One row per key and window,
counted by an upsert that also says whether the limit is passed; pruned hourly."""

from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, delete, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import Field, SQLModel

from app.core.errors import TooMany
from app.core.models import UTCDateTime, table, utcnow
from app.core.repository import upsert

KEY_LENGTH = 400


class Counter(SQLModel, table=True):
    """Attempts under one key (`email:…`, `addr:…`, `reset:…`, `send:…`) in its current window."""

    __tablename__ = "login_counter"

    key: str = Field(primary_key=True, max_length=KEY_LENGTH)
    count: int
    window_start: datetime = Field(sa_type=UTCDateTime, index=True)


counters = table(Counter)
_fresh = counters.c.window_start <= bindparam("stale", type_=UTCDateTime())
# One statement counts and answers: a window that has passed starts again at 1. A caller
# may run it inside a statement of its own (the send does: no round trip of its own).
counting = (
    upsert(counters)
    .values(key=bindparam("key"), count=1, window_start=bindparam("now", type_=UTCDateTime()))
    .on_conflict_do_update(
        index_elements=[counters.c.key],
        set_={
            "count": case((_fresh, 1), else_=counters.c.count + 1),
            "window_start": case(
                (_fresh, bindparam("now", type_=UTCDateTime())), else_=counters.c.window_start
            ),
        },
    )
    .returning(counters.c.count, counters.c.window_start)
)


async def count(conn: AsyncConnection, key: str, window: timedelta) -> tuple[int, datetime]:
    """Count one for `key`: (the count in its window, when the window began)."""
    now = utcnow()
    params = {"key": key[:KEY_LENGTH], "now": now, "stale": now - window}
    found, start = (await conn.execute(counting, params)).one()
    return found, start


def check(
    found: int, start: datetime, allowed: int, window: timedelta, error: type[TooMany] = TooMany
) -> datetime:
    """`found` counted in the window that began at `start`: past `allowed`, `error` with the
    seconds left. The window's start, for `uncount`."""
    if found > allowed:
        wait = (start + window - utcnow()).total_seconds()
        raise error(max(1, int(wait) + 1))
    return start


async def limit(
    conn: AsyncConnection, key: str, allowed: int, window: timedelta, error: type[TooMany] = TooMany
) -> datetime:
    """Count one for `key`; past `allowed` in the window, `error` with the seconds left.
    The window's start, for `uncount`."""
    found, start = await count(conn, key, window)
    return check(found, start, allowed, window, error)


async def forget(conn: AsyncConnection, key: str) -> None:
    await conn.execute(delete(counters).where(counters.c.key == key[:KEY_LENGTH]))


async def uncount(conn: AsyncConnection, key: str, start: datetime) -> None:
    """Take back one counted in the window that began at `start`: if a new window began
    since, the attempt is not in its count, and taking one would hand out a free guess."""
    await conn.execute(
        update(counters)
        .where(
            counters.c.key == key[:KEY_LENGTH],
            counters.c.window_start == start,
            counters.c.count > 0,
        )
        .values(count=counters.c.count - 1)
    )


async def prune(conn: AsyncConnection, window: timedelta) -> None:
    """Counters whose window passed long ago: what keeps the table bounded."""
    await conn.execute(delete(counters).where(counters.c.window_start < utcnow() - window))
