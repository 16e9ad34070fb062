"""The app, assembled from its features: each hands over its routes, what it subscribes to,
its background jobs, and what runs at start and stop. To remove the messenger example,
delete app/messenger/, its import and its entry in FEATURES (README: "Delete the messenger")."""

import asyncio
import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline

from app.core import http, metrics, telemetry
from app.core.accounts.feature import accounts
from app.core.db import engine, migrate_to_head
from app.core.events import bus
from app.core.feature import Feature, core
from app.core.jobs import runner
from app.core.logs import redact_server_logs
from app.core.middleware import API
from app.core.settings import settings
from app.messenger.feature import messenger

FEATURES: Sequence[Feature] = [core, accounts, messenger]

TAGS = [
    {"name": "auth", "description": "Sign up, log in (OAuth2 password flow), refresh, log out."},
    {"name": "users", "description": "Your profile; finding others; managing users (admin)."},
    {
        "name": "threads",
        "description": "Conversations of several users, their members and "
        "read markers. Only members see a thread.",
    },
    {
        "name": "messages",
        "description": "A thread's messages: send (idempotent with "
        "`client_id`), page, edit, delete, react, search.",
    },
    {
        "name": "uploads",
        "description": "Files to attach to messages: upload first, then name them in a send.",
    },
    {"name": "realtime", "description": "WebSocket events; see the description above."},
    {"name": "health", "description": "Liveness and readiness probes."},
]


def operation_id(route: APIRoute) -> str:
    """`{tag}-{name}`, so generated clients read well (users-read_me)."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(features: Sequence[Feature]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.is_sqlite:  # the embedded default needs no setup step
            await asyncio.to_thread(migrate_to_head)
        for feature in features:
            for subscription in feature.subscriptions:
                bus.add(subscription)
            runner.jobs.update(feature.jobs)
            runner.templates.update(feature.mails)
            runner.chores.extend(feature.chores)
            for step in feature.startup:
                await step()
        services = [s for f in features for s in f.services]
        await bus.start()
        for service in services:
            await service.start()
        # What start-up made lives as long as the process: no collection walks it again. And
        # a request allocates thousands of objects (rows, models) that refcounting frees: look
        # for cycles among young ones every 20,000 allocations, not every 700.
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        yield
        for service in reversed(services):
            await service.stop()
        await bus.stop()
        bus.clear()
        runner.jobs.clear()
        runner.templates.clear()
        runner.chores.clear()
        await engine.dispose()
        telemetry.shutdown()  # last: the spans of the steps above are sent too

    # Swagger UI and ReDoc are served from the app itself (the fastapi-offline package ships
    # their files), so the docs work without a CDN: offline, behind a strict proxy.
    app = FastAPIOffline(
        title=settings.project_name,
        description=(Path(__file__).parent / "description.md").read_text(),
        version="0.1.0",
        openapi_tags=TAGS,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        swagger_ui_parameters={"validatorUrl": None},  # it would call out to swagger.io
    )
    http.install(app, upload_paths=[path for f in features for path in f.upload_paths])
    redact_server_logs()
    for feature in features:
        for router in feature.routers:
            app.include_router(router, prefix=API)
    if settings.metrics_enabled:
        app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
        metrics.POOL.set_function(lambda: engine.pool.checkedout())  # type: ignore[attr-defined]
    telemetry.install(app, engine)  # Sentry, traces: when configured and installed
    return app


app = create_app(FEATURES)
