"""OpenTelemetry traces, as a collector receives them: a real server process exports over
OTLP/HTTP to a receiver this test runs, which decodes the protobuf requests.

What a tracing backend gets is kept for weeks and read by many: no token, password, query
string or SQL parameter may be in it, anywhere in the exported bytes.
"""

import asyncio
import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
from sqlalchemy import make_url
from websockets.asyncio.client import connect

from app.core import telemetry
from app.core.db import engine
from app.core.settings import settings
from tests.helpers import PASSWORD, READY, next_event, ws_url
from tests.servers import serve

SERVER, CLIENT = SpanProto.SpanKind.SPAN_KIND_SERVER, SpanProto.SpanKind.SPAN_KIND_CLIENT


@dataclass
class Span:
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    name: str
    kind: int
    attributes: dict[str, Any]
    scope: str  # the instrumentation that made it


def value(v: AnyValue) -> Any:
    field = v.WhichOneof("value")
    return getattr(v, field) if field else None


class Receiver:
    """POST /v1/traces with application/x-protobuf, as a collector's OTLP/HTTP receiver."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = (
                    self.path == "/v1/traces"
                    and self.headers.get("Content-Type") == "application/x-protobuf"
                )
                if ok:
                    ExportTraceServiceRequest.FromString(body)  # raises (no reply) on a bad body
                    bodies.append(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        # Port 0: the kernel picks a free one while binding, no window for another taker.
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def spans(self) -> list[Span]:
        found = []
        for body in list(self.bodies):
            for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for s in scope_spans.spans:
                        attributes = {a.key: value(a.value) for a in s.attributes}
                        found.append(
                            Span(
                                s.trace_id,
                                s.span_id,
                                s.parent_span_id,
                                s.name,
                                s.kind,
                                attributes,
                                scope_spans.scope.name,
                            )
                        )
        return found

    def resources(self) -> list[dict[str, Any]]:
        requests = [ExportTraceServiceRequest.FromString(b) for b in list(self.bodies)]
        return [
            {a.key: value(a.value) for a in rs.resource.attributes}
            for request in requests
            for rs in request.resource_spans
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def server_span(spans: list[Span], route: str) -> Span | None:
    return next(
        (s for s in spans if s.kind == SERVER and s.attributes.get("http.route") == route), None
    )


def statements(spans: list[Span]) -> list[Span]:
    return [s for s in spans if "db.system" in s.attributes and "db.statement" in s.attributes]


async def test_requests_and_sql_are_traced_without_secrets(
    tmp_path: Path, receiver: Receiver
) -> None:
    email = "traced@example.com"
    env = {
        "DATABASE_URL": settings.database_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "traced-app",
        # Both the old and the stable HTTP attributes (url.query, url.full...): neither
        # may carry the query.
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",
    }
    with serve(tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            body = {"email": email, "password": PASSWORD, "full_name": "Traced Person"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            form = {"username": email, "password": PASSWORD}
            token = (await http.post("/api/auth/token", data=form)).json()
            access, refresh = token["access_token"], token["refresh_token"]
            me = await http.get(
                "/api/users/me?secret=querytext",
                headers={"Authorization": f"Bearer {access}"},
            )
            assert me.status_code == 200, me.text
        async with connect(ws_url(base.removeprefix("http://"), access)) as ws:
            assert await next_event(ws) == READY

        routes = ["/api/auth/signup", "/api/auth/token", "/api/users/me", "/api/ws"]
        for _ in range(100):  # up to 10 s: batches leave every 100 ms
            spans = receiver.spans()
            token_span = server_span(spans, "/api/auth/token")
            in_login = [
                s for s in statements(spans) if token_span and s.trace_id == token_span.trace_id
            ]
            if all(server_span(spans, r) for r in routes) and in_login:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"spans missing; got {sorted({s.name for s in spans})}")

    # Nothing secret anywhere in what was exported: attributes, names, events, statuses,
    # resources. The raw protobuf holds every string as its UTF-8 bytes.
    secrets = [access, refresh, PASSWORD, "querytext", email, "Traced Person"]
    secrets += [p for p in [make_url(settings.async_database_url).password] if p]
    forms = {f for s in secrets for f in (s, quote(s), quote_plus(s))}
    leaked = {f for f in forms for body in receiver.bodies if f.encode() in body}
    assert not leaked, "exported: " + ", ".join(f[:16] + "..." for f in leaked)

    # One span per request, named by its route template, its URL without the query.
    me_span = server_span(spans, "/api/users/me")
    assert me_span and me_span.name == "GET /api/users/me"
    assert me_span.attributes["http.url"].endswith("/api/users/me")
    assert me_span.attributes["url.path"] == "/api/users/me"
    assert me_span.attributes.get("url.query") in (None, "[redacted]")
    ws_span = server_span(spans, "/api/ws")
    assert ws_span and ws_span.attributes["http.url"].endswith("/api/ws")

    # The id of the response's X-Request-ID (and of the log line) is on the server span.
    assert me_span.attributes["request.id"] == me.headers["x-request-id"]
    assert "request.id" in ws_span.attributes

    # SQL statements are children of the request that ran them: their parents lead up to
    # the server span, in its trace. Each statement once: the async engine's sync core
    # records it, and no driver instrumentation (asyncpg's) does as well.
    by_id = {s.span_id: s for s in spans}
    for sql in in_login:
        parent = by_id.get(sql.parent_id)
        while parent and parent.kind != SERVER:
            parent = by_id.get(parent.parent_id)
        assert parent is token_span, sql
        assert sql.kind == CLIENT
    clients = {s.scope for s in spans if s.kind == CLIENT}
    assert clients == {"opentelemetry.instrumentation.sqlalchemy"}
    assert {r.get("service.name") for r in receiver.resources()} == {"traced-app"}

    # SQL is recorded with placeholders, without a sqlcommenter comment.
    for sql in statements(spans):
        assert "/*" not in sql.attributes["db.statement"], sql.attributes


async def test_nothing_installed_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's own app was imported without OTEL_*: it is not instrumented; and with an
    endpoint but without the packages, install() adds nothing either."""
    from app.main import app

    assert not getattr(app, "_is_instrumented_by_opentelemetry", False)
    middleware: list[object] = [m.cls for m in app.user_middleware]
    assert telemetry.RequestIdOnSpan not in middleware
    assert telemetry._provider is None

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    bare = FastAPI()
    telemetry.install(bare, engine)
    assert bare.user_middleware == [] and telemetry._provider is None

    def missing(name: str) -> None:
        raise ModuleNotFoundError(name)

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("importlib.util.find_spec", missing)
    telemetry.install(bare, engine)
    assert bare.user_middleware == [] and telemetry._provider is None


async def test_a_token_encoded_into_the_path_is_not_traced(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A client that encoded its whole URL sends its query in the path (`%3Ftoken=`)."""
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    env = {
        "DATABASE_URL": settings.database_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http/dup",
    }
    with serve(tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            await http.get(f"/api/users/me%3Ftoken={token}")  # 401: no bearer token
        for _ in range(100):
            if any(s.kind == SERVER and "GET" in s.name for s in receiver.spans()):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("no server span")
    forms = {token, token.split(".")[2], quote(token)}
    assert not {f for f in forms for body in receiver.bodies if f.encode() in body}
