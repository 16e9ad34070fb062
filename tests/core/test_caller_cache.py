"""The per-process caller cache (app.core.accounts.tokens.callers) never outlives a change:
whatever one process changes about a user, every process sees at once."""

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from httpx import AsyncClient

from app.core.channels import (
    ANSWER,
    CHANNEL,
    ECHO_SECONDS,
    HEARD_SECONDS,
    LISTENER_NAME,
    ROLL_CALL,
    Channel,
    choose,
    keep_proving,
    listener_dsn,
)
from app.core.db import connect
from app.core.events import bus
from app.core.settings import settings
from tests.helpers import API2, PASSWORD, MakeUser, User, bearer, me, pg_only, set_scopes
from tests.servers import cut_listeners, serve_suite_db


@contextmanager
def two_servers(tmp_path: Path) -> Iterator[tuple[AsyncClient, AsyncClient]]:
    with serve_suite_db(tmp_path / "a") as a, serve_suite_db(tmp_path / "b") as b:
        yield AsyncClient(base_url=a), AsyncClient(base_url=b)


async def warm(token: str, *clients: AsyncClient) -> None:
    """Both processes answer from their caches from now on."""
    for client in clients:
        for _ in range(3):
            assert await me(client, token) == 200


@API2
async def test_changes_are_seen_at_once_in_this_process(
    client: AsyncClient, make_user: MakeUser
) -> None:
    user = await make_user()
    token = user["token"]["access_token"]
    await warm(token, client)
    r = await client.patch("/api/users/me", json={"full_name": "New"}, headers=bearer(token))
    assert r.status_code == 200
    assert (await client.get("/api/users/me", headers=bearer(token))).json()["full_name"] == "New"
    assert (await client.post("/api/auth/logout", headers=bearer(token))).status_code == 204
    assert await me(client, token) == 401


@API2
@pg_only
async def test_revocations_reach_the_other_process_at_once(
    make_user: MakeUser, tmp_path: Path
) -> None:
    """Each way of losing access, made in one process, is refused by the other on the very
    next request, with no wait in between, many times over."""
    admin = await make_user(scopes=["regular", "admin", "superuser"])
    with two_servers(tmp_path) as (a, b):
        async with a, b:
            for round in range(12):
                one, other = (a, b) if round % 2 else (b, a)
                user = await make_user()
                token = user["token"]["access_token"]
                await warm(token, one, other)
                way = round % 4
                if way == 0:
                    r = await one.post("/api/auth/logout", headers=bearer(token))
                elif way == 1:
                    change = {"password": "another password", "current_password": PASSWORD}
                    r = await one.patch("/api/users/me", json=change, headers=bearer(token))
                elif way == 2:
                    r = await one.patch(
                        f"/api/users/{user['id']}",
                        json={"is_active": False},
                        headers=bearer(admin["token"]["access_token"]),
                    )
                else:  # a refresh token presented twice ends its login
                    refresh = {"refresh_token": user["token"]["refresh_token"]}
                    assert (await one.post("/api/auth/refresh", json=refresh)).status_code == 200
                    r = await one.post("/api/auth/refresh", json=refresh)
                    assert r.status_code == 401
                assert r.status_code in (200, 204, 401), r.text
                assert await me(other, token) == 401, f"round {round}: revocation way {way}"
                assert await me(one, token) == 401


@pg_only
async def test_profile_changes_reach_the_other_process_at_once(
    make_user: MakeUser, tmp_path: Path
) -> None:
    user = await make_user()
    token = user["token"]["access_token"]
    with two_servers(tmp_path) as (a, b):
        async with a, b:
            await warm(token, a, b)
            for n in range(10):
                one, other = (a, b) if n % 2 else (b, a)
                r = await one.patch(
                    "/api/users/me", json={"full_name": f"Name {n}"}, headers=bearer(token)
                )
                assert r.status_code == 200
                seen = (await other.get("/api/users/me", headers=bearer(token))).json()
                assert seen["full_name"] == f"Name {n}"


async def remembered(client: AsyncClient, user: User) -> bool:
    """Whether `client`'s process answers for `user` from its cache: scopes changed behind
    its back (raw SQL tells no process) show only to a process that asks the database."""
    headers = bearer(user["token"]["access_token"])
    first = (await client.get("/api/users/me", headers=headers)).json()["scopes"]
    flipped = ["regular"] if "admin" in first else ["regular", "admin"]
    await set_scopes(user["id"], flipped)
    return bool((await client.get("/api/users/me", headers=headers)).json()["scopes"] != flipped)


async def remembers(client: AsyncClient, user: User, seconds: float = 10) -> None:
    """`client`'s process answers from its cache within `seconds` (it does once it hears)."""
    deadline = time.monotonic() + seconds
    while not await remembered(client, user):
        assert time.monotonic() < deadline, f"{client.base_url} remembers no caller"
        await asyncio.sleep(0.1)


