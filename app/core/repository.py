"""A typed async repository over Core statements: rows in, plain shapes out, no unit of
work. Every query of an entity starts from its live rows (`live`), joined tables too."""

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from types import NoneType
from typing import Any, ClassVar, Generic, TypeVar

from pydantic.fields import FieldInfo
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    any_,
    bindparam,
    false,
    func,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import SQLModel

from app.core.driver import Rows, fetch
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


def default_of(field: FieldInfo) -> Callable[[], Any]:
    """A field's default as pydantic gives it: the same immutable value, a fresh empty
    list or dict, else what pydantic itself makes of it."""
    value = field.default
    if field.default_factory is None and isinstance(value, list | dict) and not value:
        return type(value)
    if field.default_factory is None and isinstance(value, bool | int | str | NoneType):
        return lambda: value
    return lambda: field.get_default(call_default_factory=True, validated_data={})


@cache
def builder(model: type[R], keys: tuple[str, ...]) -> Callable[[Sequence[Any]], R]:
    """Rows with these columns as `model` instances, exactly as `model.model_construct`
    makes them (no validation: the database's rows are trusted) but without its Python
    loop over every field per row: a page of 50 messages spent 11% of its request there.
    Right for the shapes loaded here: plain fields, no aliases, private attributes or
    post-init hooks (tests/core/test_repository.py holds it to model_construct)."""
    where = {key: i for i, key in enumerate(keys)}
    # In the fields' order, as model_construct fills __dict__: a column, or a default.
    plan = [
        (name, where[name] if name in where else default_of(field))
        for name, field in model.model_fields.items()
        if name in where or not field.is_required()
    ]
    given = frozenset(name for name in keys if name in model.model_fields)
    new, setattr_ = object.__new__, object.__setattr__  # SQLModel.__new__ sets what we set

    def make(row: Sequence[Any]) -> R:
        values = {name: row[at] if isinstance(at, int) else at() for name, at in plan}
        m: R = new(model)
        setattr_(m, "__dict__", values)
        setattr_(m, "__pydantic_fields_set__", set(given))
        setattr_(m, "__pydantic_extra__", None)
        setattr_(m, "__pydantic_private__", None)
        return m

    return make


def fill(items: Sequence[R], name: str, found: Mapping[int, Any]) -> list[R]:
    """Each item's field `name` set to what `found` holds under the item's id (a
    defaultdict, so an item without any gets its own empty value), as a plain
    assignment sets it (no validation, the field marked set) but without pydantic's and
    SQLModel's __setattr__: filling a page's reactions, mentions and attachments went
    through it 150 times, 6% of the page's request."""
    for item in items:
        item.__dict__[name] = found[item.__dict__["id"]]
        item.__pydantic_fields_set__.add(name)
    return list(items)


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
        return builder(self.row, tuple(row._fields))(row)  # type: ignore[no-any-return]

    def built(self, found: Rows) -> list[R]:
        """Rows as `fetch` gives them, built as `model_construct` would build them."""
        make = builder(self.row, found.keys)
        return [make(row) for row in found.rows]

    async def first(self, stmt: Any, **params: Any) -> R | None:
        found = await fetch(self.conn, stmt, params)
        return builder(self.row, found.keys)(found.rows[0]) if found.rows else None

    async def all(self, stmt: Any, **params: Any) -> list[R]:
        return self.built(await fetch(self.conn, stmt, params))

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
    ) -> tuple[Rows, bool]:
        """At most `limit` rows, and whether more follow."""
        params["limit"] = limit + 1
        if after is not None:
            params |= dict(zip(self.keys, after, strict=True))
        found = await fetch(conn, self.first if after is None else self.after, params)
        return found._replace(rows=found.rows[:limit]), len(found.rows) > limit


def contains(column: ColumnElement[str], name: str) -> ColumnElement[bool]:
    """`column` contains the text given as `name`, as `pattern` makes it, in any case. On
    SQLite, whose ILIKE lowers ASCII letters only, both sides are lowered by Python's
    str.lower (`unicode_lower`, registered in app.core.db)."""
    if settings.is_sqlite:
        return func.unicode_lower(column).like(bindparam(name), escape="\\")
    return column.ilike(bindparam(name), escape="\\")


def pattern(text: str) -> str:
    """The value `contains` is given for `text`: `%`, `_` and `\\` in it are plain."""
    found = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    return found.lower() if settings.is_sqlite else found


def in_ids(column: ColumnElement[int], name: str) -> ColumnElement[bool]:
    """`column` is one of the ids given as `name`: on PostgreSQL one array parameter, so the
    statement is the same (and prepared once) for any number of them."""
    if settings.is_sqlite:
        return column.in_(bindparam(name, expanding=True))
    return column == any_(bindparam(name, type_=postgresql.ARRAY(Integer())))
