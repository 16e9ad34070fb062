"""What every answer carries: security headers and a request id; CORS only for the
origins the settings name."""

import re
from pathlib import Path

import httpx
import pytest
from httpx import AsyncClient

from app.core.accounts.feature import accounts
from app.core.feature import core
from app.core.settings import settings
from app.main import create_app
from tests.helpers import API8
from tests.servers import serve


@API8
async def test_security_headers_and_request_id(client: AsyncClient) -> None:
    r = await client.get("/api/health")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    again = await client.get("/api/health")
    assert again.headers["x-request-id"] != r.headers["x-request-id"]
    r = await client.get("/api/health", headers={"X-Request-ID": "trace-42.a_b"})
    assert r.headers["x-request-id"] == "trace-42.a_b"
    r = await client.get("/api/health", headers={"X-Request-ID": "bad id\twith <junk>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    # The docs page loads its scripts, so it gets no API CSP; errors carry the headers too.
    assert "content-security-policy" not in (await client.get("/docs")).headers
    r = await client.get("/api/users/me")
    assert r.status_code == 401 and r.headers["x-content-type-options"] == "nosniff"


@API8
async def test_no_cors_by_default(client: AsyncClient) -> None:
    r = await client.options(
        "/api/health",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = await client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


@API8
def test_cors_origins_from_settings(tmp_path: Path) -> None:
    with serve(tmp_path, CORS_ORIGINS='["https://app.example"]') as base:
        preflight = {"Access-Control-Request-Method": "PATCH"}
        r = httpx.options(
            f"{base}/api/users/me", headers={"Origin": "https://app.example", **preflight}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = httpx.options(
            f"{base}/api/users/me", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in r.headers


@API8
async def test_a_body_refused_before_any_route_carries_cors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A browser shows its page an answer only with the CORS headers: a body too large
    (or too slow) is refused before any route, and must reach the origins allowed too."""
    monkeypatch.setattr(settings, "cors_origins", ["https://app.example"])
    transport = httpx.ASGITransport(app=create_app([core, accounts]))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post(
            "/api/auth/signup",
            content=b"x" * (1024 * 1024 + 1),
            headers={"Origin": "https://app.example", "Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert r.headers["access-control-allow-origin"] == "https://app.example"
