"""Events: what a committed change tells the rest of the app, in every process.

A repository publishes an event on its transaction (`publish(conn, event)`); nothing leaves
unless that transaction commits. Subscribers are registered where the app is assembled
(`app/main.py`, from each feature's list), in one of three ways:

- `in_transaction`: awaited inside the publishing transaction, before it commits, on its
  connection (a deleted account leaves its threads in the same transaction);
- `on_commit`: called in the publishing process as the transaction commits, before the
  response goes out (the caller cache forgets a user at once);
- `on`: called in every process as the transport delivers the event, in commit order
  (sockets are told, other processes' caches forget, mail senders wake).

The transport carries events between processes: PostgreSQL's NOTIFY, sent inside the
transaction and delivered on commit, in commit order, to one LISTEN connection per process;
on SQLite (one process) a hand-over in process after the commit.
"""

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Self
from uuid import uuid4

import asyncpg
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.settings import settings

log = logging.getLogger(__name__)


class Event:
    """Base of every event: a frozen dataclass whose `name` says how it travels."""

    name: ClassVar[str]

    def wire(self) -> dict[str, Any]:
        return {"type": self.name, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Self:
        return cls(**{k: v for k, v in data.items() if k != "type"})

    def compact(self) -> "Event | None":
        """A smaller stand-in when the transport cannot carry this one; None: none."""
        return None


@dataclass(frozen=True, slots=True)
class UserChanged(Event):
    """A user row changed. `revoked`: its tokens stopped working (all of them, or only
    those of login `session_id`)."""

    name = "user.changed"
    user_id: int
    revoked: bool = False
    session_id: int | None = None


@dataclass(frozen=True, slots=True)
class UserDeleted(Event):
    """A user was deleted: what it owned or belonged to goes too, in the same transaction."""

    name = "user.deleted"
    user_id: int


@dataclass(frozen=True, slots=True)
class MailQueued(Event):
    """The outbox has a new row: a job runner may start on it now."""

    name = "mail.queued"


@dataclass(frozen=True, slots=True)
class Listening(Event):
    """This process's transport is connected (every event from now on reaches it) or lost
    (events may have been missed). Delivered only in this process."""

    name = "listening"
    connected: bool


When = Literal["in_transaction", "on_commit", "on"]


@dataclass(frozen=True)
class Subscription:
    event: type[Event]
    handler: Callable[..., Any]
    when: When


def on(event: type[Event], handler: Callable[[Any], None]) -> Subscription:
    """Every process, as the transport delivers the event. `handler` must not block."""
    return Subscription(event, handler, "on")


def on_commit(event: type[Event], handler: Callable[[Any], None]) -> Subscription:
    """This process, as the publishing transaction commits."""
    return Subscription(event, handler, "on_commit")


def in_transaction(
    event: type[Event], handler: Callable[[AsyncConnection, Any], Awaitable[None]]
) -> Subscription:
    """Inside the publishing transaction, before it commits; it may publish more."""
    return Subscription(event, handler, "in_transaction")


def publish(conn: AsyncConnection, event: Event) -> None:
    """Queue an event on the connection's transaction; it goes out only if that commits."""
    conn.info["events"].append(event)


NOTIFY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")
CHANNEL = "app_events"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8000 bytes and more
PROBE_SECONDS = 1.0  # how long a lost listener may go unnoticed, about


class Bus:
    def __init__(self) -> None:
        self.handlers: dict[When, dict[type[Event], list[Callable[..., Any]]]] = {
            when: defaultdict(list) for when in ("in_transaction", "on_commit", "on")
        }
        self.kinds: dict[str, type[Event]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, subscription: Subscription) -> None:
        self.handlers[subscription.when][subscription.event].append(subscription.handler)
        self.kinds[subscription.event.name] = subscription.event

    def clear(self) -> None:
        for handlers in self.handlers.values():
            handlers.clear()
        self.kinds.clear()

    async def before_commit(self, conn: AsyncConnection, events: list[Event]) -> None:
        """Run the in-transaction handlers (of what they publish too), then hand the events
        to PostgreSQL's NOTIFY, inside the transaction."""
        done = 0
        while done < len(events):
            event = events[done]
            done += 1
            for handler in self.handlers["in_transaction"].get(type(event), ()):
                await handler(conn, event)
        if not settings.is_sqlite and events:
            payloads = [self._payload(e) for e in events]
            await conn.execute(NOTIFY, {"channel": CHANNEL, "payloads": payloads})

    def committed(self, events: list[Event]) -> None:
        for event in events:
            for handler in self.handlers["on_commit"].get(type(event), ()):
                handler(event)
        if settings.is_sqlite:  # one process: delivered here, in commit order
            for event in events:
                self.deliver(event)

    def deliver(self, event: Event) -> None:
        for handler in self.handlers["on"].get(type(event), ()):
            try:
                handler(event)
            except Exception:  # one subscriber's failure must not starve the others
                log.exception("subscriber of %s failed", event.name)

    def _payload(self, event: Event) -> str:
        payload = json.dumps(event.wire(), separators=(",", ":"))
        if len(payload.encode()) > NOTIFY_LIMIT and (small := event.compact()) is not None:
            payload = json.dumps(small.wire(), separators=(",", ":"))
        return payload

    def receive(self, payload: str) -> None:
        data = json.loads(payload)
        if (kind := self.kinds.get(data["type"])) is not None:
            self.deliver(kind.from_wire(data))

    async def listen(self) -> None:
        """PostgreSQL: one LISTEN connection per process, re-opened when it drops.
        Subscribers hear `Listening(True)` once nothing more can be missed, and
        `Listening(False)` as soon as something may have been."""
        url = make_url(settings.direct_database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        probe, heard = f"{CHANNEL}_{uuid4().hex}", asyncio.Event()
        connected = warned = False
        while True:
            conn, lost = None, asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    dsn, timeout=5, server_settings={"application_name": "app-events"}
                )
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *args: self.receive(args[3]))
                await conn.add_listener(probe, lambda *_: heard.set())
                while not lost.is_set():
                    # A notification to ourselves, end to end: a dead peer is not always
                    # reported, and through a pooler in transaction mode LISTEN seems to
                    # work but never hears anything.
                    heard.clear()
                    await conn.execute(f"NOTIFY {probe}")
                    await asyncio.wait_for(heard.wait(), PROBE_SECONDS)
                    if not connected:
                        connected = True
                        self.deliver(Listening(connected=True))
                    with suppress(TimeoutError):  # a closed connection says so at once
                        await asyncio.wait_for(lost.wait(), PROBE_SECONDS)
            except Exception as exc:  # whatever broke it, listen again: events depend on it
                if connected or not warned:
                    warned = True
                    log.warning("event listener cannot hear notifications: %r", exc)
            finally:
                if conn is not None:
                    conn.terminate()  # never left half-open behind a failed probe
            if connected:
                connected = False
                self.deliver(Listening(connected=False))
            await asyncio.sleep(1)

    async def start(self) -> None:
        if settings.is_sqlite:
            self.deliver(Listening(connected=True))
        else:
            self.tasks.append(asyncio.create_task(self.listen()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


bus = Bus()
