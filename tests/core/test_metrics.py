"""Prometheus metrics, when METRICS_ENABLED: by route template, never by raw path."""

from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from app.core.settings import settings
from tests.servers import serve


async def test_no_metrics_unless_enabled(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


def test_metrics_by_route_template(tmp_path: Path) -> None:
    with serve(tmp_path, METRICS_ENABLED="true") as base:
        for user_id in (7, 8, 9):
            assert httpx.get(f"{base}/api/users/{user_id}", timeout=30).status_code == 401
        text = httpx.get(f"{base}/metrics", timeout=30).text
    assert 'http_requests_total{method="GET",route="/api/users/{user_id}",status="401"} 3.0' in text
    assert "/api/users/7" not in text  # raw ids would make a series each
    latency = 'http_request_duration_seconds_count{method="GET",route="/api/users/{user_id}",'
    assert latency + 'status="401"} 3.0' in text
    for name in ("websockets_open", "events_delivered_total", "db_pool_checked_out"):
        assert f"\n{name}" in text, name


async def test_a_clients_methods_and_paths_make_no_series_of_their_own(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers other than uvicorn's default pass any method on: labels come from a fixed set."""
    monkeypatch.setattr(settings, "metrics_enabled", True)
    for n in range(3):
        await client.request(f"INVENTED{n}", "/api/health")
    assert (await client.get("/api/no/such/path")).status_code == 404
    text = generate_latest().decode()
    assert "INVENTED" not in text and 'method="other"' in text
    assert 'route="unmatched"' in text and "/apiunmatched" not in text
