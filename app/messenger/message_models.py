import re
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import StringConstraints, model_validator
from sqlalchemy import ColumnElement, Index, UniqueConstraint, column, func, literal_column, text
from sqlmodel import Field, SQLModel

from app.core.models import Base, Id, NoNul, RowOut, UTCDateTime, Visible, body_config, utcnow
from app.messenger.upload_models import UploadOut

MAX_ATTACHMENTS = 10

Body = Annotated[
    str,
    NoNul,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=4000),
    Visible,  # last: it runs first
    Field(schema_extra={"examples": ["See you at noon?"]}),
]
# A send's body may be empty when the message carries an attachment.
SendBody = Annotated[
    str,
    NoNul,
    StringConstraints(strip_whitespace=True, max_length=4000),
    Visible,
    Field(schema_extra={"examples": ["See you at noon?"]}),
]
ClientId = Annotated[
    str, NoNul, Field(min_length=1, max_length=100, schema_extra={"examples": ["6f1c2a4e-phone-1"]})
]

# PostgreSQL's search, written once for its index and its query, which must repeat the
# index's very expression: literals, not parameters.
SIMPLE: ColumnElement[Any] = literal_column("'simple'::regconfig")


def alnum_runs(value: ColumnElement[str]) -> ColumnElement[str]:
    """`value` with anything but letters and digits made spaces. A word is then what `words`
    and SQLite's tokenizer take it for, where PostgreSQL's parser alone keeps "3.14",
    "ada@example.com" or "/usr/bin" one word, never met by a search for its parts. Letters
    are the database's ctype's, which must know non-ASCII ones (`simple` folds their case
    by it too)."""
    return func.regexp_replace(
        value, literal_column("'[^[:alnum:]]+'"), literal_column("' '"), literal_column("'g'")
    )


def searchable(body: ColumnElement[str]) -> ColumnElement[Any]:
    """A body's words as PostgreSQL's search index holds them."""
    return func.to_tsvector(SIMPLE, alnum_runs(body))


class Message(Base, table=True):
    thread_id: int = Field(foreign_key="thread.id")
    author_id: int = Field(foreign_key="user.id")
    body: str
    # Chosen by the client to make a send idempotent.
    client_id: str | None = Field(default=None, max_length=100)
    edited_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The thread's version after this message's last change.
    version: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # The message this one answers: it stays when that one is deleted (rows never go).
    reply_to_id: int | None = Field(default=None, foreign_key="message.id")

    __table_args__ = (
        # History pages walk this index; a page costs the same however long the thread.
        Index("ix_message_thread_id_id", "thread_id", "id"),
        # The changes feed walks this one.
        Index("ix_message_thread_id_version", "thread_id", "version"),
        # Idempotent send: the database refuses a second row, even under a race.
        UniqueConstraint("thread_id", "author_id", "client_id"),
        # Search (PostgreSQL; SQLite has the FTS5 table message_fts): declared so that
        # Alembic compares it, built by the migration.
        Index(
            "ix_message_body_fts",
            searchable(column("body")),
            postgresql_using="gin",
            postgresql_with={"fastupdate": "off"},
            postgresql_where=text("NOT deleted"),
        ).ddl_if(dialect="postgresql"),
    )


class Reaction(SQLModel, table=True):
    """One user's emoji on one message. Removing one really deletes the row."""

    id: int = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    message_id: int = Field(foreign_key="message.id")
    user_id: int = Field(foreign_key="user.id")
    emoji: str = Field(max_length=32)
    # The emoji's place on the message, copied from its earlier rows: it keeps the place of
    # its first use while anyone still uses it (`id` would move it behind later emoji once
    # its first user took it back).
    place: int

    # Two identical PUTs racing make one row; it also serves every lookup by message.
    __table_args__ = (UniqueConstraint("message_id", "user_id", "emoji"),)


class Mention(SQLModel, table=True):
    """A user a message mentions. Written once, with the message; never changed. It carries
    the message's thread, so that a user's mentions are read by thread and those of
    threads the user left are passed over without a look at their messages."""

    # The key serves the mentions of a page of messages.
    message_id: int = Field(foreign_key="message.id", primary_key=True)
    user_id: int = Field(foreign_key="user.id", primary_key=True)
    thread_id: int = Field(foreign_key="thread.id")

    __table_args__ = (
        # Unread mention counts: one range per user and thread, past the read marker.
        Index("ix_mention_user_id_thread_id_message_id", "user_id", "thread_id", "message_id"),
        # The mentions feed, newest first; the thread read from the index (PostgreSQL).
        Index(
            "ix_mention_user_id_message_id",
            "user_id",
            "message_id",
            postgresql_include=["thread_id"],
        ),
    )


def words(q: str) -> list[str]:
    """The words of a search: runs of letters and digits, as both full-text indexes see them."""
    return re.findall(r"[^\W_]+", q)


MAX_MENTIONS = 50  # entries of `mention_ids`, as sent


class MessageCreate(SQLModel):
    model_config = body_config(
        {"body": "See you at noon?", "client_id": "6f1c2a4e-phone-1"},
        {"body": "Noon works, Bob?", "reply_to_id": 41, "mention_ids": [2]},
    )

    body: SendBody = ""
    client_id: ClientId | None = None
    reply_to_id: Id | None = Field(
        default=None,
        description="The message this one answers: a live message of the same thread",
        schema_extra={"examples": [41]},
    )
    mention_ids: list[Id] = Field(
        default_factory=list,  # no `default` in the schema: optional in generated clients
        max_length=MAX_MENTIONS,
        description="Users this message mentions, each a member of the thread. Duplicates "
        "and the author's own id are dropped, and so is anyone who blocks the author.",
        schema_extra={"examples": [[2, 3]]},
    )
    attachment_ids: list[Id] = Field(
        default_factory=list,  # no `default` in the schema: optional in generated clients
        max_length=MAX_ATTACHMENTS,
        description="Uploads of the caller's that no message carries yet, in the order shown",
    )

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if not self.body and not self.attachment_ids:
            raise ValueError("body: at least 1 character, unless something is attached")
        return self


class MessageUpdate(SQLModel):
    model_config = body_config({"body": "See you at one?"})

    body: Body


class ReactionOut(SQLModel):
    emoji: str
    count: int
    me: bool


class MessageOut(RowOut):
    thread_id: int
    author_id: int
    body: str
    client_id: str | None
    edited_at: datetime | None
    version: int
    reply_to_id: int | None = Field(default=None, schema_extra={"examples": [41]})
    reactions: list[ReactionOut] = Field(default=[])  # a default_factory costs 100 µs here
    mention_ids: list[int] = Field(default=[], schema_extra={"examples": [[2]]})
    attachments: list[UploadOut] = Field(default=[])


class MessageChange(MessageOut):
    """An item of the changes feed: a deleted message is a tombstone with an empty body."""

    deleted: bool


class MessagePage(SQLModel):
    items: list[MessageOut]
    has_more: bool


class ChangesPage(SQLModel):
    items: list[MessageChange]
    version: int
    has_more: bool
