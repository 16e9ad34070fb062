"""A typed async repository: every query starts from `select()`, which leaves deleted rows out."""

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

from fastapi import HTTPException, status
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, false, literal, tuple_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from app.db import MAX_ID, Base

M = TypeVar("M", bound=Base)
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(values: Sequence[Any]) -> str:
    raw = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[ColumnElement[Any]]) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(keys):
            raise ValueError
        values: list[Any] = []
        for key, value in zip(keys, raw, strict=True):
            kind = getattr(key.type, "impl", key.type).python_type  # see through UTCDateTime
            if kind is datetime and (moment := datetime.fromisoformat(value)).tzinfo:
                values.append(moment)
            elif kind is int and type(value) is int and 0 < value <= MAX_ID:
                values.append(value)
            else:
                raise ValueError
        return values
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "Malformed cursor") from exc


async def keyset_page(
    session: AsyncSession,
    stmt: Select[Any] | SelectOfScalar[Any],
    *,
    keys: Sequence[ColumnElement[Any]],
    key_of: Callable[[Any], Sequence[Any]],
    limit: int,
    cursor: str | None,
    descending: bool = False,
) -> tuple[list[Any], str | None]:
    """One page of `stmt` ordered by `keys` (the last one unique), and the next cursor,
    made of `key_of(last item)`.

    `limit + 1` rows tell whether more follow: never OFFSET (its cost grows with depth),
    never COUNT.
    """
    if cursor is not None:
        values = decode_cursor(cursor, keys)
        position = tuple_(*keys)
        after = tuple_(*(literal(v, k.type) for k, v in zip(keys, values, strict=True)))
        stmt = stmt.where(position < after if descending else position > after)
    stmt = stmt.order_by(*(k.desc() if descending else k.asc() for k in keys)).limit(limit + 1)
    items = list((await session.exec(stmt)).all())  # type: ignore[call-overload]
    if len(items) <= limit:
        return items, None
    return items[:limit], encode_cursor(key_of(items[limit - 1]))


class Repository(Generic[M]):
    def __init__(self, session: AsyncSession, model: type[M]) -> None:
        self.session = session
        self.model = model

    def select(self, *, include_deleted: bool = False) -> SelectOfScalar[M]:
        """The statement every query starts from."""
        stmt = select(self.model)
        return stmt if include_deleted else stmt.where(self.model.deleted == false())

    def select_columns(self, *columns: Any) -> Any:
        """Rows of these columns (the model itself counts as one) from its live rows."""
        return select(*columns).select_from(self.model).where(self.model.deleted == false())

    async def get(self, id: int) -> M | None:
        return (await self.session.exec(self.select().where(self.model.id == id))).first()

    async def page(self, stmt: SelectOfScalar[M], *, limit: int, cursor: str | None) -> Page[M]:
        """A page of rows in id order."""
        items, next_cursor = await keyset_page(
            self.session,
            stmt,
            keys=[self.model.id],  # type: ignore[list-item]
            key_of=lambda obj: [obj.id],
            limit=limit,
            cursor=cursor,
        )
        return Page(items=items, next_cursor=next_cursor)

    async def create(self, obj: M) -> M:
        self.session.add(obj)
        await self.session.flush()
        return obj

    async def update(self, obj: M, data: dict[str, Any]) -> M:
        obj.sqlmodel_update(data)
        self.session.add(obj)
        await self.session.flush()
        return obj

    async def delete(self, obj: M) -> None:
        obj.deleted = True
        self.session.add(obj)
        await self.session.flush()