@API2
@pg_only
async def test_no_cache_while_the_listener_is_away(make_user: MakeUser, tmp_path: Path) -> None:
    """A process that cannot hear changes (its LISTEN connection dropped) asks the database
    each time until it hears again: a revocation made meanwhile elsewhere is not missed.
    Once it hears again, it remembers callers again."""
    user, probe = await make_user(), await make_user()
    token = user["token"]["access_token"]
    with two_servers(tmp_path) as (a, b):
        async with a, b:
            await warm(token, a, b)
            await remembers(a, probe)
            # Both processes lose their listeners; they reconnect after a second. (Only the
            # listeners on this database: others on the server are none of this test's.)
            await cut_listeners()
            await asyncio.sleep(0.2)
            assert not await remembered(a, probe)
            assert (await b.post("/api/auth/logout", headers=bearer(token))).status_code == 204
            assert await me(a, token) == 401  # before either listener is back
            await asyncio.sleep(2)
            assert await me(a, token) == 401
            for server in (a, b):
                await remembers(server, probe)


async def test_a_listener_lost_while_its_probe_is_out_gives_up_at_once() -> None:
    """A listener's connection that drops while its probe is on the way (the echo never
    comes) ends its session at once: not ECHO_SECONDS later, while its process would go on
    answering from a cache that no longer hears revocations, and telling no socket."""
    echo, lost = asyncio.Event(), asyncio.Event()
    heard: list[bool] = []

    async def probe() -> None:  # it goes out; the connection drops before the echo is back
        asyncio.get_running_loop().call_later(0.05, lost.set)

    await asyncio.wait_for(keep_proving(probe, echo, lost, heard.append), ECHO_SECONDS / 5)
    assert heard == []


@pytest.mark.parametrize("turns", range(10))
async def test_a_listener_stops_even_when_stopped_as_its_echo_comes_back(turns: int) -> None:
    """Stopping cancels the listener. Python 3.11's asyncio.wait_for drops a cancellation
    that lands as what it waits for arrives: the listener would probe on, and its process
    never finish shutting down. Here the stop lands `turns` turns of the loop after the
    echo is back."""
    loop, echo, lost, stops = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event(), [turns]

    def later(turns: int, then: Callable[[], Any]) -> None:
        if turns:
            loop.call_soon(later, turns - 1, then)
        else:
            then()

    async def probe() -> None:
        echo.set()  # back at once; the stop follows, once
        if stops:
            later(stops.pop(), proving.cancel)

    proving = asyncio.create_task(keep_proving(probe, echo, lost, lambda _: None))
    try:
        await asyncio.wait([proving], timeout=ECHO_SECONDS / 5)
        assert proving.cancelled()
    finally:
        lost.set()
        proving.cancel()
        await asyncio.gather(proving, return_exceptions=True)


@pg_only
async def test_a_change_is_answered_only_once_every_listener_read_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What makes the test above hold: the publisher answers once every process listening
    has read the event and answered the roll call behind it. A publisher that cannot hear
    (never started listening) answers after HEARD_SECONDS all the same, and says so."""

    async def publish(channel: Channel) -> float:
        payload = json.dumps({"type": "test.echo", "id": uuid4().hex})
        started = time.monotonic()
        async with connect() as conn:
            await channel.committed(conn, [payload], wait=True)
        return time.monotonic() - started

    deaf = choose()
    try:
        with caplog.at_level(logging.WARNING, logger="app.events"):
            assert HEARD_SECONDS <= await publish(deaf) < HEARD_SECONDS + 1
        assert "event listeners did not answer in time" in caplog.text
    finally:
        await deaf.stop()
    caplog.clear()
    channel, listening = choose(), asyncio.Event()
    heard: list[str] = []
    await channel.start(heard.append, lambda up: listening.set() if up else None)
    try:
        await asyncio.wait_for(listening.wait(), 10)
        for _ in range(5):
            assert await publish(channel) < 1
            assert json.loads(heard[-1])["type"] == "test.echo"
        assert "did not answer" not in caplog.text
    finally:
        await channel.stop()


@pytest.mark.timing
@pg_only
@pytest.mark.skipif(bool(settings.events_url), reason="about NOTIFY")
async def test_a_listener_that_reads_late_holds_the_answer_back() -> None:
    """PostgreSQL hands a notification to each listener when that listener's backend gets
    to it: hearing one's own says nothing of the others'. Here a second listener reads
    late (nothing is delivered inside a transaction): the publisher waits for it."""
    late = await asyncpg.connect(
        listener_dsn(), server_settings={"application_name": LISTENER_NAME}
    )
    got: list[str] = []
    answering: list[asyncio.Task[str]] = []

    def read(*args: Any) -> None:
        got.append(args[3])
        if args[3].startswith(ROLL_CALL):  # as every process's listener answers
            answer = late.execute("SELECT pg_notify($1, $2)", CHANNEL, ANSWER + args[3][1:])
            answering.append(asyncio.get_running_loop().create_task(answer))

    try:
        await late.add_listener(CHANNEL, read)
        await late.execute("BEGIN")
        payload = json.dumps({"type": "test.echo", "id": uuid4().hex})
        async with connect() as conn:
            started = time.monotonic()
            publishing = asyncio.create_task(bus.channel.committed(conn, [payload], wait=True))
            await asyncio.sleep(0.5)
            assert not publishing.done() and got == []
            await late.execute("COMMIT")  # it reads now, and answers
            await publishing
        assert time.monotonic() - started < HEARD_SECONDS - 0.5  # answered, not given up
        assert got[0] == payload
    finally:
        await late.close()
