"""The uploads' metrics as a scrape sees them, from a real `python -m app` process on the
suite's database: bytes stored (from the database at start, then moved by its uploads) and
uploads in flight."""

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from sqlalchemy import text

from app.core.db import engine
from app.messenger.upload_lifecycle import SWEEP_LOCK
from tests.helpers import ON_SQLITE, MakeUser, multipart, upload
from tests.messenger.conftest import Backend
from tests.servers import serve_suite_db


def gauge(scrape: str, name: str) -> float:
    [value] = [line.split()[1] for line in scrape.splitlines() if line.startswith(f"{name} ")]
    return float(value)


async def test_bytes_stored_and_uploads_in_flight(
    client: httpx.AsyncClient, make_user: MakeUser, disk: Backend, tmp_path: Path
) -> None:
    me = await make_user()
    before = await upload(client, me, b"x" * 1000)
    async with AsyncExitStack() as held:
        if not ON_SQLITE:  # another process is sweeping: this one still counts from the rows
            conn = await held.enter_async_context(engine.connect())
            await held.enter_async_context(conn.begin())
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK})
        # Counted from the rows, whatever the storage: the process shares this folder.
        env = {"METRICS_ENABLED": "true", "UPLOAD_DIR": str(disk.root)}
        with serve_suite_db(tmp_path / "server", **env) as base:
            async with httpx.AsyncClient(base_url=base) as http:

                async def scrape() -> str:
                    r = await http.get("/metrics")
                    assert r.status_code == 200
                    return r.text

                deadline = time.monotonic() + 10
                while gauge(await scrape(), "upload_bytes_stored") != before["size"]:
                    assert time.monotonic() < deadline, "not counted from the database"
                    await asyncio.sleep(0.1)
                assert gauge(await scrape(), "uploads_in_flight") == 0
                body, headers = multipart(b"y" * 500)
                r = await http.post("/api/uploads", content=body, headers={**me.headers, **headers})
                assert r.status_code == 201, r.text
                assert gauge(await scrape(), "upload_bytes_stored") == 1500
