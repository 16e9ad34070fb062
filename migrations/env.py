import asyncio
import warnings
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import app.main  # noqa: F401  (every feature's tables, on SQLModel.metadata)
from app.core.models import UTCDateTime
from app.core.settings import settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def render_item(kind: str, obj: Any, autogen_context: Any) -> str | bool:
    # Migrations should not import the app: write our column type as what it stores.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def include_object(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
    # SQLite's search index: an FTS5 table (and its shadow tables) the migration builds by
    # hand, unknown to the models.
    return not (kind == "table" and (name or "").startswith("message_fts"))


# PostgreSQL's search index exists only there; SQLite cannot compare it, and says so.
warnings.filterwarnings("ignore", message=".*expression-based index 'ix_message_body_fts'")


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_item=render_item,
        include_object=include_object,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async() -> None:
    engine = create_async_engine(settings.direct_database_url, poolclass=NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=settings.direct_database_url, target_metadata=SQLModel.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(run_async())
