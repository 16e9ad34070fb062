"""How events travel between processes, chosen once at start-up (app.core.events.Bus).
Each sends what a transaction published right after it commits, on its connection:

- PostgreSQL NOTIFY (the default), heard by one LISTEN connection per process. No other
  server is needed. Sent after the commit, not inside the transaction: NOTIFY takes a
  database-wide lock as its transaction commits, which would make every writing commit
  (and the row locks they hold, a busy thread's) wait on every other. Payloads stop at
  8,000 bytes (bigger events travel as a reference), and LISTEN cannot pass a pooler in
  transaction mode (DATABASE_URL_DIRECT is for it).
- Redis pub/sub (EVENTS_URL=redis://…).
- In process (SQLite: one process).

Two commits may be heard in the other order (two processes, two connections): what needs
commit order puts events back in it (app.messenger.ordering, by each thread's version).

Each listener proves itself end to end with a message to itself every second: a
dead peer is not always reported, and through a pooler LISTEN seems to work but never
hears anything. `heard(True)` once nothing more can be missed, `heard(False)` at once when
something may have been."""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any
from uuid import uuid4

import asyncpg
import redis.asyncio as redis
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.settings import settings

log = logging.getLogger("app.events")
CHANNEL = "app_events"
# A probe each second; one that does not come back within ECHO_SECONDS means the listener
# is lost (under load an echo can take a while: a false alarm closes every socket).
PROBE_SECONDS, ECHO_SECONDS = 1.0, 5.0
# How long a publisher waits to hear an event back before it answers anyway.
HEARD_SECONDS = 2.0
NOTIFY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")
Receive = Callable[[str], None]
Heard = Callable[[bool], None]


class Channel:
    """In process: what one process commits, it hears."""

    limit: int | None = None  # largest payload in bytes, if any

    def __init__(self) -> None:
        self.receive: Receive = lambda _: None
        self.task: asyncio.Task[None] | None = None
        self.echoes: dict[str, deque[asyncio.Future[None]]] = {}  # by payload, oldest first

    async def committed(
        self, conn: AsyncConnection, payloads: list[str], until_heard: list[str] | None = None
    ) -> None:
        """Send `payloads`; return once those in `until_heard` came back to this process too.
        Every listener is sent an event at once, so by then each other process has it
        waiting to be read before any request that the answer could lead to: a token
        revoked here is refused there on the very next request."""
        loop = asyncio.get_running_loop()
        waits = {payload: loop.create_future() for payload in until_heard or ()}
        for payload, wait in waits.items():
            self.echoes.setdefault(payload, deque()).append(wait)
        try:
            await self.send(conn, payloads)
            if waits:
                await asyncio.wait(waits.values(), timeout=HEARD_SECONDS)
        finally:  # heard ones are gone already; not heard in time, or the request went away
            for payload, wait in waits.items():
                queue = self.echoes.get(payload, deque())
                if wait in queue:
                    queue.remove(wait)
                if not queue:
                    self.echoes.pop(payload, None)

    def arrived(self, payload: str) -> None:
        if queue := self.echoes.get(payload):
            queue.popleft().set_result(None)
        self.receive(payload)

    async def send(self, conn: AsyncConnection, payloads: list[str]) -> None:
        for payload in payloads:
            self.arrived(payload)

    async def listen(self, heard: Heard) -> None:
        heard(True)

    async def start(self, receive: Receive, heard: Heard) -> None:
        self.receive = receive
        self.task = asyncio.create_task(self.listen(heard))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class Notify(Channel):
    limit = 7900  # PostgreSQL refuses payloads of 8000 bytes and more

    async def send(self, conn: AsyncConnection, payloads: list[str]) -> None:
        try:
            await conn.execute(NOTIFY, {"channel": CHANNEL, "payloads": payloads})
            if conn.in_transaction():  # behind a pooler reads are transactions too
                await conn.commit()
        except DBAPIError as exc:
            # Committed but not told: the version gap shows, and the changes feed fills it.
            log.warning("events not sent: %s", type(exc).__name__)

    async def listen(self, heard: Heard) -> None:
        url = make_url(settings.direct_database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        probe, echo = f"{CHANNEL}_{uuid4().hex}", asyncio.Event()

        async def session() -> None:
            conn = await asyncpg.connect(
                dsn, timeout=5, server_settings={"application_name": "app-events"}
            )
            lost = asyncio.Event()
            try:
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, lambda *args: self.arrived(args[3]))
                await conn.add_listener(probe, lambda *_: echo.set())
                await keep_proving(lambda: conn.execute(f"NOTIFY {probe}"), echo, lost, heard)
            finally:
                conn.terminate()  # never left half-open behind a failed probe

        await reconnecting(session, heard)


class Redis(Channel):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, client_name=redis_client_name()
        )
        # One Redis may serve several apps: each database's events on a channel of its own.
        self.channel = f"{CHANNEL}:{make_url(settings.database_url).database}"

    async def send(self, conn: AsyncConnection, payloads: list[str]) -> None:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for payload in payloads:
                    pipe.publish(self.channel, payload)
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # Committed but not told: the version gap shows, and the changes feed fills
            # it; other processes' caches forget the user within their lifetime.
            log.warning("events not published: %r", exc)

    async def listen(self, heard: Heard) -> None:
        probe, echo = f"{CHANNEL}_{uuid4().hex}", asyncio.Event()

        async def session() -> None:
            async with self.client.pubsub() as pubsub:
                await pubsub.subscribe(self.channel, probe)
                lost = asyncio.Event()

                async def read() -> None:
                    try:
                        async for message in pubsub.listen():
                            if message["type"] != "message":
                                continue
                            if message["channel"] == probe.encode():
                                echo.set()
                            else:
                                self.arrived(message["data"].decode())
                    finally:
                        lost.set()

                reader = asyncio.create_task(read())
                try:
                    await keep_proving(lambda: self.client.publish(probe, b""), echo, lost, heard)
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)

        await reconnecting(session, heard)

    async def stop(self) -> None:
        await super().stop()
        await self.client.aclose()


async def keep_proving(
    send_probe: Callable[[], Any], echo: asyncio.Event, lost: asyncio.Event, heard: Heard
) -> None:
    """Send ourselves a message and wait for it, again and again, until one does not come
    back in time (TimeoutError) or the connection says it is gone."""
    while not lost.is_set():
        echo.clear()
        await send_probe()
        await asyncio.wait_for(echo.wait(), ECHO_SECONDS)
        heard(True)
        with suppress(TimeoutError):  # a closed connection says so at once
            await asyncio.wait_for(lost.wait(), PROBE_SECONDS)


async def reconnecting(session: Callable[[], Any], heard: Heard) -> None:
    """Run a listening session again whenever it ends, whatever ended it."""
    warned = False
    while True:
        try:
            await session()
        except Exception as exc:  # listen again: events depend on it
            if not warned:
                log.warning("event listener cannot hear events: %r", exc)
            warned = True
        else:
            warned = False
        heard(False)
        await asyncio.sleep(1)


def redis_client_name() -> str:
    """`app-events:<database>`: on a Redis that several apps share, CLIENT LIST tells whose
    connection each is. Redis takes only printable ASCII without spaces in a name."""
    name = f"app-events:{make_url(settings.database_url).database}"
    return "".join(c if "!" <= c <= "~" else "_" for c in name)


def choose() -> Channel:
    if settings.events_url:
        return Redis(settings.events_url)
    return Channel() if settings.is_sqlite else Notify()
