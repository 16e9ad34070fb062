"""What a few hostile connections can hold: slow bodies, password hashing, signups. Each
limit answers with a clear status, and the server keeps serving everyone else."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from httpx import AsyncClient, Response
from websockets.asyncio.client import connect

from app.core.settings import settings
from tests.helpers import API4, PASSWORD, bearer, login, ws_url
from tests.servers import clean_env, start

pytestmark = [API4, pytest.mark.timing]  # slow bodies and hashing, timed
SLOW_BODY = (
    b"POST /api/auth/signup HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100\r\n\r\n{"
)


def env(**extra: str) -> dict[str, str]:
    """A server on the suite's database (a SQLite file of its own when the suite is on
    SQLite: it then serves alone)."""
    database = {} if settings.is_sqlite else {"DATABASE_URL": settings.database_url}
    return clean_env(**database, **extra)


async def test_slow_bodies_hold_no_slot_and_time_out(tmp_path: Path) -> None:
    """40 requests whose body never finishes, more than MAX_CONCURRENT_REQUESTS (24): the
    server still answers at once, and each of them gets 408 and its connection closed."""
    with start(tmp_path, env(REQUEST_BODY_TIMEOUT_SECONDS="3")) as server:
        url = urlsplit(server.base)
        async with AsyncClient(base_url=server.base, timeout=5) as http:
            body = {"email": "slow@example.com", "password": PASSWORD, "full_name": "S"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            token = (await login(http, "slow@example.com")).json()["access_token"]
            sockets = [await asyncio.open_connection(url.hostname, url.port) for _ in range(40)]
            for _, writer in sockets:
                writer.write(SLOW_BODY)
                await writer.drain()
            await asyncio.sleep(0.5)  # every one of them is in, waiting for its body
            started = time.monotonic()
            assert (await http.get("/api/health")).status_code == 200
            lookup = await http.get(
                "/api/users/lookup", params={"email": "slow@example.com"}, headers=bearer(token)
            )
            assert lookup.status_code == 200  # needs a connection and a turn
            assert time.monotonic() - started < 2
            for reader, writer in sockets:
                answer = await asyncio.wait_for(reader.read(), 10)  # until the server closes
                assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
                assert b"Request body timed out" in answer
                writer.close()


async def test_headers_that_never_end_lose_their_connection(tmp_path: Path) -> None:
    """A connection that sends nothing, one that sends its headers a byte at a time (never
    the keep-alive timeout's 5 s of quiet), and one that does so for its second request:
    each is closed once REQUEST_HEADERS_TIMEOUT_SECONDS have passed. A WebSocket, whose
    request had its headers in time, is not."""
    with start(tmp_path, env(REQUEST_HEADERS_TIMEOUT_SECONDS="2")) as server:
        url = urlsplit(server.base)

        async def held(first: bytes, trickle: bytes) -> float:
            """How long the server keeps the connection after `first`'s answer, or after
            `first` if it has none, while `trickle` comes a byte every 0.2 s (5 s at most)."""
            reader, writer = await asyncio.open_connection(url.hostname, url.port)
            writer.write(first)
            if first.endswith(b"\r\n\r\n"):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            started, more = time.monotonic(), (trickle * 25)[:25]
            for byte in more or bytes(25):
                if more:
                    writer.write(bytes([byte]))
                with suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(), 0.2)  # returns once it is closed
                    break
            writer.close()
            return time.monotonic() - started

        slow = b"X-Slow: " + b"a" * 40
        cases = [(b"", b""), (b"", b"GET /" + b"a" * 40)]
        cases.append((b"GET /api/health HTTP/1.1\r\nHost: t\r\n", slow))
        cases.append((b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /" + slow))
        for first, trickle in cases:
            assert 1.5 < await held(first, trickle) < 4, (first, trickle)
        async with AsyncClient(base_url=server.base, timeout=5) as http:
            body = {"email": "ws@example.com", "password": PASSWORD, "full_name": "W"}
            assert (await http.post("/api/auth/signup", json=body)).status_code == 201
            token = (await login(http, "ws@example.com")).json()["access_token"]
        async with connect(ws_url(url.netloc, token)) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await asyncio.sleep(3)
            await asyncio.wait_for(await ws.ping(), 2)


async def test_a_full_hash_queue_is_reachable_and_answers_503(client: AsyncClient) -> None:
    """With the default settings' proportions (one hashing core, HASH_QUEUE_SIZE=32, logins
    holding no connection while they wait), a burst of logins fills the queue: 503 with
    Retry-After for the rest, never a stall behind the request turns."""
    assert settings.hash_queue_size == 32 and settings.max_concurrent_requests == 24
    form = [{"username": f"nobody{i}@example.com", "password": PASSWORD} for i in range(60)]
    replies = await asyncio.gather(*(client.post("/api/auth/token", data=f) for f in form))
    codes = [r.status_code for r in replies]
    assert set(codes) == {401, 503}, codes
    assert all(r.headers["Retry-After"].isdigit() for r in replies if r.status_code == 503)


async def hashing_time(client: AsyncClient) -> float:
    """What a request that hashes a password takes here (a failed login), at best."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        await client.post("/api/auth/token", data={"username": "no@example.com", "password": "x"})
        times.append(time.monotonic() - started)
    return min(times)


