"""Realtime events: routes publish them inside their transaction, and each process's hub
fans them out to its WebSockets after the commit: as NOTIFY on PostgreSQL (delivered on
commit, in commit order, to ONE listening connection per process), in process on SQLite."""

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import asyncpg
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app import db, metrics
from app.mail import sender
from app.models.message import MessageOut
from app.models.thread import ThreadOut
from app.repositories.messages import Messages
from app.repositories.threads import Threads
from app.settings import settings
from app.tokens import callers

log = logging.getLogger(__name__)

CHANNEL = "app_events"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8000 bytes and more
QUEUE_SIZE = 256  # events a socket may fall behind before it is closed
CLOSE_BAD_TOKEN, CLOSE_TOO_MANY, CLOSE_RESTART, CLOSE_TOO_SLOW = 4401, 4429, 1012, 1013
READY = json.dumps({"type": "ready", "thread_id": None, "data": {}})
NOTIFY = text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p")
Data = BaseModel | dict[str, Any]


def publish(
    conn: AsyncConnection, type: str, thread_id: int, data: Data, version: int | None = None
) -> None:
    """Queue an event on the request's transaction; it is sent only if that commits.
    `version`: the thread's version after the change (every event that changes it)."""
    if isinstance(data, ThreadOut):  # counts differ per reader: they come from REST
        data = data.model_copy(update={"unread_count": 0})
    elif isinstance(data, MessageOut):  # so does each reaction's `me`
        reactions = [r.model_copy(update={"me": False}) for r in data.reactions]
        data = data.model_copy(update={"reactions": reactions})
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    event = {"type": type, "thread_id": thread_id, "data": payload}
    db.publish(conn, event if version is None else {**event, "version": version})


async def _notify(conn: AsyncConnection, events: list[db.Event]) -> None:
    """Before commit, on PostgreSQL: NOTIFY inside the transaction, one round trip."""
    payloads = []
    for e in events:
        payload = json.dumps(e, separators=(",", ":"))
        if len(payload.encode()) > NOTIFY_LIMIT:  # too big: send a reference, load it later
            ref = {k: e[k] for k in ("type", "thread_id", "version") if k in e}
            payload = json.dumps({**ref, "id": e["data"]["id"], "ref": True})
        payloads.append(payload)
    await conn.execute(NOTIFY, {"channel": CHANNEL, "payloads": payloads})


def _deliver(events: list[db.Event]) -> None:
    """After commit, on SQLite: hand the events to this process's hub."""
    for e in events:
        hub.incoming.put_nowait(e)


if settings.is_sqlite:
    db.after_commit.append(_deliver)
else:
    db.before_commit.append(_notify)


class Connection:
    def __init__(self, hub: "Hub", user_id: int, websocket: WebSocket) -> None:
        self.hub, self.user_id, self.websocket = hub, user_id, websocket
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        self.threads: set[int] | None = None  # None while its threads are being loaded
        self.backlog: list[tuple[dict[str, Any], str]] = []
        self.close_code: int | None = None

    def send(self, message: str) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:  # a slow reader must not hold up anyone else
            self.close(CLOSE_TOO_SLOW)

    def close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def handle(self, event: dict[str, Any], message: str) -> None:
        """Apply one event to this socket: membership changes, then delivery."""
        if self.threads is None:
            self.backlog.append((event, message))
            return
        kind = event["type"]
        if kind == "user.changed":
            if event["revoked"] and event["user_id"] == self.user_id:
                self.close(CLOSE_BAD_TOKEN)
            return
        thread_id: int = event["thread_id"]
        joined = (kind == "member.added" and event["data"]["user_id"] == self.user_id) or (
            kind == "thread.created"
            and any(m["id"] == self.user_id for m in event["data"]["members"])
        )
        if joined:
            self.hub.join(self, thread_id)
        if thread_id in self.threads:
            self.send(message)
        if kind == "thread.deleted" or (
            kind == "member.removed" and event["data"]["user_id"] == self.user_id
        ):
            self.hub.leave(self, thread_id)

    async def pump(self) -> None:
        while (message := await self.queue.get()) is not None:
            await self.websocket.send_text(message)
            metrics.EVENTS.inc()
        await self.websocket.close(self.close_code or 1000)


