"""The outbox (mail and other background jobs, committed with the change that asks for
them) and the single-use tokens that mail carries."""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON
from sqlmodel import Field, SQLModel

from app.models.base import Base, UTCDateTime


class Mail(Base, table=True):
    """One queued mail or job. Pending while `next_attempt_at` is set: a sender claims it
    by moving that forward (a lease), and clears it once delivered."""

    kind: str = Field(max_length=32)
    to: str = Field(max_length=320)
    # What the template needs (a token): emptied once sent, so no token outlives delivery.
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    attempts: int = 0
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


class MailToken(Base, table=True):
    """A reset or verification token, stored only as its sha256; `deleted` once used or
    superseded. A verification token holds the email it was sent to."""

    __tablename__ = "mail_token"

    kind: str = Field(max_length=16)
    user_id: int = Field(foreign_key="user.id", index=True)
    email: str = Field(max_length=320)
    token_hash: str = Field(max_length=64, unique=True)
    expires_at: datetime = Field(sa_type=UTCDateTime)


class MailRow(SQLModel):
    id: int
    kind: str
    to: str
    data: dict[str, Any]
    attempts: int


class TokenRow(SQLModel):
    id: int
    kind: str
    user_id: int
    email: str
