"""Uploads: files a user sends first, then names in a message (`attachment_ids`). The bytes
live in storage (app.core.storage) under `key`; the row says whose they are and where."""

from datetime import datetime

from sqlalchemy import BigInteger, Index, false, text
from sqlmodel import Field, SQLModel

from app.core.models import Base

# Rows no message carries, not deleted: a user's pending ones are counted, old ones expire.
PENDING = "message_id IS NULL AND NOT deleted"


class Upload(Base, table=True):
    """`deleted`: no one may read it any more (its message was deleted, or it expired, or its
    uploader deleted it); `purged`: its bytes are gone too, or being deleted by a job."""

    uploader_id: int = Field(foreign_key="user.id")
    key: str = Field(max_length=32, unique=True)  # secrets.token_hex(16): never user input
    filename: str = Field(max_length=255)
    content_type: str = Field(max_length=32)
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    message_id: int | None = Field(default=None, foreign_key="message.id")
    position: int = 0  # its place among its message's attachments, as given at send
    purged: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": false()}
    )

    __table_args__ = (
        # A page's attachments, in order.
        Index("ix_upload_message_id_position", "message_id", "position"),
        # A user's pending uploads are counted at each upload; expired ones found hourly.
        Index(
            "ix_upload_uploader_id_pending",
            "uploader_id",
            postgresql_where=text(PENDING),
            sqlite_where=text(PENDING),
        ),
        Index(
            "ix_upload_created_at_pending",
            "created_at",
            postgresql_where=text(PENDING),
            sqlite_where=text(PENDING),
        ),
    )


class UploadOut(SQLModel):
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    created_at: datetime


class UploadRow(UploadOut):
    """An upload as the repository reads it: where its bytes are, and whose it is."""

    key: str
    uploader_id: int
    message_id: int | None
