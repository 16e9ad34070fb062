"""A feature, as the app is assembled from it (app/main.py): its routes (and which take
uploads), what it subscribes to, its background jobs and chores, and what runs at start and
stop. The core is one."""

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from fastapi import APIRouter
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core import health, limits
from app.core.db import refuse_a_hidden_pooler, transaction
from app.core.events import Listening, MailQueued, Subscription, on
from app.core.jobs import Chore, Job, Template, runner
from app.core.settings import settings
from app.core.storage import files


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Feature:
    name: str
    routers: Sequence[APIRouter] = ()
    # Who hears which event, when (app.core.events): registered at start-up, never on import.
    subscriptions: Sequence[Subscription] = ()
    jobs: Mapping[str, Job] = field(default_factory=dict)  # outbox rows of these kinds
    mails: Mapping[str, Template] = field(default_factory=dict)  # mail of these kinds
    chores: Sequence[Chore] = ()  # hourly, each taking its transactions (pruning)
    startup: Sequence[Callable[[], Awaitable[None]]] = ()  # once, before serving
    services: Sequence[Service] = ()  # started after the event bus, stopped before it
    # Full paths whose multipart bodies may reach MAX_UPLOAD_BYTES (others: 1 MiB).
    upload_paths: Sequence[str] = ()


async def prune_counters(conn: AsyncConnection) -> None:
    longest = max(settings.login_failure_window_seconds, 3600)
    async with transaction(conn):
        await limits.prune(conn, timedelta(seconds=longest))


core = Feature(
    name="core",
    routers=[health.router],
    subscriptions=[on(MailQueued, runner.wake), on(Listening, runner.wake)],
    chores=[prune_counters],
    startup=[refuse_a_hidden_pooler],
    services=[files, runner],  # stopped in reverse: no job uses storage once it is closed
)
