"""Operating it: metrics, worker processes."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from app.core.settings import settings
from tests.helpers import PASSWORD, fetch, serve

pg_only = pytest.mark.skipif(settings.is_sqlite, reason="worker processes need PostgreSQL")


async def test_no_metrics_unless_enabled(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


def test_metrics_by_route_template(tmp_path: Path) -> None:
    with serve(tmp_path, METRICS_ENABLED="true") as base:
        for user_id in (7, 8, 9):
            assert httpx.get(f"{base}/api/users/{user_id}").status_code == 401
        text = httpx.get(f"{base}/metrics").text
    assert 'http_requests_total{method="GET",route="/api/users/{user_id}",status="401"} 3.0' in text
    assert "/api/users/7" not in text  # raw ids would make a series each
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET"' in text
    for name in ("websockets_open", "events_delivered_total", "db_pool_checked_out"):
        assert f"\n{name}" in text, name


def test_sqlite_serves_with_one_worker_and_says_why(tmp_path: Path) -> None:
    with serve(tmp_path, WORKERS="2") as base:
        assert httpx.get(f"{base}/api/health").status_code == 200
    log = (tmp_path / "server.log").read_text()
    assert "WORKERS=2 ignored: SQLite serves from one process" in log


@pg_only
async def test_two_workers_share_events_and_login_limits(tmp_path: Path) -> None:
    env = {"DATABASE_URL": settings.database_url, "WORKERS": "2"}
    with serve(tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            users = []
            for name in ("ada", "bob"):
                body = {"email": f"{name}@w.example", "password": PASSWORD, "full_name": name}
                assert (await http.post("/api/auth/signup", json=body)).status_code == 201
                form = {"username": f"{name}@w.example", "password": PASSWORD}
                users.append((await http.post("/api/auth/token", data=form)).json())
            listeners = await fetch(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'app-events'"
            )
            assert listeners[0][0] >= 2  # one per worker process
            ada, bob = ({"Authorization": f"Bearer {u['access_token']}"} for u in users)
            bob_id = (await http.get("/api/users/me", headers=bob)).json()["id"]
            thread = await http.post("/api/threads", json={"member_ids": [bob_id]}, headers=ada)
            ws_url = base.replace("http", "ws") + f"/api/ws?token={users[1]['access_token']}"
            async with connect(ws_url) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"

                async def send(n: int) -> None:  # a connection each: spread over the workers
                    async with httpx.AsyncClient(base_url=base, headers=ada) as own:
                        path = f"/api/threads/{thread.json()['id']}/messages"
                        assert (await own.post(path, json={"body": f"m{n}"})).status_code == 201

                await asyncio.gather(*(send(n) for n in range(10)))
                got = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(10)]
            assert sorted(e["data"]["body"] for e in got) == sorted(f"m{n}" for n in range(10))

            async def guess() -> int:
                async with httpx.AsyncClient(base_url=base) as own:
                    form = {"username": "ada@w.example", "password": "wrong password"}
                    return (await own.post("/api/auth/token", data=form)).status_code

            codes = [await guess() for _ in range(settings.login_failures_per_email + 1)]
            assert codes[-1] == 429 and codes.count(401) == settings.login_failures_per_email


async def test_a_full_request_queue_answers_503(tmp_path: Path) -> None:
    env = {"MAX_CONCURRENT_REQUESTS": "1", "REQUEST_QUEUE_SIZE": "2"}
    with serve(tmp_path, **env) as base:
        async with httpx.AsyncClient(base_url=base) as http:
            body = {"email": "q@example.com", "password": PASSWORD, "full_name": "Q"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            form = {"username": "q@example.com", "password": PASSWORD}
            # Logins take tens of milliseconds each: twelve at once overflow one slot + two.
            answers = await asyncio.gather(
                *(http.post("/api/auth/token", data=form) for _ in range(12))
            )
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 3, [
        (r.status_code, r.text) for r in answers
    ]
    assert all(r.headers["retry-after"] for r in answers if r.status_code == 503)
