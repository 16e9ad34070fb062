"""A typed async repository over Core statements: rows in, plain shapes out, no unit of
work. Every query of an entity starts from its live rows (`live`), joined tables too."""

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import (
    ColumnElement,
    Integer,
    Result,
    Select,
    Table,
    any_,
    bindparam,
    false,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from app.core.errors import Conflict
from app.core.models import MAX_ID, utcnow
from app.core.settings import settings

R = TypeVar("R", bound=SQLModel)

# INSERT ... ON CONFLICT DO NOTHING has the same spelling on both databases.
upsert = sqlite.insert if settings.is_sqlite else postgresql.insert


def live(table: Table) -> ColumnElement[bool]:
    """Rows that are not soft-deleted: the one filter every statement applies."""
    return table.c.deleted == false()


async def ping(conn: AsyncConnection) -> None:
    await conn.execute(select(literal(1)))


def encode_cursor(values: Sequence[int | datetime]) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kinds: Sequence[type]) -> list[Any]:
    """The values of a cursor of ours, checked against `kinds` (int or datetime); ValueError
    for anything else, so a cursor never reaches the database unchecked."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(kinds):
            raise ValueError
        values: list[Any] = []
        for kind, value in zip(kinds, raw, strict=True):
            if kind is datetime and isinstance(value, str):
                moment = datetime.fromisoformat(value)
                if moment.tzinfo is None:
                    raise ValueError
                values.append(moment.astimezone(UTC))  # OverflowError at the year's edges
            elif kind is int and type(value) is int and 0 < value <= MAX_ID:
                values.append(value)
            else:
                raise ValueError
        return values
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError("Malformed cursor") from exc


class Repository(Generic[R]):
    """Statements of one table, run on one connection. Subclasses set `table` and `row`
    (the shape rows load into) and add the entity's own queries."""

    table: ClassVar[Table]
    row: ClassVar[type[SQLModel]]
    _get: ClassVar[Select[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "table"):  # built once, not per request
            cls._get = cls.select().where(cls.table.c.id == bindparam("id"))

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    @classmethod
    def select(cls, *, include_deleted: bool = False) -> Select[Any]:
        """The statement every query of the table starts from."""
        stmt: Select[Any] = select(cls.table)
        return stmt if include_deleted else stmt.where(live(cls.table))

    def load(self, row: Any) -> R:
        return self.row.model_construct(**row._mapping)  # type: ignore[return-value]

    async def first(self, stmt: Any, **params: Any) -> R | None:
        row = (await self.conn.execute(stmt, params)).first()
        return None if row is None else self.load(row)

    def load_all(self, rows: Result[Any]) -> list[R]:
        """The rows of one result, its keys read once: a third cheaper than `load` each."""
        keys, make = tuple(rows.keys()), self.row.model_construct
        return [make(**dict(zip(keys, row, strict=True))) for row in rows.all()]  # type: ignore[misc]

    async def all(self, stmt: Any, **params: Any) -> list[R]:
        return self.load_all(await self.conn.execute(stmt, params))

    async def get(self, id: int) -> R | None:
        return await self.first(self._get, id=id)

    async def create(self, **values: Any) -> R:
        """Insert a row; a unique constraint it breaks is a Conflict."""
        now = utcnow()
        stmt = insert(self.table).values(created_at=now, updated_at=now, **values)
        stmt = stmt.returning(*self.table.c)
        try:
            row = (await self.conn.execute(stmt)).one()
        except IntegrityError as exc:
            raise Conflict(self.conflict) from exc
        return self.load(row)

    async def update(self, id: int, **values: Any) -> R | None:
        """Change a live row; None if there is none."""
        stmt = (
            self.table.update()
            .where(self.table.c.id == id, live(self.table))
            .values(updated_at=utcnow(), **values)
            .returning(*self.table.c)
        )
        try:
            row = (await self.conn.execute(stmt)).first()
        except IntegrityError as exc:
            raise Conflict(self.conflict) from exc
        return None if row is None else self.load(row)

    conflict = "Conflicts with existing data"


class Keyset:
    """A statement paged by `keys` (the last one unique), built once: the first page, and
    the page after a position. `limit + 1` rows tell whether more follow: never OFFSET,
    never COUNT."""

    def __init__(
        self, stmt: Select[Any], keys: Sequence[ColumnElement[Any]], descending: bool = False
    ) -> None:
        self.keys = [f"key{i}" for i in range(len(keys))]
        position = tuple_(*keys)
        bound = tuple_(*(bindparam(n, type_=k.type) for n, k in zip(self.keys, keys, strict=True)))
        order = [k.desc() if descending else k.asc() for k in keys]
        self.first = stmt.order_by(*order).limit(bindparam("limit"))
        after = stmt.where(position < bound if descending else position > bound)
        self.after = after.order_by(*order).limit(bindparam("limit"))

    async def page(
        self, conn: AsyncConnection, limit: int, after: Sequence[Any] | None, **params: Any
    ) -> tuple[list[Any], bool]:
        params["limit"] = limit + 1
        if after is not None:
            params |= dict(zip(self.keys, after, strict=True))
        rows = (await conn.execute(self.first if after is None else self.after, params)).all()
        return rows[:limit], len(rows) > limit


def in_ids(column: ColumnElement[int], name: str) -> ColumnElement[bool]:
    """`column` is one of the ids given as `name`: on PostgreSQL one array parameter, so the
    statement is the same (and prepared once) for any number of them."""
    if settings.is_sqlite:
        return column.in_(bindparam(name, expanding=True))
    return column == any_(bindparam(name, type_=postgresql.ARRAY(Integer())))
