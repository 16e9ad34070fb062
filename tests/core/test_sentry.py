"""Error reports, as Sentry receives them: a real process with SENTRY_DSN set reports an
unexpected error to a receiver this test runs. A report is read by many and kept for long:
no password, token or query string of the request that failed may be in it."""

import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.servers import clean_env

SECRETS = ("pass-word-in-the-body", "token-in-the-query", "bearer-in-the-header")

# The app with one more feature: a route that fails after reading its body, as a bug
# would, with the request's secrets in its local variables and its scope.
FAILING = f"""
import asyncio
import httpx
import sentry_sdk
from fastapi import APIRouter, Request
from app.core.accounts.feature import accounts
from app.core.feature import Feature, core
from app.main import create_app

router = APIRouter()

@router.post("/fails")
async def fails(request: Request) -> None:
    body = await request.json()
    raise RuntimeError("a bug, with " + str(len(body)) + " fields at hand")

app = create_app([core, accounts, Feature(name="failing", routers=[router])])

async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            r = await client.post(
                "/api/fails?token={SECRETS[1]}",
                json={{"password": "{SECRETS[0]}"}},
                headers={{"Authorization": "Bearer {SECRETS[2]}"}},
            )
            assert r.status_code == 500, r.status_code
    sentry_sdk.flush(10)

asyncio.run(main())
"""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []

    class Envelopes(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Envelopes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://key@127.0.0.1:{server.server_port}/1", received
    server.shutdown()


def test_a_report_carries_no_secret_of_the_request(
    receiver: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    dsn, received = receiver
    env = clean_env(
        SENTRY_DSN=dsn,
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/app.db",
        UPLOAD_DIR=str(tmp_path / "uploads"),
        PYTHONPATH=str(ROOT),
    )
    run = subprocess.run(
        [sys.executable, "-c", FAILING], cwd=tmp_path, env=env, capture_output=True, timeout=60
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    reports = b"\n".join(received)
    assert b"a bug, with 1 fields at hand" in reports  # the report did arrive
    for secret in SECRETS:
        assert secret.encode() not in reports, secret
