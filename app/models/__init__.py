"""Every table, imported here so that SQLModel.metadata (and Alembic) sees them all."""

from app.models import mail, message, thread, user  # noqa: F401
