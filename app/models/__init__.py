"""Every table, imported here so that SQLModel.metadata (and Alembic) sees them all."""

from app.models.mail import Mail, MailToken
from app.models.message import Message, Reaction
from app.models.thread import Membership, Thread
from app.models.user import AuthSession, LoginCounter, User

__all__ = [
    "AuthSession",
    "LoginCounter",
    "Mail",
    "MailToken",
    "Membership",
    "Message",
    "Reaction",
    "Thread",
    "User",
]
