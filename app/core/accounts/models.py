"""Accounts: users, their logins, the tokens mail carries; and their API shapes."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, EmailStr, StrictBool
from sqlalchemy import JSON, false
from sqlmodel import Field, SQLModel

from app.core.models import (
    Base,
    NoNul,
    Patch,
    RowOut,
    UTCDateTime,
    Visible,
    body_config,
    unique_live,
)

SCOPES = {
    "regular": "Every active user: own profile, threads and messages.",
    "admin": "List and manage users.",
    "superuser": "Change anyone's scopes.",
}

Scope = Literal["regular", "admin", "superuser"]

EMAIL_LENGTH = 320


def _lower(email: str) -> str:
    email = email.lower()
    if len(email) > EMAIL_LENGTH:  # lower case can be longer ("İ" is two characters)
        raise ValueError(f"at most {EMAIL_LENGTH} characters")
    return email


# email-validator's normalisation, then lower case: stored so, compared so, logged in so.
Email = Annotated[EmailStr, AfterValidator(_lower)]
Password = Annotated[str, Field(min_length=8, max_length=128)]
FullName = Annotated[
    str,
    NoNul,
    Field(min_length=1, max_length=255, schema_extra={"examples": ["Ada Lovelace"]}),
    Visible,  # last: it runs first
]


def _off(value: bool) -> bool:
    if value:
        raise ValueError("only false: a user turns two-factor login on itself")
    return value


# Only ever switched off by an admin (for a user who lost device and codes); StrictBool,
# not Literal[False], which would take a JSON 0.
TwoFactorOff = Annotated[
    StrictBool, AfterValidator(_off), Field(schema_extra={"json_schema_extra": {"const": False}})
]


class UserBase(SQLModel):
    email: Email = Field(max_length=EMAIL_LENGTH)
    full_name: FullName = Field(max_length=255)


class User(UserBase, Base, table=True):
    hashed_password: str
    scopes: list[str] = Field(default_factory=lambda: ["regular"], sa_type=JSON)
    is_active: bool = True
    email_verified: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    # An email change waits here until the mail sent to it comes back; it reserves nothing.
    pending_email: str | None = Field(default=None, max_length=EMAIL_LENGTH)
    # Part of every token; bumping it revokes all tokens issued before.
    token_version: int = 0
    # Two-factor login (app.core.accounts.twofactor): the TOTP secret, encrypted; pending
    # until a first code enables it. The steps it accepted: `UsedStep`.
    two_factor_enabled: bool = Field(default=False, sa_column_kwargs={"server_default": false()})
    totp_secret: str | None = Field(default=None, max_length=255)

    # A deleted user's email can register again.
    __table_args__ = (unique_live("uq_user_email_live", "email"),)


class AuthSession(Base, table=True):
    """One login and the refresh tokens descending from it: only the newest (`jti`) works,
    and presenting an older one revokes the whole chain."""

    __tablename__ = "auth_session"

    user_id: int = Field(foreign_key="user.id", index=True)
    jti: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class MailToken(Base, table=True):
    """A reset or verification token, stored only as its sha256; `deleted` once used or
    superseded. It holds the email it was mailed to."""

    __tablename__ = "mail_token"

    kind: str = Field(max_length=16)
    user_id: int = Field(foreign_key="user.id", index=True)
    email: str = Field(max_length=EMAIL_LENGTH)
    token_hash: str = Field(max_length=64, unique=True)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class RecoveryCode(SQLModel, table=True):
    """An unused recovery code of a user, as its keyed hash; using one deletes it. A table
    rather than a JSON list on the user: using a code is then one DELETE of one row, which
    two racing logins cannot both win, with no read-modify-write of a list."""

    __tablename__ = "recovery_code"

    user_id: int = Field(foreign_key="user.id", primary_key=True)
    code_hash: str = Field(max_length=64, primary_key=True)


class UsedStep(SQLModel, table=True):
    """A 30 s TOTP step accepted for a user, which never works again for that user: one row
    each, so a step of the drift window not yet accepted still works (one older than the
    newest accepted included), and accepting one is one INSERT two requests cannot both make."""

    __tablename__ = "totp_step"

    user_id: int = Field(foreign_key="user.id", primary_key=True)
    step: int = Field(primary_key=True)


class TokenRow(SQLModel):
    id: int
    kind: str
    user_id: int
    email: str
    created_at: datetime


class UserCreate(UserBase):
    model_config = body_config(
        {"email": "ada@example.com", "password": "correct horse battery", "full_name": "Ada"}
    )

    password: Password


class UserPublic(SQLModel):
    id: int
    full_name: str


class UserPrivate(RowOut):
    email: str
    full_name: str
    scopes: list[str]
    is_active: bool
    email_verified: bool
    pending_email: str | None
    two_factor_enabled: bool


class UserRow(UserPrivate):
    """A user as loaded from the database; never a response."""

    hashed_password: str
    token_version: int
    deleted: bool
    totp_secret: str | None


class UserUpdateMe(Patch):
    model_config = body_config(
        {
            "full_name": "Ada Lovelace",
            "password": "a new passphrase",
            "current_password": "correct horse battery",
        }
    )

    full_name: FullName | None = None
    email: Email | None = None
    password: Password | None = None
    current_password: str | None = Field(default=None, max_length=128)


class UserUpdate(Patch):
    """What an admin may change; `scopes` and `two_factor_enabled` need a superuser token."""

    model_config = body_config({"is_active": False, "scopes": ["regular", "admin"]})

    full_name: FullName | None = None
    email: Email | None = None
    is_active: bool | None = None
    scopes: list[Scope] | None = None
    two_factor_enabled: TwoFactorOff | None = Field(
        default=None, description="`false` turns the user's two-factor login off"
    )
