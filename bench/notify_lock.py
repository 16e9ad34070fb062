"""PostgreSQL's NOTIFY lock (bench/events.py): sampled while the app sends, and PostgreSQL
alone under pgbench, a row written with no event, with NOTIFY after its commit (as the app
sends), and with NOTIFY inside its transaction."""

import argparse
import asyncio
import re
import statistics
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from harness import PG, WRK_CPU, log, table

# PostgreSQL's NOTIFY lock: a notifying transaction takes it as it commits and keeps it
# until the commit is done, WAL flush included if it wrote anything (PreCommit_Notify in
# src/backend/commands/async.c); one for the whole cluster: notifying commits go one at a
# time.
NOTIFY_LOCK = (
    "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks"
    " WHERE locktype = 'object' AND database = 0 AND classid = 'pg_database'::regclass"
    " AND objid = 0"
)
SAMPLE_SECONDS = 0.05
ROW = "INSERT INTO bench_sink (body) VALUES (repeat('x', 300));\n"
EVENT = "SELECT pg_notify('bench_events', repeat('x', 300));\n"  # the size of a send's event
PGBENCH = {
    "INSERT, no event": ROW,
    "INSERT, then NOTIFY in its own transaction (as the app)": ROW + EVENT,
    "INSERT and NOTIFY in one transaction": f"BEGIN;\n{ROW}{EVENT}COMMIT;\n",
}


@contextmanager
def notify_lock(samples: list[tuple[int, int]], db: str = "") -> Iterator[None]:
    """(held, waiting) of the NOTIFY lock every SAMPLE_SECONDS meanwhile, into `samples`;
    with `db`, a connection there LISTENs to pgbench's events too (as an app process would)."""
    stop = threading.Event()

    async def sample() -> None:
        conn = await asyncpg.connect(f"{PG}/{db or 'postgres'}")
        try:
            if db:
                await conn.add_listener("bench_events", lambda *_: None)
            while not stop.is_set():
                held, waiting = await conn.fetchrow(NOTIFY_LOCK)
                samples.append((held, waiting))
                await asyncio.sleep(SAMPLE_SECONDS)
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(sample(),))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def lock_share(samples: list[tuple[int, int]]) -> tuple[float, float]:
    """Share of the samples that found the lock held; transactions waiting, on average."""
    n = max(len(samples), 1)
    return sum(1 for h, _ in samples if h) / n, sum(w for _, w in samples) / n


def pgbench(db: str, script: Path, connections: int, seconds: float) -> tuple[float, float]:
    """(scripts run per second, their mean latency in ms), pgbench pinned like wrk."""
    load = [f"-c{connections}", "-j1", f"-T{max(1, round(seconds))}", "-f", str(script), db]
    cmd = ["taskset", "-c", WRK_CPU, "pgbench", "-h", "127.0.0.1", "-U", "postgres", "-n", *load]
    done = subprocess.run(cmd, capture_output=True, text=True)
    tps = re.search(r"^tps = ([\d.]+)", done.stdout, re.M)
    latency = re.search(r"^latency average = ([\d.]+) ms", done.stdout, re.M)
    if done.returncode or not tps or not latency:
        raise RuntimeError(f"pgbench: {done.stdout}{done.stderr}")
    return float(tps[1]), float(latency[1])


def postgres_alone(a: argparse.Namespace, db: str, workdir: Path) -> dict[str, list[float]]:
    """Each PGBENCH script in turn (the order alternating), a warm-up before its first run;
    medians of sends/s, mean latency, lock held and waiting."""
    asyncio.run(execute(db, "CREATE TABLE bench_sink (id bigserial PRIMARY KEY, body text)"))
    scripts = {name: workdir / f"pgbench-{i}.sql" for i, name in enumerate(PGBENCH)}
    for name, path in scripts.items():
        path.write_text(PGBENCH[name])
    out: dict[str, list[list[float]]] = {name: [] for name in PGBENCH}
    for n in range(a.runs):
        for name in list(PGBENCH)[:: -1 if n % 2 else 1]:
            if n == 0:
                pgbench(db, scripts[name], a.connections, a.warmup)
            samples: list[tuple[int, int]] = []
            with notify_lock(samples, db):
                tps, latency = pgbench(db, scripts[name], a.connections, a.duration)
            held, waiting = lock_share(samples)
            out[name].append([tps, latency, held, waiting])
            log(f"run {n + 1}/{a.runs} {name}: {tps:.0f}/s, {latency:.2f} ms, lock held {held:.0%}")
    return {
        name: [statistics.median(col) for col in zip(*runs, strict=True)]
        for name, runs in out.items()
    }


async def execute(db: str, sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def alone_table(alone: dict[str, list[float]], connections: int, lock_note: str) -> list[str]:
    rows = [
        [name, f"{tps:.0f}", f"{latency:.2f}", f"{held:.0%}", f"{waiting:.2f}"]
        for name, (tps, latency, held, waiting) in alone.items()
    ]
    title = (
        f"PostgreSQL alone: pgbench -c{connections} -j1 pinned to cpu {WRK_CPU}, "
        "a 300-byte row into a table of its own and a 300-byte event, one connection "
        "LISTENing; sends/s and mean latency of the script, medians over the runs:"
    )
    head = "script | sends/s | latency ms | lock held | waiting"
    return table(title, head, rows, lock_note, "")
