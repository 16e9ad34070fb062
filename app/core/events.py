"""Events: what a committed change tells the rest of the app, in every process.

A repository publishes an event on its transaction (`publish(conn, event)`); nothing leaves
unless that transaction commits. Subscribers are registered where the app is assembled
(`app/main.py`, from each feature's list), in one of three ways:

- `in_transaction`: awaited inside the publishing transaction, before it commits, on its
  connection (a deleted account leaves its threads in the same transaction);
- `on_commit`: called in the publishing process as the transaction commits, before the
  response goes out (the caller cache forgets a user at once);
- `on`: called in every process as the channel delivers the event, right after the
  commit (sockets are told, other processes' caches forget, mail senders wake).

A channel carries events between processes (app.core.channels): PostgreSQL's NOTIFY by
default, Redis pub/sub when EVENTS_URL says so, in process on SQLite. It sends them after
the commit, before the response goes out; two processes' events may arrive in the other
order than their commits (the messenger puts thread events back in version order).
"""

import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Self

from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.channels import Channel, choose

log = logging.getLogger(__name__)


class Event:
    """Base of every event: a frozen dataclass whose `name` says how it travels."""

    name: ClassVar[str]
    # The publisher answers only once every process has read the event (see
    # Channel.committed): for what another process must know before the next request.
    heard_before_answer: ClassVar[bool] = False

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
    heard_before_answer = True  # a revoked token must not work elsewhere a moment later
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


class Bus:
    def __init__(self) -> None:
        self.handlers: dict[When, dict[type[Event], list[Callable[..., Any]]]] = {
            when: defaultdict(list) for when in ("in_transaction", "on_commit", "on")
        }
        self.kinds: dict[str, type[Event]] = {}
        self.channel: Channel = Channel()
        self.connected = False

    def add(self, subscription: Subscription) -> None:
        self.handlers[subscription.when][subscription.event].append(subscription.handler)
        self.kinds[subscription.event.name] = subscription.event

    def clear(self) -> None:
        for handlers in self.handlers.values():
            handlers.clear()
        self.kinds.clear()

    async def before_commit(self, conn: AsyncConnection, events: list[Event]) -> None:
        """Run the in-transaction handlers, of what they publish too."""
        done = 0
        while done < len(events):
            event = events[done]
            done += 1
            for handler in self.handlers["in_transaction"].get(type(event), ()):
                await handler(conn, event)

    async def committed(self, conn: AsyncConnection, events: list[Event]) -> None:
        """The transaction committed on `conn`: this process's handlers, then the channel."""
        for event in events:
            for handler in self.handlers["on_commit"].get(type(event), ()):
                handler(event)
        wait = self.connected and any(e.heard_before_answer for e in events)
        await self.channel.committed(conn, [self._payload(e) for e in events], wait)

    def deliver(self, event: Event) -> None:
        for handler in self.handlers["on"].get(type(event), ()):
            try:
                handler(event)
            except Exception:  # one subscriber's failure must not starve the others
                log.exception("subscriber of %s failed", event.name)

    def _payload(self, event: Event) -> str:
        payload = json.dumps(event.wire(), separators=(",", ":"))
        limit = self.channel.limit
        if limit and len(payload.encode()) > limit and (small := event.compact()) is not None:
            payload = json.dumps(small.wire(), separators=(",", ":"))
        return payload

    def receive(self, payload: str) -> None:
        data = json.loads(payload)
        if (kind := self.kinds.get(data["type"])) is not None:
            self.deliver(kind.from_wire(data))

    def heard(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.deliver(Listening(connected=connected))

    async def start(self) -> None:
        self.channel = choose()
        await self.channel.start(self.receive, self.heard)

    async def stop(self) -> None:
        await self.channel.stop()
        self.heard(False)


bus = Bus()
