"""Error reports (Sentry) and traces (OpenTelemetry over OTLP/HTTP), both optional extras,
loaded by name so the app imports and type-checks without them. Neither ever receives a
query string: a WebSocket's access token travels there.

Sentry: on when SENTRY_DSN is set and the `sentry` extra is installed. Traces: on when
OTEL_EXPORTER_OTLP_ENDPOINT is in the process environment (the SDK reads its own variables,
not .env) and the `otel` extra is installed: a server span per request or WebSocket, tagged
`request.id` (its log line's), and a child span per SQL statement (placeholders, no values).
"""

import importlib
import importlib.util
import os
from typing import Any
from urllib.parse import unquote, unquote_plus

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import redact
from app.core.settings import settings

OTEL = (
    "opentelemetry.sdk",
    "opentelemetry.exporter.otlp.proto.http",
    "opentelemetry.instrumentation.fastapi",
    "opentelemetry.instrumentation.sqlalchemy",
)
SAFE_HEADERS = frozenset({"host", "user-agent", "content-type", "content-length", "x-request-id"})
URL_ATTRIBUTES = frozenset({"http.url", "http.target", "url.full", "url.path", "url.query"})
_provider: Any = None  # the TracerProvider once installed, for shutdown()


def installed(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(name) for name in modules)
    except ModuleNotFoundError:  # find_spec imports the parent package, which may be absent
        return False


def install(app: FastAPI, engine: AsyncEngine) -> None:
    global _provider
    if settings.sentry_dsn and installed("sentry_sdk"):
        importlib.import_module("sentry_sdk").init(
            dsn=settings.sentry_dsn,
            environment=settings.environment,
            before_send=scrub_event,
            # A report must not carry what the request carried: frames' local variables
            # hold bodies (passwords, tokens) and scopes (the Authorization header).
            include_local_variables=False,
            max_request_body_size="never",
            send_default_pii=False,
        )
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if _provider is not None or not endpoint or not installed(*OTEL):
        return
    load = importlib.import_module
    service = os.environ.get("OTEL_SERVICE_NAME") or "fastapi-boilerplate"
    resource = load("opentelemetry.sdk.resources").Resource.create({"service.name": service})
    _provider = load("opentelemetry.sdk.trace").TracerProvider(resource=resource)
    # The exporter reads OTEL_EXPORTER_OTLP_*; the batch processor exports from its thread.
    exporter = load("opentelemetry.exporter.otlp.proto.http.trace_exporter").OTLPSpanExporter()
    _provider.add_span_processor(
        load("opentelemetry.sdk.trace.export").BatchSpanProcessor(exporter)
    )
    load("opentelemetry.trace").set_tracer_provider(_provider)
    load("opentelemetry.instrumentation.fastapi").FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=_provider,
        server_request_hook=scrub_span,
        # Else each ASGI message is a span: every frame of a socket open for hours.
        exclude_spans=["receive", "send"],
        http_capture_headers_sanitize_fields=["authorization", "cookie", "set-cookie"],
    )
    # The async engine's sync core sees every statement once, whatever the driver (asyncpg's
    # own instrumentation would double them). No sqlcommenter: a comment per route would
    # make statement texts unique and defeat asyncpg's statement cache. The package still
    # declares "sqlalchemy < 2.1"; the events it uses are unchanged (tests/core/test_telemetry.py).
    load("opentelemetry.instrumentation.sqlalchemy").SQLAlchemyInstrumentor().instrument(
        engine=engine.sync_engine,
        tracer_provider=_provider,
        enable_commenter=False,
        skip_dep_check=True,
    )
    app.add_middleware(RequestIdOnSpan, current_span=load("opentelemetry.trace").get_current_span)


def scrub_event(event: dict[str, Any], _: Any) -> dict[str, Any]:
    """Sentry's hook before an event leaves: the request's URL without its query, and none
    of its body, cookies or headers but the harmless ones; no frame's variables."""
    request = event.get("request") or {}
    for key in ("query_string", "data", "cookies"):
        request.pop(key, None)
    if isinstance(request.get("url"), str):
        request["url"] = request["url"].split("?")[0]
    if isinstance(headers := request.get("headers"), dict):
        request["headers"] = {k: v for k, v in headers.items() if k.lower() in SAFE_HEADERS}
    for exception in (event.get("exception") or {}).get("values") or ():
        for frame in (exception.get("stacktrace") or {}).get("frames") or ():
            frame.pop("vars", None)
    return event


def scrub_span(span: Any, scope: Scope) -> None:
    """The server span's hook, run right after the instrumentation set the URL attributes
    (the only ones it fills from the query): the query goes, raw or decoded, wherever it
    landed. The instrumentation's own redact_url blanks a few signature parameters only."""
    if not span.is_recording():
        return
    raw = scope.get("query_string", b"").decode("latin-1")
    forms = {raw, unquote(raw), unquote_plus(raw)} - {""}
    for key, value in dict(span.attributes or {}).items():
        if not isinstance(value, str):
            continue
        if ("?" in value and key in URL_ATTRIBUTES) or any(f in value for f in forms):
            path, query, _ = value.partition("?")
            span.set_attribute(key, path if query else "[redacted]")
        elif key in URL_ATTRIBUTES and redact(value) != value:  # a query encoded (%3F) in the path
            span.set_attribute(key, redact(value))


class RequestIdOnSpan:
    """The request id RequestLog chose (its X-Request-ID) on the server span, set as the
    first message passes: the span ends with the last one, and this runs inside it."""

    def __init__(self, app: ASGIApp, current_span: Any) -> None:
        self.app, self.current_span = app, current_span

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span, tagged = self.current_span(), False

        async def tag_then_send(message: Message) -> None:
            nonlocal tagged
            if not tagged and (request_id := scope.get("state", {}).get("request_id")):
                span.set_attribute("request.id", request_id)
                tagged = True
            await send(message)

        await self.app(scope, receive, tag_then_send)


def shutdown() -> None:
    """Exports what is still queued (a worker that uvicorn stops may never reach the SDK's
    own exit hook)."""
    if _provider is not None:
        _provider.shutdown()
