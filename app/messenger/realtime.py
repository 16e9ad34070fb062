"""Realtime: `/api/ws`, and each process's hub, which hands the thread events the bus
delivers (in commit order) to the sockets of the threads' members."""

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import TypeGuard

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from app.core import metrics
from app.core.accounts.tokens import Caller, callers
from app.core.db import connect
from app.core.events import Listening, UserChanged, bus
from app.core.http import SERVER_OPTIONS
from app.messenger.events import ThreadEvent
from app.messenger.messages import Messages
from app.messenger.ordering import InOrder
from app.messenger.settings import messenger_settings
from app.messenger.threads import Threads

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events a socket may fall behind before it is closed
# How long a new socket waits for this process to hear events again before 1012: a
# listener reconnects a second after it dropped; clients closed with 1012 come back at once.
HEARING_SECONDS = 5.0
CLOSE_BAD_TOKEN, CLOSE_TOO_MANY, CLOSE_RESTART, CLOSE_TOO_SLOW = 4401, 4429, 1012, 1013
CLOSE_TOO_BIG, MAX_CLIENT_MESSAGE = 1009, int(SERVER_OPTIONS["ws_max_size"])  # any start
READY = json.dumps({"type": "ready", "thread_id": None, "data": {}})


class Connection:
    def __init__(self, hub: "Hub", user_id: int, session_id: int, websocket: WebSocket) -> None:
        self.hub, self.user_id, self.session_id = hub, user_id, session_id
        self.websocket = websocket
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        self.threads: set[int] | None = None  # None while its threads are being loaded
        self.backlog: list[tuple[ThreadEvent, str]] = []
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

    def handle(self, event: ThreadEvent, message: str) -> None:
        """Apply one event to this socket: membership changes, then delivery."""
        if self.threads is None:
            self.backlog.append((event, message))
            return
        kind, data = event.kind, event.data
        joined = (kind == "member.added" and data["user_id"] == self.user_id) or (
            kind == "thread.created" and any(m["id"] == self.user_id for m in data["members"])
        )
        if joined:
            self.hub.join(self, event.thread_id)
        if event.thread_id in self.threads and self.user_id not in event.skip:
            self.send(message)
        if kind == "thread.deleted" or (
            kind == "member.removed" and data["user_id"] == self.user_id
        ):
            self.hub.leave(self, event.thread_id)

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
        self.incoming: asyncio.Queue[ThreadEvent] = asyncio.Queue()
        # Events arrive as their senders' commits were told, not always in commit order.
        self.in_order = InOrder(self.incoming.put_nowait, self.too_late, self.missed)
        self.tasks: list[asyncio.Task[None]] = []
        self.waiting: set[asyncio.Future[None]] = set()  # sockets waiting for it

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
        if len(self.users.get(conn.user_id, ())) >= messenger_settings.ws_max_per_user:
            return False
        self.users[conn.user_id].add(conn)
        self.loading.add(conn)
        metrics.WEBSOCKETS.inc()
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
        metrics.WEBSOCKETS.dec()
        self.loading.discard(conn)
        if (mine := self.users.get(conn.user_id)) is not None:
            mine.discard(conn)
            if not mine:
                del self.users[conn.user_id]
        for thread_id in list(conn.threads or ()):
            self.leave(conn, thread_id)

    # What the bus hands over (subscribed in app/messenger/feature.py).

    def receive(self, event: ThreadEvent) -> None:
        self.in_order.add(event)

    def user_changed(self, event: UserChanged) -> None:
        """A revoked user's sockets close, or only those of the login that ended."""
        if event.revoked:
            for conn in list(self.users.get(event.user_id, ())):
                if event.session_id in (None, conn.session_id):
                    conn.close(CLOSE_BAD_TOKEN)

    def too_late(self, event: ThreadEvent) -> None:
        """An event came after later ones of its thread went out."""
        log.warning("event of thread %d came too late to be in order", event.thread_id)
        self.missed(event)

    def missed(self, event: ThreadEvent) -> None:
        """An event this process could not hand on in order: every socket it was for (a
        member it adds too, whose socket is in no thread's set yet) reconnects and catches
        up from the changes feed."""
        for conn in self.targets(event):
            conn.close(CLOSE_RESTART)

    def listening(self, event: Listening) -> None:
        """Events may have been missed: every socket reconnects and catches up. Heard
        again: the sockets waiting for it may be told `ready`."""
        if event.connected:
            for wait in self.waiting:
                if not wait.done():
                    wait.set_result(None)
        else:
            for conn in [conn for conns in self.users.values() for conn in conns]:
                conn.close(CLOSE_RESTART)
            self.in_order.reset()

    async def heard(self) -> bool:
        """Whether this process hears events, waiting up to HEARING_SECONDS for it to."""
        if not bus.connected:  # set before the bus tells `listening`
            wait = asyncio.get_running_loop().create_future()
            self.waiting.add(wait)
            try:
                await asyncio.wait([wait], timeout=HEARING_SECONDS)
            finally:
                self.waiting.discard(wait)
        return bus.connected

    def targets(self, event: ThreadEvent) -> set[Connection]:
        """The sockets of the thread, of the users the event adds or removes, and those
        still loading their threads."""
        targets = self.threads.get(event.thread_id, set()) | self.loading
        if event.kind in ("member.added", "member.removed"):
            targets |= self.users.get(event.data.get("user_id", 0), set())
        elif event.kind == "thread.created":  # read back, when it was too big to travel
            for member in event.data.get("members", ()):
                targets |= self.users.get(member["id"], set())
        return targets

    def dispatch(self, event: ThreadEvent) -> None:
        message = json.dumps(event.socket_message(), separators=(",", ":"))  # once for all
        for conn in self.targets(event):
            conn.handle(event, message)

    async def run(self) -> None:
        """Dispatch incoming events one at a time, so each thread's order is kept."""
        while True:
            event = await self.incoming.get()
            try:
                if event.data.get("ref"):
                    event = await load(event)
                self.dispatch(event)
            except Exception:  # one bad event must not stop the hub, nor leave a silent gap
                log.exception("could not dispatch %s", event.kind)
                self.missed(event)

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.run()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


