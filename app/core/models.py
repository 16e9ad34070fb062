"""What every table and every API shape shares: ids, timestamps, soft delete, pages, and
the constrained types input is checked against."""

import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, StringConstraints, field_validator
from sqlalchemy import DateTime, Dialect, Index, Table, false, text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# Stable constraint names, so Alembic can drop and alter them on every database.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

T = TypeVar("T")


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

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # asyncpg returns aware datetimes already: no call per value on PostgreSQL.
        return super().result_processor(dialect, coltype) if dialect.name == "sqlite" else None


class Base(SQLModel):
    """Columns of every table. Rows are never removed, only marked `deleted`."""

    id: int = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        nullable=False,
        sa_column_kwargs={"onupdate": utcnow},
    )
    deleted: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": false()}
    )


def unique_live(name: str, *columns: str) -> Index:
    """Unique among live rows only: what a deleted row held may be taken again."""
    live = text("NOT deleted")
    return Index(name, *columns, unique=True, sqlite_where=live, postgresql_where=live)


def table(model: type[SQLModel]) -> Table:
    """The Core table of a table model (queries are built on it, not on ORM entities)."""
    result: Table = model.__table__  # type: ignore[attr-defined]
    return result


# PostgreSQL text cannot hold NUL: such input is a 422, not a database error.
NoNul = StringConstraints(pattern=r"^[^\x00]*$")
INVISIBLE = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})  # controls, format (zero-width), spaces


def _visible(value: Any) -> Any:
    if isinstance(value, str) and all(unicodedata.category(c) in INVISIBLE for c in value):
        return ""
    return value


# Text that shows nothing (a zero-width space) is empty text: a length rule after it decides.
Visible = BeforeValidator(_visible)
MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
# A row id in a path, a query or a body: out of range is a 422, never a database error.
Id = Annotated[int, Ge(1), Le(MAX_ID)]


def body_config(*examples: dict[str, Any]) -> Any:
    """Request bodies take JSON types strictly (`1` is no boolean, `"2"` no id) and show
    examples in the docs. Typed Any: SQLModel's own config type is private."""
    return ConfigDict(strict=True, json_schema_extra={"examples": list(examples)})


class Patch(SQLModel):
    """A PATCH body: an omitted field stays as it is; `null` is no value (422)."""

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # defaults are not validated, so only an explicit null gets here
            raise ValueError("may not be null")
        return value


class RowOut(SQLModel):
    """What every response shows of a row: plain types, checked on input, not on output."""

    id: int
    created_at: datetime
    updated_at: datetime


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None
