from datetime import datetime
from typing import Annotated

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from app.core.accounts.models import UserPublic
from app.core.models import (
    MAX_ID,
    Base,
    Id,
    NoNul,
    RowOut,
    UTCDateTime,
    body_config,
    unique_live,
    utcnow,
)

Title = Annotated[str, NoNul, Field(max_length=200, schema_extra={"examples": ["Weekend plans"]})]


class Thread(Base, table=True):
    title: str | None = Field(default=None, max_length=200)
    owner_id: int = Field(foreign_key="user.id", index=True)
    last_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Grows with every change to the thread, its members or its messages, in commit
    # order: each change takes the row's lock to bump it (see repositories.threads).
    version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class Membership(Base, table=True):
    """A user in a thread. Leaving soft-deletes the row; joining again adds a new one."""

    thread_id: int = Field(foreign_key="thread.id")
    user_id: int = Field(foreign_key="user.id")
    # Messages up to this id are read; only ever moves forward.
    last_read_message_id: int = 0

    __table_args__ = (
        unique_live("uq_membership_thread_user_live", "thread_id", "user_id"),
        # The caller's threads.
        Index("ix_membership_user_id_live", "user_id", postgresql_where=text("NOT deleted")),
    )


class Block(SQLModel, table=True):
    """`user_id` blocks `blocked_id`: the blocked user cannot put the blocker in a thread,
    mention it or show it its typing. Unblocking deletes the row."""

    # The key serves each check: does this user block that one.
    user_id: int = Field(foreign_key="user.id", primary_key=True)
    blocked_id: int = Field(foreign_key="user.id", primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ThreadRow(RowOut):
    """A thread as loaded from the database."""

    title: str | None
    owner_id: int
    last_message_at: datetime | None
    version: int


class ThreadOut(ThreadRow):
    members: list[UserPublic]
    unread_count: int
    unread_mention_count: int = Field(
        description="Messages after the caller's read marker that mention the caller",
        schema_extra={"examples": [1]},
    )


class Member(UserPublic):
    last_read_message_id: int


class ThreadCreate(SQLModel):
    model_config = body_config({"title": "Weekend plans", "member_ids": [2, 3]})

    title: Title | None = None
    member_ids: list[Id] = Field(max_length=1000)


class ThreadUpdate(SQLModel):
    model_config = body_config({"title": "Sunday plans"})

    title: Title | None = None


class MemberAdd(SQLModel):
    model_config = body_config({"user_id": 4})

    user_id: Id


class ReadMarker(SQLModel):
    model_config = body_config({"message_id": 42})

    message_id: int = Field(ge=0, le=MAX_ID)
