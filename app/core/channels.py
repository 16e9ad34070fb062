"""How events travel between processes, chosen once at start-up (app.core.events.Bus).
Each sends what a transaction published right after it commits, on its connection:

- PostgreSQL NOTIFY (the default), heard by one LISTEN connection per process. No other
  server is needed. Sent after the commit, not inside the transaction: NOTIFY takes a
  database-wide lock as its transaction commits, which would make every writing commit
  (and the row locks they hold, a busy thread's) wait on every other. Payloads stop at
  8,000 bytes (bigger events travel as a reference), and LISTEN cannot pass a pooler in
  transaction mode (DATABASE_URL_DIRECT is for it).
- Redis pub/sub (EVENTS_URL=redis://…). In process on SQLite (one process).

Two commits may be heard in the other order (two processes, two connections): what needs
commit order puts events back in it (app.messenger.ordering, by each thread's version).

Each listener proves itself end to end with a message to itself every second: a dead peer is
not always reported, and through a pooler LISTEN seems to work but never hears anything.
`heard(True)` once nothing more can be missed, `heard(False)` at once when something may
have been.

What another process must know before the client's next request (a revoked token) is
followed by a roll call: every listener reads it after what came before it, and answers
it; the publisher answers its client once all have (`committed(..., wait=True)`).
PostgreSQL hands a notification to each listener when that listener's backend gets to
it, so hearing one's own echo says nothing of the others."""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import asyncpg
import redis.asyncio as redis
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError, PendingRollbackError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.driver import fetch
from app.core.settings import settings

log = logging.getLogger("app.events")
CHANNEL = "app_events"
# A probe each second; one that does not come back within ECHO_SECONDS means the listener
# is lost (under load an echo can take a while: a false alarm closes every socket).
PROBE_SECONDS, ECHO_SECONDS = 1.0, 5.0
HEARD_SECONDS = 2.0  # a roll call's wait for every listener (one may be starting, or stuck)
NOTIFY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")
# Each process's LISTEN connection, as pg_stat_activity names it. A role sees the names
# of its own sessions only: DATABASE_URL and DATABASE_URL_DIRECT log in as the same role.
LISTENER_NAME = "app-events"
LISTENERS = text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = :name"
)
# Events are JSON objects; a roll call is "?<id>", an answer to it "!<id>".
ROLL_CALL, ANSWER = "?", "!"
Receive = Callable[[str], None]
Heard = Callable[[bool], None]


class Channel:
    """In process: what one process commits, it hears."""

    limit: int | None = None  # largest payload in bytes, if any

    def __init__(self) -> None:
        self.receive: Receive = lambda _: None
        self.task: asyncio.Task[None] | None = None
        self.calls: dict[str, deque[asyncio.Future[None]]] = {}  # a roll call's answers due
        self.answers: asyncio.Queue[str] = asyncio.Queue()  # for this listener to send

    async def committed(self, conn: AsyncConnection, payloads: list[str], wait: bool) -> None:
        """Send `payloads`; with `wait`, return once every process listening has read them
        (at most HEARD_SECONDS): a token revoked here is refused there on the next request."""
        if not wait:
            return await self.send(conn, payloads)
        listening, loop, call = await self.count(conn), asyncio.get_running_loop(), uuid4().hex
        due = self.calls[call] = deque(loop.create_future() for _ in range(listening))
        try:
            await self.send(conn, [*payloads, ROLL_CALL + call])
            if due:
                await asyncio.wait(list(due), timeout=HEARD_SECONDS)
            if due:  # those may answer from memory for a moment: say so
                log.warning("%d of %d event listeners did not answer in time", len(due), listening)
        finally:
            del self.calls[call]

    def arrived(self, payload: str) -> None:
        if payload.startswith(ROLL_CALL):  # all that was sent before it is read: say so
            self.answers.put_nowait(ANSWER + payload[1:])
        elif payload.startswith(ANSWER):
            if due := self.calls.get(payload[1:]):
                due.popleft().set_result(None)
        else:
            self.receive(payload)

    async def count(self, conn: AsyncConnection) -> int:
        """The processes listening, this one included."""
        return 1

    async def send(self, conn: AsyncConnection, payloads: list[str]) -> None:
        for payload in payloads:
            self.arrived(payload)

    async def send_answers(self, say: Callable[[str], Any]) -> None:
        """A listening session's task: the answers to roll calls, one at a time."""
        while True:
            await say(await self.answers.get())

    async def listen(self, heard: Heard) -> None:
        heard(True)
        await self.send_answers(self.send_here)  # in process: what is sent is heard here

    async def send_here(self, payload: str) -> None:
        self.arrived(payload)

    async def start(self, receive: Receive, heard: Heard) -> None:
        self.receive = receive
        self.task = asyncio.create_task(self.listen(heard))

    async def stop(self) -> None:
        while self.task is not None and not self.task.done():
            self.task.cancel()  # again if need be: a redis-py command can swallow one
            await asyncio.wait([self.task], timeout=1)


