from typing import Annotated, Literal

from pydantic import AfterValidator, EmailStr
from sqlalchemy import JSON, Index, text
from sqlmodel import Field, SQLModel

from app.db import Base, NoNul, RowOut, examples

SCOPES = {
    "regular": "Every active user: own profile, threads and messages.",
    "admin": "List and manage users.",
    "superuser": "Change anyone's scopes.",
}

Scope = Literal["regular", "admin", "superuser"]

# Stored lower-case, so uniqueness and lookups are case-insensitive on every database.
Email = Annotated[EmailStr, AfterValidator(str.lower)]
Password = Annotated[str, Field(min_length=8, max_length=128)]
FullName = Annotated[
    str, NoNul, Field(min_length=1, max_length=255, schema_extra={"examples": ["Ada Lovelace"]})
]


class UserBase(SQLModel):
    email: Email = Field(max_length=320)
    full_name: FullName = Field(max_length=255)


class User(UserBase, Base, table=True):
    hashed_password: str
    scopes: list[str] = Field(default_factory=lambda: ["regular"], sa_type=JSON)
    is_active: bool = True
    # Part of every token; bumping it revokes all tokens issued before.
    token_version: int = 0

    __table_args__ = (
        # A deleted user's email can register again.
        Index(
            "uq_user_email_live",
            "email",
            unique=True,
            sqlite_where=text("NOT deleted"),
            postgresql_where=text("NOT deleted"),
        ),
    )


class UserCreate(UserBase):
    model_config = examples(
        {
            "email": "ada@example.com",
            "password": "correct horse battery",
            "full_name": "Ada",
        }
    )

    password: Password


class UserPublic(SQLModel):
    id: int
    full_name: str


class UserPrivate(UserBase, RowOut):
    scopes: list[Scope]
    is_active: bool


class UserUpdateMe(SQLModel):
    model_config = examples(
        {
            "full_name": "Ada Lovelace",
            "password": "a new passphrase",
            "current_password": "correct horse battery",
        }
    )

    full_name: FullName | None = None
    email: Email | None = None
    password: Password | None = None
    current_password: str | None = None


class UserUpdate(SQLModel):
    """What an admin may change; `scopes` needs a superuser token."""

    model_config = examples({"is_active": False, "scopes": ["regular", "admin"]})

    full_name: FullName | None = None
    email: Email | None = None
    is_active: bool | None = None
    scopes: list[Scope] | None = None