class Hub:
    """This process's sockets, indexed by user and by thread."""

    def __init__(self) -> None:
        self.users: dict[int, set[Connection]] = defaultdict(set)
        self.threads: dict[int, set[Connection]] = defaultdict(set)
        self.loading: set[Connection] = set()
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []

    def join(self, conn: Connection, thread_id: int) -> None:
        assert conn.threads is not None
        conn.threads.add(thread_id)
        self.threads[thread_id].add(conn)

    def leave(self, conn: Connection, thread_id: int) -> None:
        assert conn.threads is not None
        conn.threads.discard(thread_id)
        if (conns := self.threads.get(thread_id)) is not None:
            conns.discard(conn)
            if not conns:
                del self.threads[thread_id]

    def connect(self, conn: Connection) -> bool:
        """Register a socket (False: WS_MAX_PER_USER here already); events wait for it."""
        if len(self.users.get(conn.user_id, ())) >= settings.ws_max_per_user:
            return False
        self.users[conn.user_id].add(conn)
        self.loading.add(conn)
        return True

    def ready(self, conn: Connection, thread_ids: Iterable[int]) -> None:
        """Its threads are loaded: events that came in meanwhile are applied in order."""
        conn.threads = set()
        conn.send(READY)  # everything committed from here on reaches the socket
        for thread_id in thread_ids:
            self.join(conn, thread_id)
        self.loading.discard(conn)
        for queued, message in conn.backlog:
            conn.handle(queued, message)
        conn.backlog.clear()

    def disconnect(self, conn: Connection) -> None:
        self.loading.discard(conn)
        if (mine := self.users.get(conn.user_id)) is not None:
            mine.discard(conn)
            if not mine:
                del self.users[conn.user_id]
        for thread_id in list(conn.threads or ()):
            self.leave(conn, thread_id)

    def dispatch(self, event: dict[str, Any]) -> None:
        if event["type"] == "mail.queued":  # for this process's mail sender, not sockets
            return sender.wake.set()
        if event["type"] == "user.changed":
            message = ""
            targets = set(self.users.get(event["user_id"], ()))
        else:
            message = json.dumps(event, separators=(",", ":"))  # serialised once for all
            targets = set(self.threads.get(event["thread_id"], ()))
            if event["type"] in ("member.added", "member.removed"):
                targets |= self.users.get(event["data"]["user_id"], set())
            elif event["type"] == "thread.created":
                for member in event["data"]["members"]:
                    targets |= self.users.get(member["id"], set())
        for conn in targets | self.loading:
            conn.handle(event, message)

    async def run(self) -> None:
        """Dispatch incoming events one at a time, so each thread's order is kept."""
        while True:
            event = await self.incoming.get()
            try:
                if event.pop("ref", False):
                    event["data"] = await load(event)
                self.dispatch(event)
            except Exception:  # one bad event must not stop the hub
                log.exception("could not dispatch %s", event.get("type"))

    def receive(self, payload: str) -> None:
        if (event := json.loads(payload))["type"] == "user.changed":  # at once, not in turn
            callers.forget(event["user_id"])
        self.incoming.put_nowait(event)

    async def listen(self) -> None:
        """PostgreSQL: one LISTEN connection per process, re-opened when it drops."""
        url = make_url(settings.direct_database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    dsn, server_settings={"application_name": "app-events"}
                )
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, lambda *args: self.receive(args[3]))
                callers.switch(on=True)  # from here on, no change to a user goes unheard
                while not lost.is_set() and not conn.is_closed():
                    try:  # a dead peer is not always reported: probe now and then
                        await asyncio.wait_for(lost.wait(), 5)
                    except TimeoutError:
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)
            except Exception as exc:  # whatever broke it, listen again: events depend on it
                log.warning("event listener lost its connection: %r", exc)
            # Events may have been missed: sockets reconnect and catch up, mail is looked at,
            # callers are looked up again.
            callers.switch(on=False)
            sender.wake.set()
            for conns in list(self.users.values()):
                for c in list(conns):
                    c.close(CLOSE_RESTART)
            await asyncio.sleep(1)

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.run()))
        if not settings.is_sqlite:
            self.tasks.append(asyncio.create_task(self.listen()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


hub = Hub()


async def load(event: dict[str, Any]) -> dict[str, Any]:
    """The data of an event too big for NOTIFY, read back once per process."""
    async with db.connect() as conn:
        if event["type"].startswith(("message.", "reaction.")):
            message = await Messages(conn).get(event.pop("id"))
            assert message is not None
            return message.model_dump(mode="json")
        event.pop("id")
        view = await Threads(conn).view(event["thread_id"], 0)
        return view.model_copy(update={"unread_count": 0}).model_dump(mode="json")


async def serve(websocket: WebSocket, user_id: int, expires_at: float) -> None:
    """Stream a user's events to an accepted socket until either side closes it."""
    conn = Connection(hub, user_id, websocket)
    if not hub.connect(conn):
        await websocket.close(CLOSE_TOO_MANY)
        return
    loop = asyncio.get_running_loop()
    expiry = loop.call_later(max(0.0, expires_at - time.time()), conn.close, CLOSE_BAD_TOKEN)
    tasks: set[asyncio.Task[None]] = set()
    try:  # whatever fails from here on, the socket is unregistered
        async with db.connect() as session:
            thread_ids = await Threads(session).ids_of(user_id)
        hub.ready(conn, thread_ids)
        tasks = {asyncio.create_task(conn.pump()), asyncio.create_task(_drain(websocket))}
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        expiry.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.disconnect(conn)


async def _drain(websocket: WebSocket) -> None:
    """Clients only listen: read what they send (and the close) and ignore it."""
    try:
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
    except (WebSocketDisconnect, RuntimeError):
        pass
