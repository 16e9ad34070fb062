"""What a request may cost, and what happens when the server is full: bodies over 1 MiB are
413; a full request queue, hashing queue or connection pool answers 503 with Retry-After at
once rather than making everyone wait."""

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from httpx import AsyncClient
from sqlalchemy import make_url

from app.core.db import engine
from app.core.settings import settings
from tests.helpers import API4, MakeUser, fetch, login, pg_only, signup, sqlite_only
from tests.servers import serve, serve_suite_db


@asynccontextmanager
async def write_lock() -> AsyncIterator[None]:
    """SQLite's write lock, held by another connection meanwhile."""
    path = make_url(settings.async_database_url).database
    assert path
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # what every writer takes first
    try:
        yield
    finally:
        other.rollback()
        other.close()


@API4
async def test_bodies_over_1_mib_are_413_before_parsing(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    big = b'{"full_name": "' + b"x" * (1024 * 1024) + b'"}'
    r = await client.patch(
        "/api/users/me",
        content=big,
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and isinstance(r.json()["detail"], str)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield b"x" * 65536

    r = await client.post(
        "/api/auth/signup", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413
    # Just under the limit is parsed as usual (and refused for what it says).
    r = await client.post(
        "/api/auth/signup",
        content=b'{"email": "' + b"x" * (1024 * 1000) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422


@API4
async def test_a_multipart_content_type_does_not_lift_the_limit(client: AsyncClient) -> None:
    """Only routes that take uploads read more than 1 MiB, whatever the client claims."""
    body = b"x" * (2 * 1024 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    headers = {"Content-Type": "multipart/form-data; boundary=x"}
    for content in (body, chunks()):
        r = await client.post("/api/auth/signup", content=content, headers=headers)
        assert r.status_code == 413, r.text


@pytest.mark.timing
@API4
async def test_a_full_request_queue_answers_503(tmp_path: Path) -> None:
    # Parallel logins of one email are counted before they are checked: allow them all.
    env = {"MAX_CONCURRENT_REQUESTS": "1", "REQUEST_QUEUE_SIZE": "2"}
    with serve(tmp_path, LOGIN_FAILURES_PER_EMAIL="100", **env) as base:
        async with AsyncClient(base_url=base) as http:
            assert (await signup(http, "q@example.com")).status_code == 201
            # Logins take tens of milliseconds each: twelve at once overflow one slot + two.
            answers = await asyncio.gather(*(login(http, "q@example.com") for _ in range(12)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 3, [
        (r.status_code, r.text) for r in answers
    ]
    assert all(r.headers["retry-after"] for r in answers if r.status_code == 503)


@pytest.mark.timing
@API4
async def test_full_hash_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    with serve_suite_db(tmp_path, HASH_QUEUE_SIZE="1") as base:
        async with AsyncClient(base_url=base, timeout=30) as http:
            replies = await asyncio.gather(*(signup(http, f"q{i}@example.com") for i in range(12)))
            codes = [r.status_code for r in replies]
            assert set(codes) == {201, 503}, codes
            assert all(r.headers["Retry-After"].isdigit() for r in replies if r.status_code == 503)
            assert (await signup(http, "later@example.com")).status_code == 201


@pytest.mark.timing
@API4
@pg_only
async def test_pool_timeout_is_503_with_retry_after(make_user: MakeUser, tmp_path: Path) -> None:
    user = await make_user()
    pool = {"DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "0.5"}
    with serve_suite_db(tmp_path, **pool) as base:
        async with AsyncClient(base_url=base, timeout=30) as http, engine.connect() as lock:
            # A write that blocks on a table lock keeps the only pooled connection busy.
            await lock.exec_driver_sql('LOCK TABLE "user" IN EXCLUSIVE MODE')
            stuck = asyncio.create_task(
                http.patch("/api/users/me", json={"full_name": "Stuck"}, headers=user.headers)
            )
            await asyncio.sleep(0.5)
            r = await http.get(f"/api/users/{user['id']}", headers=user.headers)
            assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
            await lock.rollback()
            assert (await stuck).status_code == 200
            # It recovers by itself.
            assert (await http.get("/api/users/me", headers=user.headers)).status_code == 200


@pytest.mark.timing
@API4
@pg_only
async def test_a_turn_is_waited_for_no_longer_than_the_pool_timeout(
    make_user: MakeUser, tmp_path: Path
) -> None:
    """While every turn is held by a request that cannot finish, the requests queued behind
    it answer 503 once DB_POOL_TIMEOUT has passed, not whenever a turn comes free."""
    user = await make_user()
    env = {"MAX_CONCURRENT_REQUESTS": "1", "DB_POOL_TIMEOUT": "1"}
    with serve_suite_db(tmp_path, **env) as base:
        async with AsyncClient(base_url=base, timeout=10, headers=user.headers) as http:
            async with engine.connect() as lock:
                await lock.exec_driver_sql('LOCK TABLE "user" IN EXCLUSIVE MODE')
                # The one turn: a write that waits for the lock.
                stuck = asyncio.create_task(http.patch("/api/users/me", json={"full_name": "S"}))
                await asyncio.sleep(0.5)
                started = time.monotonic()
                r = await http.get(f"/api/users/{user['id']}")
                assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
                assert time.monotonic() - started < 3
                await asyncio.sleep(4 - (time.monotonic() - started))  # still held meanwhile
                await lock.rollback()
            assert (await stuck).status_code == 200
            assert (await http.get(f"/api/users/{user['id']}")).status_code == 200


@pytest.mark.timing
@API4
@pg_only
async def test_a_lock_wait_past_lock_timeout_is_503(make_user: MakeUser, tmp_path: Path) -> None:
    """An operator's lock_timeout cuts a write short as statement_timeout does: 503."""
    user = await make_user()
    [[database]] = await fetch("SELECT current_database()")
    async with engine.connect() as admin:  # the server's connections start with it
        await admin.exec_driver_sql(f'ALTER DATABASE "{database}" SET lock_timeout = 300')
        await admin.commit()
    try:
        with serve_suite_db(tmp_path) as base:
            async with AsyncClient(base_url=base, timeout=30) as http, engine.connect() as lock:
                await lock.exec_driver_sql('LOCK TABLE "user" IN EXCLUSIVE MODE')
                r = await http.patch("/api/users/me", json={"full_name": "L"}, headers=user.headers)
                assert r.status_code == 503 and r.headers["Retry-After"].isdigit(), r.text
    finally:
        async with engine.connect() as admin:
            await admin.exec_driver_sql(f'ALTER DATABASE "{database}" RESET lock_timeout')
            await admin.commit()


@pytest.mark.timing
@API4
@pg_only
async def test_logins_do_not_hold_a_connection_while_hashing(
    make_user: MakeUser, tmp_path: Path
) -> None:
    user = await make_user()
    # Parallel logins of one email are counted before they are checked: allow them all.
    env = {"DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "0.3", "LOGIN_FAILURES_PER_EMAIL": "100"}
    with serve_suite_db(tmp_path, **env) as base:
        async with AsyncClient(base_url=base, timeout=30) as http:
            # Hashes take turns on one core: twenty of them take far longer than the pool
            # timeout, which only hurts if a login keeps its connection while it waits.
            replies = await asyncio.gather(
                *(login(http, user["email"]) for _ in range(20)),
                *(http.get("/api/users/me", headers=user.headers) for _ in range(5)),
            )
    codes = [r.status_code for r in replies]
    assert codes == [200] * 25, codes


@pytest.mark.timing
@API4
@sqlite_only
async def test_sqlite_reads_do_not_wait_for_the_write_lock(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    async with write_lock():
        started = time.monotonic()
        for path in ("/api/users/me", f"/api/users/{user['id']}"):
            assert (await client.get(path, headers=user.headers)).status_code == 200
        assert time.monotonic() - started < 2
        write = asyncio.create_task(
            client.patch("/api/users/me", json={"full_name": "Later"}, headers=user.headers)
        )
        await asyncio.sleep(0.5)
        assert not write.done()  # the writer waits its turn
    assert (await write).status_code == 200
