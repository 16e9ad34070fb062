from datetime import datetime
from typing import Annotated

from pydantic import StringConstraints
from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import Base, NoNul, RowOut, UTCDateTime, examples

Body = Annotated[
    str,
    NoNul,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4000),
    Field(schema_extra={"examples": ["See you at noon?"]}),
]


class MessageBase(SQLModel):
    body: Body
    # Chosen by the client to make a send idempotent.
    client_id: Annotated[str, NoNul] | None = Field(
        default=None, min_length=1, max_length=100, schema_extra={"examples": ["6f1c2a4e-phone-1"]}
    )


class MessageRefs(SQLModel):
    thread_id: int = Field(foreign_key="thread.id")
    author_id: int = Field(foreign_key="user.id")
    edited_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Message(MessageBase, MessageRefs, Base, table=True):
    __table_args__ = (
        # History pages walk this index; a page costs the same however long the thread.
        Index("ix_message_thread_id_id", "thread_id", "id"),
        # Idempotent send: the database refuses a second row, even under a race.
        UniqueConstraint("thread_id", "author_id", "client_id"),
    )


class MessageCreate(MessageBase):
    model_config = examples({"body": "See you at noon?", "client_id": "6f1c2a4e-phone-1"})


class MessageUpdate(SQLModel):
    model_config = examples({"body": "See you at one?"})

    body: Body


class MessageOut(MessageBase, MessageRefs, RowOut):
    pass


class MessagePage(SQLModel):
    items: list[MessageOut]
    has_more: bool
