"""Realtime fan-out benchmark: N `python -m app` processes on one PostgreSQL, many WebSockets.

    .venv/bin/python bench/realtime.py [--sockets 1000] [--rate 100] [--duration 30]
                                       [--processes 2] [--database-url URL]

It creates a scratch database (bench_rt_<random>, dropped at the end), migrates it, starts the
servers, signs up users over HTTP (with a LOWERED argon2 cost, see ARGON2 below, so that the
setup takes seconds), groups the socket users into threads, opens one WebSocket per socket
user (socket i on process i % N), and then POSTs messages at a fixed open-loop rate, cycling
through processes, threads and posters. Every socket records when each `message.created`
event arrives; the latency of a delivery is from just before its POST was issued to its
receipt. The client runs on one asyncio loop (uvloop when installed) and does no per-message
work besides taking the time: frames are parsed after the run.
"""

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-password-123"
# Server-side password hashing cost for this run: the app's default (19 MiB, 2 passes)
# would make 1000 signups + logins take minutes on 2 cores. It only affects the setup.
ARGON2 = {"ARGON2_MEMORY_KIB": "1024", "ARGON2_TIME_COST": "1"}
T = TypeVar("T")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sockets", type=int, default=1000, help="WebSocket users (default 1000)")
    p.add_argument("--rate", type=float, default=100, help="messages per second (default 100)")
    p.add_argument("--duration", type=float, default=30, help="seconds of sending (default 30)")
    p.add_argument("--processes", type=int, default=2, help="server processes (default 2)")
    p.add_argument(
        "--database-url",
        help="use this PostgreSQL database (migrated, not dropped) instead of a fresh "
        "bench_rt_<random> one on 127.0.0.1",
    )
    p.add_argument("--members", type=int, default=20, help="socket users per thread (default 20)")
    p.add_argument("--posters", type=int, default=4, help="users who post, in every thread")
    p.add_argument("--drain", type=float, default=5, help="max seconds to wait for stragglers")
    p.add_argument("--concurrency", type=int, default=32, help="parallel setup requests")
    p.add_argument(
        "--compression",
        choices=["deflate", "none"],
        default="deflate",
        help="permessage-deflate on the sockets (default deflate, as browsers do)",
    )
    p.add_argument(
        "--app-dir",
        type=Path,
        default=ROOT,
        help="run `python -m app` and alembic from this checkout (default: this repo), "
        "e.g. a patched copy to compare against",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra setting for the servers, e.g. DB_POOL_SIZE=30 (repeatable)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with server logs")
    return p.parse_args()


# --- helpers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[rank]


async def bounded(n: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    sem = asyncio.Semaphore(n)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            return await job()

    return await asyncio.gather(*(one(j) for j in jobs))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """user+system CPU of one process; with children, that of its exited children."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLK_TCK


def postgres_cpu(db_name: str) -> tuple[float, float] | None:
    """CPU of the live backends serving db_name, and of all of PostgreSQL, including the
    backends that exited (the postmaster's children). None when it does not run here."""
    mine = total = 0.0
    procs: dict[int, int] = {}  # pid -> parent pid
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() != "postgres":
                    continue
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = (d / "stat").read_text()
            except OSError:
                continue
            procs[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            cpu = cpu_seconds(int(d.name))
            total += cpu
            if f" {db_name} " in cmdline:
                mine += cpu
    if not procs:
        return None
    for pid, parent in procs.items():
        if parent not in procs:  # the postmaster
            total += cpu_seconds(pid, children=True)
    return mine, total


async def db_sessions(url: str, db_name: str) -> int | None:
    """How many sessions were opened on db_name so far."""
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", db_name
        )
        return None if value is None else int(value)
    finally:
        await conn.close()


def all_processes() -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds) of every visible process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                out[int(d.name)] = (
                    cmd or (d / "comm").read_text().strip(),
                    cpu_seconds(int(d.name)),
                )
            except OSError:
                pass
    return out


def rss_mb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def softirq_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    return (int(fields[5]) + int(fields[6])) / CLK_TCK  # irq + softirq


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / CLK_TCK, total / CLK_TCK


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# --- database and servers ------------------------------------------------------------------


async def pg_info(url: str) -> tuple[str, str]:
    """PostgreSQL's version, and how many of its connections are taken."""
    conn = await asyncpg.connect(url)
    try:
        version = str(await conn.fetchval("SELECT version()"))
        used = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid IS NOT NULL")
        limit = await conn.fetchval("SHOW max_connections")
        return version, f"{used} of max_connections={limit} in use"
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Server:
    index: int
    port: int
    proc: subprocess.Popen[bytes]
    base: str = ""

    def __post_init__(self) -> None:
        self.base = f"127.0.0.1:{self.port}"


def server_env(database_url: str, port: int, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIRST_SUPERUSER")}
    env.update(
        DATABASE_URL=database_url,
        HOST="127.0.0.1",
        PORT=str(port),
        ENVIRONMENT="development",
        SECRET_KEY=key,  # one for all servers: a token works on each
        ACCESS_TOKEN_EXPIRE_MINUTES="600",
        **ARGON2,
    )
    return env


def start_servers(
    n: int, database_url: str, logdir: Path, app_dir: Path = ROOT, extra: Iterable[str] = ()
) -> list[Server]:
    key = secrets.token_urlsafe(48)
    servers = []
    for i in range(n):
        port = free_port()
        env = server_env(database_url, port, key)
        for kv in extra:
            key, _, value = kv.partition("=")
            env[key] = value
        log = open(logdir / f"server{i}.log", "wb")  # noqa: SIM115 (closed by the child)
        proc = subprocess.Popen(
            [sys.executable, "-m", "app"],
            cwd=app_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on the benchmark is handled by us, not them
        )
        log.close()
        servers.append(Server(i, port, proc))
    return servers


async def wait_ready(servers: list[Server], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=2) as http:
        for s in servers:
            while True:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"server {s.index} exited with {s.proc.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    r = await http.get(f"http://{s.base}/api/health/ready")
                    if r.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {s.index} not ready after {limit} s")
                await asyncio.sleep(0.1)


def stop_servers(servers: list[Server]) -> list[str]:
    notes = []
    for s in servers:
        if s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    for s in servers:
        try:
            s.proc.wait(15)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
            notes.append(f"server {s.index} killed after SIGTERM timed out")
    return notes


# --- users and threads ---------------------------------------------------------------------


@dataclass
class User:
    index: int
    email: str
    id: int = 0
    token: str = ""


async def make_users(
    clients: list[httpx.AsyncClient], tag: str, count: int, concurrency: int, kind: str
) -> list[User]:
    users = [User(i, f"{kind}{i}.{tag}@example.com") for i in range(count)]

    async def setup(u: User) -> User:
        http = clients[u.index % len(clients)]
        r = await http.post(
            "/api/auth/signup",
            json={"email": u.email, "password": PASSWORD, "full_name": f"{kind} {u.index}"},
        )
        if r.status_code != 201:
            raise RuntimeError(f"signup {u.email}: {r.status_code} {r.text}")
        u.id = int(r.json()["id"])
        # Only failed logins count against the per-address limit; these all succeed.
        r = await http.post("/api/auth/token", data={"username": u.email, "password": PASSWORD})
        if r.status_code != 200:
            raise RuntimeError(f"login {u.email}: {r.status_code} {r.text}")
        u.token = r.json()["access_token"]
        return u

    return await bounded(concurrency, (partial(setup, u) for u in users))


async def make_threads(
    clients: list[httpx.AsyncClient],
    posters: list[User],
    groups: list[list[User]],
    concurrency: int,
) -> list[int]:
    async def create(t: int, members: list[User]) -> int:
        owner = posters[t % len(posters)]
        ids = [u.id for u in members] + [p.id for p in posters if p is not owner]
        r = await clients[t % len(clients)].post(
            "/api/threads",
            json={"title": f"bench {t}", "member_ids": ids},
            headers={"Authorization": f"Bearer {owner.token}"},
        )
        if r.status_code != 201:
            raise RuntimeError(f"thread {t}: {r.status_code} {r.text}")
        return int(r.json()["id"])

    return await bounded(concurrency, (partial(create, t, g) for t, g in enumerate(groups)))


# --- sockets -------------------------------------------------------------------------------


@dataclass
class Sockets:
    received: list[tuple[int, float, str | bytes]] = field(default_factory=list)
    conns: list[ClientConnection | None] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    closes: list[tuple[int, int | None, str]] = field(default_factory=list)
    closing: bool = False

    async def open(
        self, servers: list[Server], users: list[User], concurrency: int, compression: str
    ) -> None:
        self.conns = [None] * len(users)

        async def one(i: int, u: User) -> None:
            base = servers[i % len(servers)].base
            ws = await connect(
                f"ws://{base}/api/ws?token={u.token}",
                compression=None if compression == "none" else "deflate",
                ping_interval=None,  # the server pings; the client only answers
                max_queue=None,
                open_timeout=60,
            )
            self.conns[i] = ws
            self.readers.append(asyncio.create_task(self.read(i, ws)))

        await bounded(concurrency, (partial(one, i, u) for i, u in enumerate(users)))

    async def read(self, i: int, ws: ClientConnection) -> None:
        append, now = self.received.append, time.perf_counter
        try:
            async for frame in ws:
                append((i, now(), frame))  # parsed after the run
        except ConnectionClosed:
            pass
        if not self.closing:
            self.closes.append((i, ws.close_code, ws.close_reason or ""))

    async def close(self) -> None:
        self.closing = True
        live = [ws for ws in self.conns if ws is not None]

        async def shut(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

        await bounded(100, (partial(shut, ws) for ws in live))
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


# --- the run -------------------------------------------------------------------------------


class LoopLag:
    """How late this (client) event loop wakes up: shows whether the client keeps up."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(time.perf_counter() - t - self.interval)

    def start(self) -> None:
        self.lags.clear()
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> list[float]:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        return sorted(self.lags)


def parse_deliveries(
    received: list[tuple[int, float, str | bytes]], prefix: str
) -> tuple[list[tuple[int, int, float]], Counter[str]]:
    """(socket, message number, receipt time) of each of our message.created events."""
    out, other = [], Counter[str]()
    for sock, t, frame in received:
        event = json.loads(frame)
        kind = event.get("type")
        body = event.get("data", {}).get("body", "") if kind == "message.created" else ""
        if body.startswith(prefix):
            out.append((sock, int(body[len(prefix) :]), t))
        else:
            other[str(kind)] += 1
    return out, other


async def run(args: argparse.Namespace) -> int:
    n_proc, n_sock = args.processes, args.sockets
    n_threads = max(1, (n_sock + args.members - 1) // args.members)
    tag = secrets.token_hex(4)
    admin_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    own_db = args.database_url is None
    db_name = f"bench_rt_{tag}"
    database_url = args.database_url or f"postgresql://postgres@127.0.0.1:5432/{db_name}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_rt_"))

    version, connections = await pg_info(database_url if not own_db else admin_url)
    before = machine_cpu()
    await asyncio.sleep(1)
    after = machine_cpu()
    idle_busy = (after[0] - before[0]) / (after[1] - before[1]) * 100
    loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()} (client loop: {loop_kind}), {version}; "
        f"before the start: machine {idle_busy:.0f}% busy (all cores), PostgreSQL "
        f"{connections}",
        flush=True,
    )
    print(
        f"server settings for this run: ARGON2_MEMORY_KIB={ARGON2['ARGON2_MEMORY_KIB']} "
        f"ARGON2_TIME_COST={ARGON2['ARGON2_TIME_COST']} (lowered for the user setup only), "
        f"ACCESS_TOKEN_EXPIRE_MINUTES=600{''.join(' ' + kv for kv in args.server_env)}; "
        f"logs in {tmp}",
        flush=True,
    )

    servers: list[Server] = []
    sockets = Sockets()
    clients: list[httpx.AsyncClient] = []
    cleanup_notes: list[str] = []
    try:
        if own_db:
            await create_database(admin_url, db_name)
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            "upgrade",
            "head",
            cwd=args.app_dir,
            env={**os.environ, "DATABASE_URL": database_url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode:
            print(out.decode(), file=sys.stderr)
            raise RuntimeError("alembic upgrade head failed")

        servers = start_servers(n_proc, database_url, tmp, args.app_dir, args.server_env)
        await wait_ready(servers)
        print(
            f"setup: db {db_name if own_db else database_url} migrated, {n_proc} servers "
            f"ready in {time.perf_counter() - t0:.1f} s (pid:port "
            f"{', '.join(f'{s.proc.pid}:{s.port}' for s in servers)})",
            flush=True,
        )

        # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close
        # them under a request in flight (an httpx ReadError that is no server failure).
        limits = httpx.Limits(
            max_connections=200, max_keepalive_connections=200, keepalive_expiry=2
        )
        clients = [
            httpx.AsyncClient(base_url=f"http://{s.base}", limits=limits, timeout=60)
            for s in servers
        ]
        t0 = time.perf_counter()
        posters = await make_users(clients, tag, args.posters, args.concurrency, "poster")
        users = await make_users(clients, tag, n_sock, args.concurrency, "user")
        groups = [users[t * args.members : (t + 1) * args.members] for t in range(n_threads)]
        thread_ids = await make_threads(clients, posters, groups, args.concurrency)
        members_of = [[u.index for u in g] for g in groups]  # socket indexes per thread
        print(
            f"setup: {len(posters)} posters + {n_sock} socket users signed up and logged in, "
            f"{n_threads} threads of {args.members} socket users (+{len(posters)} posters) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        t0 = time.perf_counter()
        await sockets.open(servers, users, args.concurrency, args.compression)
        print(
            f"setup: {n_sock} sockets open (socket i -> process i % {n_proc}, "
            f"compression {args.compression}) in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        async def post(k: int, prefix: str, thread: int, sent: dict[int, float]) -> Any:
            poster = posters[k % len(posters)]
            http = clients[k % n_proc]
            body = {"body": f"{prefix}{k}"}
            headers = {"Authorization": f"Bearer {poster.token}"}
            start = time.perf_counter()
            sent[k] = start
            try:
                r = await http.post(
                    f"/api/threads/{thread_ids[thread]}/messages", json=body, headers=headers
                )
            except httpx.HTTPError as exc:
                return (k, start, time.perf_counter(), repr(exc))
            return (k, start, time.perf_counter(), r.status_code)

        # Warm-up: one message per thread, until every member socket has it. This proves
        # that every socket's memberships are loaded and warms the connection pools.
        t0 = time.perf_counter()
        warm_sent: dict[int, float] = {}
        warm = await bounded(  # a few at a time: no need for the pools' overflow here
            4 * n_proc, (partial(post, t, "warm ", t, warm_sent) for t in range(n_threads))
        )
        bad = [w for w in warm if w[3] != 201]
        if bad:
            raise RuntimeError(f"warm-up POSTs failed: {bad[:3]}")
        want, got = sum(len(m) for m in members_of), 0
        while time.perf_counter() - t0 < 60:
            got = sum(1 for *_, f in sockets.received if b"warm " in _as_bytes(f))
            if got >= want:
                break
            await asyncio.sleep(0.05)
        print(
            f"warm-up: {n_threads} messages, {got}/{want} deliveries in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        await asyncio.sleep(1)
        sockets.received.clear()

        # The measured run: open loop, message k at start + k / rate.
        total = int(args.rate * args.duration)
        prefix = f"rt{tag} "
        sent: dict[int, float] = {}
        tasks: list[asyncio.Task[Any]] = []
        # No collector pauses in the client while it takes the times: the run's garbage is
        # small and acyclic, and the setup's long-lived objects are frozen out of reach.
        gc.collect()
        gc.freeze()
        gc.disable()
        pids = [s.proc.pid for s in servers]
        pg_db = database_url.rsplit("/", 1)[-1].split("?")[0]
        sessions0 = await db_sessions(database_url, pg_db)
        cpu0 = ([cpu_seconds(p) for p in pids], postgres_cpu(pg_db), time.process_time())
        machine0, procs0, irq0 = machine_cpu(), all_processes(), softirq_seconds()
        lag = LoopLag()
        lag.start()
        print(f"run: {total} messages at {args.rate:g}/s ...", flush=True)
        start = time.perf_counter()
        for k in range(total):
            delay = start + k / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(k, prefix, k % n_threads, sent)))
        send_end = time.perf_counter()
        results = await asyncio.gather(*tasks)
        ok = {k for k, _, _, status in results if status == 201}
        expected = sum(len(members_of[k % n_threads]) for k in ok)
        drain_start = time.perf_counter()
        while time.perf_counter() - drain_start < args.drain:
            if len(sockets.received) >= expected:
                break
            await asyncio.sleep(0.05)
        wall = time.perf_counter() - start
        in_time = len(sockets.received)  # what came after the drain window counts as lost
        drained = time.perf_counter() - drain_start
        lags = await lag.stop()
        cpu1 = ([cpu_seconds(p) for p in pids], postgres_cpu(pg_db), time.process_time())
        machine1, procs1, irq1 = machine_cpu(), all_processes(), softirq_seconds()
        gc.enable()
        await asyncio.sleep(1)  # statistics reach pg_stat_database within a second
        sessions1 = await db_sessions(database_url, pg_db)

        # --- analysis ---
        deliveries, other = parse_deliveries(sockets.received[:in_time], prefix)
        seen: set[tuple[int, int]] = set()
        latencies: list[float] = []
        by_route: dict[str, list[float]] = defaultdict(list)
        by_window: dict[int, list[float]] = defaultdict(list)
        dupes = unexpected = 0
        answered = {k: end for k, _, end, _ in results}
        after_response: list[float] = []  # receipt minus the POST's response
        first: dict[int, float] = {}
        last: dict[int, float] = {}
        for sock, k, t in deliveries:
            if (sock, k) in seen:
                dupes += 1
                continue
            seen.add((sock, k))
            if k not in ok or sock not in members_of[k % n_threads]:
                unexpected += 1
                continue
            latency = t - sent[k]
            latencies.append(latency)
            by_route["same" if sock % n_proc == k % n_proc else "cross"].append(latency)
            by_window[int((sent[k] - start) // 5)].append(latency)
            after_response.append(t - answered[k])
            first[k], last[k] = min(first.get(k, t), t), max(last.get(k, t), t)
        latencies.sort()
        received = len(latencies)
        post_lat = sorted(end - st for _, st, end, status in results if status == 201)
        failures = Counter(str(status) for *_, status in results if status != 201)
        rate = (total - 1) / (send_end - start) if total > 1 else float(total)
        cpu_servers = [b - a for a, b in zip(cpu0[0], cpu1[0], strict=True)]
        lost = expected - received

        print()
        print(f"command:    {' '.join(sys.argv)}")
        print(f"sockets:    {n_sock} ({n_threads} threads x {args.members} sockets)")
        print(f"processes:  {n_proc}")
        print(f"rate:       {rate:.1f} msg/s achieved (target {args.rate:g}), {wall:.1f} s wall")
        print(f"messages:   {total} sent, {len(ok)} accepted (201)", end="")
        print(f", failed: {dict(failures)}" if failures else "")
        print(f"deliveries: {expected} expected, {received} received, lost {lost}", end="")
        print(f" (duplicates {dupes}, unexpected {unexpected})" if dupes or unexpected else "")
        print(
            f"latency:    p50 {fmt_ms(pct(latencies, 50))} ms, p99 {fmt_ms(pct(latencies, 99))}"
            f" ms, p99.9 {fmt_ms(pct(latencies, 99.9))} ms, max {fmt_ms(latencies[-1])} ms"
            if latencies
            else "latency:    no deliveries"
        )
        for route in ("same", "cross"):
            v = sorted(by_route[route])
            if v and n_proc > 1:
                print(
                    f"  {route:5} process: {len(v)} deliveries, p50 {fmt_ms(pct(v, 50))} ms, "
                    f"p99 {fmt_ms(pct(v, 99))} ms, max {fmt_ms(v[-1])} ms"
                )
        windows = " ".join(fmt_ms(pct(sorted(by_window[w]), 99)) for w in sorted(by_window))
        print(f"  p99 per 5 s of sending (ms): {windows}")
        after_response.sort()
        spread = sorted(last[k] - first[k] for k in first)
        print(
            f"  receipt minus POST response: p50 {fmt_ms(pct(after_response, 50))} ms, p99 "
            f"{fmt_ms(pct(after_response, 99))} ms; first-to-last receiver of a message: p50 "
            f"{fmt_ms(pct(spread, 50))} ms, p99 {fmt_ms(pct(spread, 99))} ms"
        )
        print(
            f"POST:       p50 {fmt_ms(pct(post_lat, 50))} ms, p99 {fmt_ms(pct(post_lat, 99))} ms,"
            f" max {fmt_ms(post_lat[-1] if post_lat else float('nan'))} ms"
        )
        closes = Counter((code, reason) for _, code, reason in sockets.closes)
        print(
            "ws closes:  "
            + (", ".join(f"{c} {r!r} x{n}" for (c, r), n in closes.items()) if closes else "none")
        )
        if other:
            print(f"other events: {dict(other)}")
        client_cpu = cpu1[2] - cpu0[2]
        parts = [f"servers {' + '.join(f'{c / wall * 100:.0f}%' for c in cpu_servers)}"]
        accounted = sum(cpu_servers) + client_cpu
        if cpu0[1] is not None and cpu1[1] is not None:
            pg_mine, pg_all = cpu1[1][0] - cpu0[1][0], cpu1[1][1] - cpu0[1][1]
            parts.append(
                f"postgres {pg_all / wall * 100:.0f}% (all of it, exited backends included; "
                f"this db's live backends {pg_mine / wall * 100:.0f}%)"
            )
            accounted += pg_all
        parts.append(f"client {client_cpu / wall * 100:.0f}%")
        busy, total_cpu = machine1[0] - machine0[0], machine1[1] - machine0[1]
        cores = total_cpu / wall
        print(
            "CPU (% of one core, over the run): " + ", ".join(parts) + f"; machine busy "
            f"{busy / wall * 100:.0f}% of {cores * 100:.0f}%, everything else "
            f"{max(0.0, busy - accounted) / wall * 100:.0f}%"
        )
        if sessions0 is not None and sessions1 is not None:
            print(
                f"db:         {sessions1 - sessions0 - 1} PostgreSQL sessions opened by the "
                f"servers during the run (pools that keep their connections open none)"
            )
        ours = {os.getpid(), *pids}
        others = sorted(
            (
                (cpu - procs0.get(pid, ("", 0.0))[1], cmd)
                for pid, (cmd, cpu) in procs1.items()
                if pid not in ours and not cmd.startswith("postgres")
            ),
            reverse=True,
        )
        print(
            f"other CPU:  irq+softirq {(irq1 - irq0) / wall * 100:.0f}%; top processes: "
            + "; ".join(f"{c / wall * 100:.0f}% {cmd[:60]}" for c, cmd in others[:3] if c > 0)
        )
        rss = " + ".join(f"{rss_mb(s.proc.pid)} MB" for s in servers)
        print(f"server RSS: {rss} (with the sockets open)")
        died = [
            f"server {s.index} (pid {s.proc.pid}) exited with {s.proc.returncode}"
            for s in servers
            if s.proc.poll() is not None
        ]
        print("servers:    " + ("; ".join(died) + " DURING THE RUN" if died else "all alive"))
        print(
            f"client loop lag: p99 {fmt_ms(pct(lags, 99))} ms, max "
            f"{fmt_ms(lags[-1] if lags else float('nan'))} ms; drain waited {drained:.1f} s"
        )
        return 0 if lost == 0 and received and not died else 1
    finally:
        await sockets.close()
        for c in clients:
            await c.aclose()
        cleanup_notes += stop_servers(servers)
        if own_db:
            try:
                await drop_database(admin_url, db_name)
            except Exception as exc:
                cleanup_notes.append(f"could not drop {db_name}: {exc!r}")
        for s in servers:
            text = (tmp / f"server{s.index}.log").read_text(errors="replace")
            if "Traceback" in text or "ERROR" in text:
                args.keep_logs = True
                cleanup_notes.append(f"server {s.index} logged errors")
        if args.keep_logs:
            cleanup_notes.append(f"server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        for note in cleanup_notes:
            print(f"cleanup: {note}")


def _as_bytes(frame: str | bytes) -> bytes:
    return frame if isinstance(frame, bytes) else frame.encode()


def main() -> None:
    args = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, args.sockets * 2 + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        import uvloop
    except ImportError:
        sys.exit(asyncio.run(run(args)))
    sys.exit(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
