from datetime import datetime
from typing import Annotated

from pydantic import Strict
from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from app.db import MAX_ID, Base, Id, NoNul, RowOut, UTCDateTime, examples
from app.models.user import UserPublic

Title = Annotated[str, NoNul, Field(max_length=200, schema_extra={"examples": ["Weekend plans"]})]


class ThreadBase(SQLModel):
    title: Title | None = Field(default=None, max_length=200)


class Thread(ThreadBase, Base, table=True):
    owner_id: int = Field(foreign_key="user.id", index=True)
    last_message_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Membership(Base, table=True):
    """A user in a thread. Leaving soft-deletes the row; joining again adds a new one."""

    thread_id: int = Field(foreign_key="thread.id")
    user_id: int = Field(foreign_key="user.id")
    # Messages up to this id are read; only ever moves forward.
    last_read_message_id: int = 0

    __table_args__ = (
        Index(
            "uq_membership_thread_user_live",
            "thread_id",
            "user_id",
            unique=True,
            sqlite_where=text("NOT deleted"),
            postgresql_where=text("NOT deleted"),
        ),
        # The caller's threads.
        Index("ix_membership_user_id_live", "user_id", postgresql_where=text("NOT deleted")),
    )


class ThreadCreate(ThreadBase):
    model_config = examples({"title": "Weekend plans", "member_ids": [2, 3]})

    member_ids: list[Annotated[Id, Strict()]] = Field(max_length=1000)


class ThreadUpdate(SQLModel):
    model_config = examples({"title": "Sunday plans"})

    title: Title | None = None


class ThreadOut(ThreadBase, RowOut):
    owner_id: int
    members: list[UserPublic]
    last_message_at: datetime | None
    unread_count: int


class MemberAdd(SQLModel):
    model_config = examples({"user_id": 4})

    user_id: Annotated[Id, Strict()]  # JSON `true` is no id


class ReadMarker(SQLModel):
    model_config = examples({"message_id": 42})

    message_id: Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