class Notify(Channel):
    limit = 7900  # PostgreSQL refuses payloads of 8000 bytes and more

    async def send(self, conn: AsyncConnection, payloads: list[str]) -> None:
        try:
            await fetch(conn, NOTIFY, {"channel": CHANNEL, "payloads": payloads})
            if conn.in_transaction():  # behind a pooler reads are transactions too
                await conn.commit()
        except (DBAPIError, PendingRollbackError) as exc:
            # Committed but not told (or lost under `count`): the changes feed fills the gap.
            log.warning("events not sent: %s", type(exc).__name__)

    async def count(self, conn: AsyncConnection) -> int:
        try:
            return int((await conn.execute(LISTENERS, {"name": LISTENER_NAME})).scalar_one())
        except DBAPIError:  # committed all the same: send says why nothing goes out
            return 0

    async def listen(self, heard: Heard) -> None:
        probe, echo = f"{CHANNEL}_{uuid4().hex}", asyncio.Event()

        async def session() -> None:
            conn = await asyncpg.connect(
                listener_dsn(), timeout=5, server_settings={"application_name": LISTENER_NAME}
            )
            lost, one_at_a_time = asyncio.Event(), asyncio.Lock()

            async def run(sql: str, *args: str) -> None:
                async with one_at_a_time:  # a connection runs one statement at a time
                    await conn.execute(sql, *args)

            answering = asyncio.create_task(
                self.send_answers(lambda answer: run("SELECT pg_notify($1, $2)", CHANNEL, answer))
            )
            try:
                conn.add_termination_listener(lambda _: lost.set())
                await conn.add_listener(CHANNEL, lambda *args: self.arrived(args[3]))
                await conn.add_listener(probe, lambda *_: echo.set())
                await keep_proving(lambda: run(f"NOTIFY {probe}"), echo, lost, heard)
            finally:
                answering.cancel()
                conn.terminate()  # never left half-open behind a failed probe
                await asyncio.gather(answering, return_exceptions=True)

        await reconnecting(session, heard)


class Redis(Channel):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, client_name=redis_client_name()
        )
        self.channel = redis_channel()  # several apps may share one Redis

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

    async def count(self, conn: AsyncConnection) -> int:
        try:
            [(_, subscribers)] = await self.client.pubsub_numsub(self.channel)
        except (redis.RedisError, OSError):  # committed all the same: send says so
            return 0
        return int(subscribers)

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
                answering = asyncio.create_task(
                    self.send_answers(lambda answer: self.client.publish(self.channel, answer))
                )
                try:
                    await keep_proving(lambda: self.client.publish(probe, b""), echo, lost, heard)
                finally:
                    reader.cancel()
                    answering.cancel()
                    await asyncio.gather(reader, answering, return_exceptions=True)

        await reconnecting(session, heard)

    async def stop(self) -> None:
        await super().stop()
        await self.client.aclose()


async def keep_proving(
    send_probe: Callable[[], Any], echo: asyncio.Event, lost: asyncio.Event, heard: Heard
) -> None:
    """Send ourselves a message and wait for it, again and again, until one does not come
    back in time (TimeoutError) or the connection says it is gone, even mid-probe."""
    while not lost.is_set():
        echo.clear()
        await send_probe()
        if not await either(echo, lost, seconds=ECHO_SECONDS):
            raise TimeoutError("the probe did not come back")
        if not lost.is_set():
            heard(True)
        await either(lost, seconds=PROBE_SECONDS)  # a closed connection says so at once


async def either(*events: asyncio.Event, seconds: float) -> bool:
    """Whether one of `events` is set in `seconds`; 3.11's wait_for may drop a cancel."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)


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


def listener_dsn() -> str:
    """DATABASE_URL_DIRECT as asyncpg takes it: LISTEN cannot pass a pooler."""
    url = make_url(settings.direct_database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def redis_channel() -> str:
    """EVENTS_URL's db (pub/sub ignores it) and the database's name, as they are."""
    db = redis.connection.parse_url(settings.events_url or "redis://").get("db", 0)
    return f"app-events:{db}:{settings.database_name}"


def redis_client_name() -> str:  # the channel's, as Redis takes it: printable, no spaces
    return "".join(c if "!" <= c <= "~" else "_" for c in redis_channel())


def choose() -> Channel:
    if settings.events_url:
        return Redis(settings.events_url)
    return Channel() if settings.is_sqlite else Notify()
