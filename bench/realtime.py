"""Realtime fan-out benchmark: `python -m app` processes on one PostgreSQL, many WebSockets.

    .venv/bin/python bench/realtime.py                 # 1,000 sockets, 2 processes, 100 msg/s, 30 s
    .venv/bin/python bench/realtime.py --duration 5    # a short run

A delivery's latency runs from just before its POST is issued to the receipt of its
`message.created` on a member's socket; frames are parsed after the run, so the client does
no per-message work but taking the time. The setup and the figures: bench/README.md.
"""

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Iterable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TypeVar

import httpx
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_ticks, database, machine, memory_mib

from tests.helpers import User, new_thread, send, sign_up, ws_url
from tests.servers import start

# The app's Argon2 cost (19 MiB, 2 passes) would make 1,000 signups and logins take minutes
# on 2 cores; it only matters for the setup, not for what is measured.
ARGON2 = {"ARGON2_MEMORY_KIB": "1024", "ARGON2_TIME_COST": "1"}
MEMBERS, POSTERS, SETUP_CONCURRENCY, DRAIN_SECONDS = 20, 4, 32, 5.0
T = TypeVar("T")
HZ = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values, in ms."""
    if not values:
        return math.nan
    return 1000 * values[max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))]


def spread(values: list[float]) -> str:
    values = sorted(values)
    return f"p50 {pct(values, 50):.1f} ms, p99 {pct(values, 99):.1f} ms"


async def bounded(n: int, jobs: Iterable[Awaitable[T]]) -> list[T]:
    sem = asyncio.Semaphore(n)

    async def one(job: Awaitable[T]) -> T:
        async with sem:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


class Sockets:
    """One WebSocket per user; every frame recorded with its time of receipt."""

    def __init__(self) -> None:
        self.received: list[tuple[int, float, str | bytes]] = []
        self.conns: list[ClientConnection] = []
        self.readers: list[asyncio.Task[None]] = []
        self.closes: Counter[str] = Counter()
        self.want, self.enough = 0, asyncio.Event()

    async def wait(self, frames: int, seconds: float) -> None:
        """Until `frames` frames have come in all, or for `seconds`."""
        self.want = frames
        self.enough.clear()
        if len(self.received) < frames:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.enough.wait(), seconds)

    async def open(self, hosts: list[str], users: list[User]) -> None:
        urls = [
            ws_url(hosts[i % len(hosts)], u["token"]["access_token"]) for i, u in enumerate(users)
        ]
        # The server pings; the client only answers.
        opening = (
            connect(url, ping_interval=None, max_queue=None, open_timeout=60) for url in urls
        )
        self.conns = await bounded(SETUP_CONCURRENCY, opening)
        self.readers = [asyncio.create_task(self.read(i, ws)) for i, ws in enumerate(self.conns)]

    async def read(self, i: int, ws: ClientConnection) -> None:
        append, now = self.received.append, time.perf_counter
        with suppress(ConnectionClosed):
            async for frame in ws:
                append((i, now(), frame))
                if len(self.received) >= self.want:
                    self.enough.set()
        self.closes[f"{ws.close_code} {ws.close_reason!r}"] += 1

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)

        async def shut(ws: ClientConnection) -> None:
            with suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)

        await bounded(100, (shut(ws) for ws in self.conns))


async def run(a: argparse.Namespace, url: str, tag: str, tmp: Path) -> int:
    n_threads = max(1, -(-a.sockets // MEMBERS))
    env = {**os.environ, "DATABASE_URL": url, "SECRET_KEY": secrets.token_urlsafe(48)}
    env.update(ENVIRONMENT="development", ACCESS_TOKEN_EXPIRE_MINUTES="600", **ARGON2)
    env.update(MESSAGES_PER_MINUTE="1000000")  # a few posters send far past a user's rate
    env.update(SIGNUPS_PER_ADDRESS_PER_HOUR="1000000")  # all 1,004 sign up from 127.0.0.1
    sockets, clients = Sockets(), []
    try:
        with ExitStack() as stack:
            servers = [
                stack.enter_context(
                    start(tmp, env, log=tmp / f"server{i}.log", ready="/api/health/ready")
                )
                for i in range(a.processes)
            ]
            # Idle connections are dropped before uvicorn's 5 s keep-alive timeout would close
            # them under a request in flight (an httpx ReadError that is no server failure).
            limits = httpx.Limits(max_connections=200, keepalive_expiry=2)
            clients = [
                httpx.AsyncClient(base_url=s.base, limits=limits, timeout=60) for s in servers
            ]
            http = [clients[i % a.processes] for i in range(max(a.sockets, n_threads))]
            t0 = time.perf_counter()
            posters = [
                await sign_up(http[0], f"poster{i}@example.com", "P") for i in range(POSTERS)
            ]
            signups = (sign_up(http[i], f"u{i}@example.com", f"U{i}") for i in range(a.sockets))
            users = await bounded(SETUP_CONCURRENCY, signups)
            groups = [users[t * MEMBERS : (t + 1) * MEMBERS] for t in range(n_threads)]
            owners = [posters[t % POSTERS] for t in range(n_threads)]
            made = (new_thread(http[t], owners[t], *g, *posters) for t, g in enumerate(groups))
            thread_ids = [t["id"] for t in await bounded(SETUP_CONCURRENCY, made)]
            members = [{u["id"] for u in g} for g in groups]
            await sockets.open([s.base.removeprefix("http://") for s in servers], users)
            print(
                f"setup: {a.processes} servers, {a.sockets} sockets in {n_threads} threads of "
                f"{MEMBERS} (+{POSTERS} posters) in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )

            # Warm-up, a message per thread until every member has it: every socket's
            # memberships are loaded, and the pools are warm.
            for t, tid in enumerate(thread_ids):
                await send(http[t], owners[t], tid, "warm")
            await sockets.wait(sum(len(g) for g in groups), 60)
            await asyncio.sleep(1)
            sockets.received.clear()

            async def post(k: int) -> tuple[int, float, float, int | str]:
                poster, client = posters[k % POSTERS], clients[k % a.processes]
                url = f"/api/threads/{thread_ids[k % n_threads]}/messages"
                t = sent[k] = time.perf_counter()
                try:
                    body = {"body": f"rt{tag} {k}"}
                    r = await client.post(url, json=body, headers=poster.headers)
                except httpx.HTTPError as exc:
                    return k, t, time.perf_counter(), repr(exc)
                return k, t, time.perf_counter(), r.status_code

            # Open loop: message k goes at start + k / rate, whatever the answers.
            total, sent = int(a.rate * a.duration), dict[int, float]()
            tasks: list[asyncio.Task[tuple[int, float, float, int | str]]] = []
            gc.collect()  # no collector pauses in the client while it takes the times
            gc.freeze()
            gc.disable()
            cpu0 = [cpu_ticks()[s.proc.pid][1] / HZ for s in servers], time.process_time()
            print(f"run: {total} messages at {a.rate:g}/s ...", flush=True)
            begin = time.perf_counter()
            for k in range(total):
                await asyncio.sleep(begin + k / a.rate - time.perf_counter())
                tasks.append(asyncio.create_task(post(k)))
            rate = (total - 1) / (time.perf_counter() - begin) if total > 1 else float(total)
            results = await asyncio.gather(*tasks)
            ok = {k for k, *_, status in results if status == 201}
            expected = sum(len(members[k % n_threads]) for k in ok)
            await sockets.wait(expected, DRAIN_SECONDS)
            in_time = sockets.received[:]  # what comes later counts as lost
            wall = time.perf_counter() - begin
            cpu1 = [cpu_ticks()[s.proc.pid][1] / HZ for s in servers], time.process_time()
            gc.enable()
            rss = " + ".join(f"{memory_mib(s.proc.pid, 'VmRSS'):.0f} MiB" for s in servers)
            died = [i for i, s in enumerate(servers) if s.proc.poll() is not None]
    finally:
        await sockets.close()
        for c in clients:
            await c.aclose()

    latencies: list[float] = []
    by_route: dict[str, list[float]] = {"same": [], "cross": []}
    seen: set[tuple[int, int]] = set()
    other = Counter[str]()
    for sock, at, frame in in_time:
        event = json.loads(frame)
        body = str(event.get("data", {}).get("body", ""))
        if event.get("type") != "message.created" or not body.startswith(f"rt{tag} "):
            other[str(event.get("type"))] += 1
            continue
        k = int(body.split()[1])
        if (sock, k) in seen or k not in ok or users[sock]["id"] not in members[k % n_threads]:
            other["duplicate or unexpected"] += 1
            continue
        seen.add((sock, k))
        latencies.append(at - sent[k])
        by_route["same" if sock % a.processes == k % a.processes else "cross"].append(at - sent[k])
    latencies.sort()
    lost = expected - len(latencies)
    posts = sorted(end - st for _, st, end, status in results if status == 201)
    failures = Counter(str(status) for *_, status in results if status != 201)
    server_cpu = " + ".join(f"{(b - c) / wall:.0%}" for c, b in zip(cpu0[0], cpu1[0], strict=True))
    print(f"\ncommand:    {' '.join(sys.argv)}")
    print(f"sockets:    {a.sockets} ({n_threads} threads x {MEMBERS}), {a.processes} processes")
    events = env.get("EVENTS_URL")  # app.core.channels: Redis when set, else NOTIFY
    print(f"events:     {f'Redis pub/sub ({events})' if events else 'PostgreSQL NOTIFY'}")
    print(f"rate:       {rate:.1f} msg/s achieved (target {a.rate:g}), {wall:.1f} s wall")
    print(f"messages:   {total} sent, {len(ok)} accepted, failed: {dict(failures) or 'none'}")
    print(f"deliveries: {expected} expected, {len(latencies)} received, lost {lost}")
    print(
        f"latency:    {spread(latencies)}, p99.9 {pct(latencies, 99.9):.1f} ms, "
        f"max {pct(latencies, 100):.1f} ms"
    )
    for route, values in by_route.items():
        if values and a.processes > 1:
            print(f"  {route:5} process: {len(values)} deliveries, {spread(values)}")
    print(f"POST:       {spread(posts)}, max {pct(posts, 100):.1f} ms")
    print(f"ws closes:  {dict(sockets.closes) or 'none'}; other frames: {dict(other) or 'none'}")
    client_cpu = (cpu1[1] - cpu0[1]) / wall
    print(f"CPU:        servers {server_cpu} of a core, client {client_cpu:.0%}")
    print(f"server RSS: {rss} (with the sockets open)")
    print("servers:    " + (f"{died} EXITED DURING THE RUN" if died else "all alive"))
    return int(bool(lost or not latencies or died))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sockets", type=int, default=1000, help="WebSocket users (default 1000)")
    p.add_argument("--rate", type=float, default=100, help="messages per second (default 100)")
    p.add_argument("--duration", type=float, default=30, help="seconds of sending (default 30)")
    p.add_argument("--processes", type=int, default=2, help="server processes (default 2)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, a.sockets * 2 + 1024)), hard))
    print(f"machine: {machine()}", flush=True)
    tag, tmp = secrets.token_hex(4), Path(tempfile.mkdtemp(prefix="bench_rt_"))
    failed = 1
    try:
        with database(f"bench_rt_{tag}") as url:  # a scratch database, dropped at the end
            failed = uvloop.run(run(a, url, tag, tmp))
    finally:
        logs = "".join(p.read_text(errors="replace") for p in tmp.glob("*.log"))
        if failed or "Traceback" in logs:
            print(f"server logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(failed)


if __name__ == "__main__":
    main()
