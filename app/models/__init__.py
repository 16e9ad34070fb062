"""Every table, imported here so that SQLModel.metadata (and Alembic) sees them all."""

from app.models.message import Message
from app.models.thread import Membership, Thread
from app.models.user import User

__all__ = ["Membership", "Message", "Thread", "User"]