hub = Hub()


async def load(event: ThreadEvent) -> ThreadEvent:
    """The data of an event too big to travel, read back once per process."""
    async with connect() as conn:
        if event.kind.startswith(("message.", "reaction.")):
            message = await Messages(conn).get(event.data["id"])
            if message is None:  # deleted since: the changes feed has its tombstone
                raise LookupError(f"message {event.data['id']} is gone")
            data = message.model_dump(mode="json")
        else:
            view = await Threads(conn).view(event.thread_id, 0)
            counts = {"unread_count": 0, "unread_mention_count": 0}
            data = view.model_copy(update=counts).model_dump(mode="json")
    return replace(event, data=data)


router = APIRouter(tags=["realtime"])


@router.websocket("/ws")
async def events(websocket: WebSocket, token: str = "") -> None:
    """Events of the caller's threads; see the API description for their shapes."""
    # Accept first: a close code can only travel on an accepted socket.
    await websocket.accept()
    if (claims := callers.claims(token)) is None:  # not ours, expired, or a refresh token
        await websocket.close(CLOSE_BAD_TOKEN)
        return
    # Registered before its user is read: a revocation heard from here on closes it, one
    # committed before is in what is read. Read first, one could pass in between unseen.
    conn = Connection(hub, claims.sub, claims.sid, websocket)
    if not hub.connect(conn):  # a revoked token hears that, not that there is no room
        usable = _usable(await callers.get(token, connect))
        await websocket.close(CLOSE_TOO_MANY if usable else CLOSE_BAD_TOKEN)
        return
    loop = asyncio.get_running_loop()
    expiry = loop.call_later(max(0.0, claims.exp - time.time()), conn.close, CLOSE_BAD_TOKEN)
    tasks: set[asyncio.Task[None]] = set()
    try:  # whatever fails from here on, the socket is unregistered
        caller = await callers.get(token, connect)
        # `ready` promises every later commit: not while events may go unheard. Should the
        # listener drop from here until `ready`, the hub closes this socket with 1012.
        if not _usable(caller):
            conn.close(CLOSE_BAD_TOKEN)
        elif await hub.heard():
            async with connect() as session:
                thread_ids = await Threads(session).ids_of(caller.id)
            hub.ready(conn, thread_ids)
        else:
            conn.close(CLOSE_RESTART)
        tasks = {asyncio.create_task(conn.pump()), asyncio.create_task(_drain(conn))}
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        expiry.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        hub.disconnect(conn)


def _usable(caller: Caller | None) -> TypeGuard[Caller]:
    """A token whose user may still listen: not revoked, not deactivated."""
    return caller is not None and "regular" in caller.granted


async def _drain(conn: Connection) -> None:
    """Clients only listen: what they send is read and ignored, but a message over 4 KiB closes
    the socket, wherever uvicorn was started (`python -m app`'s refuses it unread)."""
    try:
        while (message := await conn.websocket.receive())["type"] != "websocket.disconnect":
            size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
            if size > MAX_CLIENT_MESSAGE:
                conn.close(CLOSE_TOO_BIG)
    except (WebSocketDisconnect, RuntimeError):
        pass
