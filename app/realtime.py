"""Realtime events: routers publish them inside their transaction; each process has one
hub that fans them out to its WebSockets after the commit.

On PostgreSQL the events travel as NOTIFY, which is delivered only on commit and in commit
order, to every process (each holds ONE listening connection). On SQLite, one process is
all there is, so the hub gets them straight after the commit.
"""

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import asyncpg
from fastapi import APIRouter, HTTPException, WebSocket, WebSocketDisconnect
from pydantic import BaseModel
from sqlalchemy import event, false, inspect, make_url, text
from sqlalchemy.orm import Session
from sqlmodel import col, select

from app.db import SessionMaker
from app.models.message import Message, MessageOut
from app.models.thread import Membership, Thread, ThreadOut
from app.models.user import User
from app.security import decode_token, unauthorized, user_for_token
from app.settings import settings

log = logging.getLogger(__name__)

CHANNEL = "app_events"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8000 bytes and more
QUEUE_SIZE = 256  # events a socket may fall behind before it is closed
CLOSE_BAD_TOKEN, CLOSE_RESTART, CLOSE_TOO_SLOW = 4401, 1012, 1013


def publish(session: Any, type: str, thread_id: int, data: BaseModel | dict[str, Any]) -> None:
    """Queue an event on the request's transaction; it is sent only if that commits."""
    if isinstance(data, ThreadOut):  # counts differ per reader: they come from REST
        data = data.model_copy(update={"unread_count": 0})
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    session.info.setdefault("events", []).append(
        {"type": type, "thread_id": thread_id, "data": payload}
    )


@event.listens_for(Session, "before_flush")
def _revocations(session: Session, *_: Any) -> None:
    """Sockets of a user whose tokens stop working are closed: logout, password change,
    deactivation and deletion all show in the user row, so watch the row."""
    for obj in session.dirty:
        if isinstance(obj, User):
            state = inspect(obj)
            if any(
                state.attrs[a].history.has_changes()
                for a in ("token_version", "deleted", "is_active")
            ):
                session.info.setdefault("events", []).append(
                    {"type": "user.revoked", "user_id": obj.id}
                )


async def send_pending(session: Any) -> None:
    """Before commit, on PostgreSQL: NOTIFY inside the transaction."""
    events = session.info.get("events")
    if not events or settings.is_sqlite:
        return
    payloads = []
    for e in events:
        payload = json.dumps(e, separators=(",", ":"))
        if len(payload.encode()) > NOTIFY_LIMIT:  # too big: send a reference, load it later
            ref = {"type": e["type"], "thread_id": e["thread_id"], "id": e["data"]["id"]}
            payload = json.dumps({**ref, "ref": True})
        payloads.append(payload)
    await (await session.connection()).execute(
        text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
        {"channel": CHANNEL, "payloads": payloads},
    )


def after_commit(session: Any) -> None:
    """After commit, on SQLite: hand the events to this process's hub."""
    events = session.info.pop("events", None)
    if events and settings.is_sqlite:
        for e in events:
            hub.incoming.put_nowait(e)


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
        if kind == "user.revoked":
            if event["user_id"] == self.user_id:
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

    def connect(self, conn: Connection) -> None:
        self.users[conn.user_id].add(conn)
        self.loading.add(conn)

    def ready(self, conn: Connection, thread_ids: Iterable[int]) -> None:
        """Its threads are loaded: events that came in meanwhile are applied in order."""
        conn.threads = set()
        for thread_id in thread_ids:
            self.join(conn, thread_id)
        self.loading.discard(conn)
        for queued, message in conn.backlog:
            conn.handle(queued, message)
        conn.backlog.clear()

    def disconnect(self, conn: Connection) -> None:
        self.loading.discard(conn)
        self.users[conn.user_id].discard(conn)
        if not self.users[conn.user_id]:
            del self.users[conn.user_id]
        for thread_id in list(conn.threads or ()):
            self.leave(conn, thread_id)

    def dispatch(self, event: dict[str, Any]) -> None:
        if event["type"] == "user.revoked":
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

    async def listen(self) -> None:
        """PostgreSQL: one LISTEN connection per process, re-opened when it drops."""
        url = make_url(settings.async_database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    dsn, server_settings={"application_name": "app-events"}
                )
                conn.add_termination_listener(lambda _, lost=lost: lost.set())
                await conn.add_listener(
                    CHANNEL, lambda *args: self.incoming.put_nowait(json.loads(args[3]))
                )
                while not lost.is_set() and not conn.is_closed():
                    try:  # a dead peer is not always reported: probe now and then
                        await asyncio.wait_for(lost.wait(), 5)
                    except TimeoutError:
                        await asyncio.wait_for(conn.execute("SELECT 1"), 5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("event listener lost its connection: %s", exc)
            # Events may have been missed: tell every socket to reconnect and catch up.
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
    from app.routers.threads import thread_views  # the view needs the threads router's query

    async with SessionMaker() as session:
        if event["type"].startswith("message."):
            message = await session.get(Message, event.pop("id"))
            return MessageOut.model_validate(message).model_dump(mode="json")
        event.pop("id")
        thread = await session.get(Thread, event["thread_id"])
        assert thread is not None
        [view] = await thread_views(session, [(thread, 0)])
        return view.model_dump(mode="json")


router = APIRouter(tags=["realtime"])


@router.websocket("/ws")
async def events(websocket: WebSocket, token: str = "") -> None:
    """Events of the caller's threads; see the API description for their shapes."""
    # Accept first: a close code can only travel on an accepted socket.
    await websocket.accept()
    try:
        claims = decode_token(token, "access")
        if "regular" not in claims.scopes:
            raise unauthorized()
        async with SessionMaker() as session:
            user = await user_for_token(session, claims)
            conn = Connection(hub, user.id, websocket)
            hub.connect(conn)  # from here on, events are kept until its threads are known
            stmt = (
                select(Membership.thread_id)
                .join(Thread, col(Thread.id) == Membership.thread_id)
                .where(
                    Membership.user_id == user.id,
                    Membership.deleted == false(),
                    Thread.deleted == false(),
                )
            )
            thread_ids = (await session.exec(stmt)).all()
    except HTTPException:
        await websocket.close(CLOSE_BAD_TOKEN)
        return
    hub.ready(conn, thread_ids)
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, claims.exp - time.time()), conn.close, CLOSE_BAD_TOKEN
    )

    async def read_until_closed() -> None:
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # clients only listen; anything they send is ignored
        except WebSocketDisconnect:
            pass

    tasks = {asyncio.create_task(conn.pump()), asyncio.create_task(read_until_closed())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        expiry.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.disconnect(conn)
