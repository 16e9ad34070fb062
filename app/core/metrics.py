"""Prometheus metrics, served at /metrics when METRICS_ENABLED=true. Requests are labelled by
route template (`/api/threads/{thread_id}`), never by raw path: ids would make a series each.

With WORKERS > 1 each process keeps its own registry: a scrape sees the process it hits."""

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

REQUESTS = Counter("http_requests_total", "Requests served", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer a request",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WEBSOCKETS = Gauge("websockets_open", "WebSockets connected to this process")
EVENTS = Counter("events_delivered_total", "Events written to WebSockets")
POOL = Gauge("db_pool_checked_out", "Database connections in use")
MAIL_QUEUE = Gauge("mail_queue_length", "Mails waiting to be sent")
# Set from the database by every process's hourly chores, moved by this process's uploads
# and purges since.
UPLOAD_BYTES = Gauge("upload_bytes_stored", "Bytes of uploaded files kept in storage")
UPLOADS_IN_FLIGHT = Gauge("uploads_in_flight", "Upload bodies this process is receiving")


async def endpoint(_: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
