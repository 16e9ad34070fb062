"""CPU time per request of the app called as ASGI in this process: no HTTP, no wrk, no
other process on the same core; steadier than wrk on a noisy VM (still ±15 % run to run:
alternate two commits' runs and compare means). Its own users, a thread and 60 messages
(some mentioned, some reacted to) first.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE micro'
    export DATABASE_URL=postgresql://postgres@127.0.0.1/micro
    .venv/bin/alembic upgrade head && .venv/bin/python bench/inprocess.py
"""

import asyncio
import os
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

os.environ.setdefault("MESSAGES_PER_MINUTE", "1000000")  # the sends below are not abuse
os.environ.setdefault("SIGNUPS_PER_ADDRESS_PER_HOUR", "1000000")  # two a run, run often
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from app.main import app
from tests.helpers import sign_up

N = int(os.environ.get("N", "500"))  # requests a route (users/me: ten times as many)
SEND = b'{"body": "hello there"}'


async def measure(method: str, path: str, token: bytes) -> None:
    headers = [(b"host", b"bench"), (b"authorization", token)]
    if method == "POST":
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(SEND))]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
        "server": ("bench", 80),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": SEND if method == "POST" else b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    n = N * 10 if path.endswith("/me") else N
    for _ in range(n // 10):  # warm: caches, prepared statements
        await app(dict(scope), receive, send)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await app(dict(scope), receive, send)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert set(statuses) <= {200, 201}, set(statuses)
    print(f"{method:4} {path:30} cpu {cpu / n * 1e6:7.1f} µs  wall {wall / n * 1e6:7.1f} µs")


async def main() -> None:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            a = await sign_up(client, f"a{time.time_ns()}@example.com", "A")
            b = await sign_up(client, f"b{time.time_ns()}@example.com", "B")
            thread = {"title": "bench", "member_ids": [b["id"]]}
            tid = (await client.post("/api/threads", json=thread, headers=a.headers)).json()["id"]
            for i in range(60):
                body = {"body": f"hello {i}", "mention_ids": [b["id"]] if i % 5 == 0 else []}
                r = await client.post(f"/api/threads/{tid}/messages", json=body, headers=a.headers)
                if i % 3 == 0:
                    path = f"/api/threads/{tid}/messages/{r.json()['id']}/reactions/👍"
                    await client.put(path, headers=b.headers)
        token = a.headers["Authorization"].encode()
        for method, path in [
            ("GET", "/api/users/me"),
            ("GET", f"/api/threads/{tid}/messages"),
            ("GET", "/api/threads"),
            ("POST", f"/api/threads/{tid}/messages"),
        ]:
            await measure(method, path, token)


if __name__ == "__main__":
    asyncio.run(main())