async def best_of(n: int, request: Callable[[], Awaitable[Response]], status: int) -> float:
    times = []
    for _ in range(n):
        started = time.monotonic()
        assert (await request()).status_code == status
        times.append(time.monotonic() - started)
    return min(times)


async def test_signups_are_limited_per_address_before_any_hashing(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "signups_per_address_per_hour", 3)
    bodies = [
        {"email": f"s{i}@example.com", "password": PASSWORD, "full_name": "S"} for i in range(5)
    ]
    codes = [(await client.post("/api/auth/signup", json=b)).status_code for b in bodies]
    assert codes == [201, 201, 201, 429, 429]
    r = await client.post("/api/auth/signup", json=bodies[4])
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 3000
    refused = await best_of(3, lambda: client.post("/api/auth/signup", json=bodies[4]), 429)
    assert refused < await hashing_time(client) / 2  # no Argon2 hash behind a 429


async def test_reset_confirm_checks_its_token_before_hashing(client: AsyncClient) -> None:
    body = {"token": "not a token anyone was mailed", "password": "a new passphrase"}
    confirm = partial(client.post, "/api/auth/password-reset/confirm", json=body)
    assert await best_of(3, confirm, 400) < await hashing_time(client) / 2


async def test_a_signup_refused_for_a_full_hashing_queue_uses_up_no_signup(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 503 created no account: once the burst is over, the address may still sign up, as
    a login refused so is no failed login."""
    monkeypatch.setattr(settings, "signups_per_address_per_hour", 2)
    monkeypatch.setattr(settings, "hash_queue_size", 0)
    body = {"email": "burst@example.com", "password": PASSWORD, "full_name": "B"}
    for _ in range(3):
        r = await client.post("/api/auth/signup", json=body)
        assert r.status_code == 503 and r.headers["Retry-After"].isdigit()
    monkeypatch.setattr(settings, "hash_queue_size", 32)
    assert (await client.post("/api/auth/signup", json=body)).status_code == 201


@pytest.mark.parametrize("path", ["/api/uploads", "/api/no-such-route"])
async def test_a_body_answered_before_it_is_read_holds_no_connection(
    tmp_path: Path, path: str
) -> None:
    """A request answered without its body being read (no login, no such route): a
    client that trickles that body on, past REQUEST_BODY_TIMEOUT_SECONDS, has its
    connection closed, as if the body had been read."""
    with start(tmp_path, env(REQUEST_BODY_TIMEOUT_SECONDS="2")) as server:
        url = urlsplit(server.base)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\n\r\n1\r\n-\r\n"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.split(b" ")[1] in (b"401", b"404"), head
        closed = False
        for _ in range(8):  # a byte a second: never the keep-alive timeout's 5 s of quiet
            try:
                writer.write(b"1\r\n-\r\n")
                await writer.drain()
                await asyncio.wait_for(reader.read(), 1)  # the rest of the answer, to its end
                closed = True
            except TimeoutError:
                continue
            except OSError:  # already closed: refused
                closed = True
            break
        writer.close()
        assert closed
