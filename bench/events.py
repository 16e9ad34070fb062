"""Sends under load with events over PostgreSQL NOTIFY or over Redis pub/sub (EVENTS_URL).

    flock /tmp/bench.lock .venv/bin/python bench/events.py           # ~15 min
    flock /tmp/bench.lock .venv/bin/python bench/events.py --quick   # small data, ~3 min
    flock /tmp/bench.lock .venv/bin/python bench/events.py --parts postgres   # ~1 min

`app`: bench/run.py's `post` (2,000 thread/member pairs) and `post_hot` (all to one thread)
requests, through 1 and 2 `python -m app` processes, pinned as `--layouts` says. For each
layout the servers of both transports run at once and take turns under wrk; c=32 in all:
with 2 processes, one wrk per server with half the connections, their rates added up.
`postgres`: PostgreSQL alone (pgbench, c=32), a row written with no event, with NOTIFY
after its commit (as the app sends), and with NOTIFY inside its transaction. Both sample
PostgreSQL's NOTIFY lock meanwhile. The last results and what they mean: bench/README.md,
"Events: NOTIFY or Redis"."""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BENCH_COMMS,
    OUT,
    PG,
    ROOT,
    WRK_CPU,
    Run,
    app_env,
    cells,
    clean_up_on_kill,
    cpu_ticks,
    database,
    ensure_tools,
    line,
    log,
    machine,
    median,
    memory_mib,
    others,
    parse,
    password_hash,
    serving,
    settle,
    table,
    wrk,
)
from notify_lock import SAMPLE_SECONDS, alone_table, lock_share, notify_lock, postgres_alone
from scenarios import FULL, QUICK, request_files
from seed import seed

from tests.servers import Server

TRANSPORTS = ("notify", "redis")
SCENARIOS = {"post": "post (spread)", "post_hot": "post_hot (1 thread)"}
# processes@cpus: cpu 0 alone gives 2 processes the core budget of 1; 0-1 lets them (and
# PostgreSQL, Redis, wrk) use both cores.
LAYOUTS = "1@0,2@0,1@0-1,2@0-1"
BENCH_COMMS.add("redis-server")  # its cpu is the transport's cost, not another's load


@dataclass
class Sends:
    run: Run
    held: float  # share of the samples that found the NOTIFY lock held
    waiting: float  # transactions waiting for it, on average


def layout_name(layout: tuple[int, str]) -> str:
    processes, cpus = layout
    many = "es" if processes > 1 else ""
    return f"{processes} process{many}, cpu{'s' if '-' in cpus else ''} {cpus}"


def transport_env(db: str, transport: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in app_env(db).items() if k != "EVENTS_URL"}
    return {**env, "EVENTS_URL": redis_url} if transport == "redis" else env


def shifted(file: Path, n: int) -> list[Path]:
    """`file` for each of `n` wrk, the i-th rotated by i x 7919 lines (as bench/requests.lua
    spreads its threads), so two wrk do not send the same requests in step."""
    lines = file.read_text().splitlines(keepends=True)
    paths = [file]
    for i in range(1, n):
        k = i * 7919 % len(lines)
        paths.append(file.with_name(f"{file.stem}-{i}{file.suffix}"))
        paths[-1].write_text("".join(lines[k:] + lines[:k]))
    return paths


def measure(group: list[Server], files: list[Path], connections: int, seconds: float) -> Sends:
    """One wrk per server at once, the connections split between them: rates and errors
    added up, p50 the wrk's averaged by requests, p99 and max the worst of them; the NOTIFY
    lock sampled meanwhile."""
    before, t0, share = cpu_ticks(), time.monotonic(), connections // len(group)
    samples: list[tuple[int, int]] = []
    for server in group:
        settle(server)
    with notify_lock(samples):
        wrks = [
            subprocess.Popen(wrk(s, f, share, seconds), stdout=subprocess.PIPE, text=True)
            for s, f in zip(group, files, strict=True)
        ]
        outs = [w.communicate()[0] for w in wrks]
    if any(w.returncode for w in wrks) or any(s.proc.poll() is not None for s in group):
        tails = "\n".join(s.log_tail() for s in group)
        raise RuntimeError(f"wrk: {outs}\nservers:\n{tails}")
    runs = [parse(out) for out in outs]
    n = sum(r.requests for r in runs)
    run = Run(
        rps=sum(r.rps for r in runs),
        p50=sum(r.p50 * r.requests for r in runs) / max(n, 1),
        p99=max(r.p99 for r in runs),
        max=max(r.max for r in runs),
        errors=sum(r.errors for r in runs),
        requests=n,
        peak_mib=max(memory_mib(s.proc.pid) for s in group),
        others=others(before, time.monotonic() - t0),
    )
    return Sends(run, *lock_share(samples))


def medians(sends: list[Sends]) -> Sends:
    held, waiting = (statistics.median(getattr(s, k) for s in sends) for k in ("held", "waiting"))
    return Sends(median([s.run for s in sends]), held, waiting)


async def listening(db: str) -> int:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
        return int(await conn.fetchval(f"{sql} AND application_name = 'app-events'", db))
    finally:
        await conn.close()


def expect_transports(db: str, client: Any, processes: int) -> None:
    """Each transport's servers listen where they should (LISTEN connections on the
    database, subscribers of its Redis channel, app.core.channels), or the run stops."""
    want = {"notify": processes, "redis": processes}
    deadline = time.monotonic() + 20
    while True:
        [(_, subscribers)] = client.pubsub_numsub(f"app_events:{db}")
        seen = {"notify": asyncio.run(listening(db)), "redis": int(subscribers)}
        if seen == want:
            return
        if time.monotonic() > deadline:
            sys.exit(f"listeners by transport: {seen}, expected {want}")
        time.sleep(0.5)


def report(res: dict[str, Any]) -> str:
    out = [f"Machine: {res['machine']}", "", f"Command: `{res['command']}`", ""]
    lock_note = (
        f"lock held: share of pg_locks samples (every {SAMPLE_SECONDS * 1000:.0f} ms) that found "
        "PostgreSQL's NOTIFY lock held; waiting: transactions queued for it, on average "
        "(medians over the runs)."
    )
    if results := res.get("app"):
        rows = []
        order = list(SCENARIOS)
        for (name, where), by in sorted(results.items(), key=lambda kv: order.index(kv[0][0])):
            n, r = by["notify"].run, by["redis"].run
            fields = ("rps", "p50", "p99", "errors")
            lock = [f"{by['notify'].held:.0%}", f"{by['notify'].waiting:.2f}"]
            busiest = f"{max(n.others, r.others):.2f}"
            ratio = f"{r.rps / n.rps:.2f}x" if n.rps else "—"
            ours = [*cells(n, *fields), *lock, *cells(r, *fields), ratio, busiest]
            rows.append([SCENARIOS[name], where, *ours])
        head = "scenario | processes | NOTIFY req/s | p50 ms | p99 ms | errors | lock held"
        head += " | waiting | Redis req/s | p50 ms | p99 ms | errors | Redis ÷ NOTIFY | others"
        note = (
            "req/s: medians over the runs (2 processes: the two wrk's added up); p50/p99: "
            "medians over the runs (2 processes: p50 the two wrk's averaged by requests, p99 "
            f"the worse); errors: all runs added up; {lock_note} others: cores used meanwhile "
            "by processes that are not the bench's (redis-server counts as the bench's)."
        )
        out += [f"Setup: {res['setup']}", "", *table("", head, rows, note, "")]
    if alone := res.get("postgres"):
        out += alone_table(alone, res["connections"], lock_note)
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 run, 2 s per run")
    p.add_argument("--parts", default="app,postgres", help="of: app,postgres")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="of: post,post_hot")
    p.add_argument("--layouts", default=LAYOUTS, help=f"processes@cpus (default {LAYOUTS})")
    p.add_argument("--duration", type=float, help="seconds per run (default 10, --quick 2)")
    p.add_argument("--runs", type=int, help="runs per cell, medians (default 3, --quick 1)")
    p.add_argument("-c", "--connections", type=int, default=32, help="in all (default 32)")
    default_redis = os.environ.get("EVENTS_URL") or "redis://127.0.0.1:6379/0"
    p.add_argument("--redis", default=default_redis, help=f"EVENTS_URL (default {default_redis})")
    a = p.parse_args()
    a.parts = a.parts.split(",")
    a.scenarios = [s for s in SCENARIOS if s in a.scenarios.split(",")]
    a.layouts = [(int(n), cpus) for n, cpus in (x.split("@") for x in a.layouts.split(","))]
    if any(a.connections % n for n, _ in a.layouts):
        p.error("--connections must split evenly between the processes")
    a.duration = a.duration or (2.0 if a.quick else 10.0)
    a.runs = a.runs or (1 if a.quick else 3)
    a.warmup = 1.0 if a.quick else 3.0
    a.data = (QUICK if a.quick else FULL)["data"]
    return a


def app_sends(a: argparse.Namespace, url: str, workdir: Path) -> dict[Any, dict[str, Sends]]:
    """The `app` part: (scenario, layout name) -> transport -> medians."""
    client: Any = redis.Redis.from_url(a.redis, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        sys.exit(f"Redis at {a.redis} does not answer ({exc!r}): redis-server --daemonize yes")
    users, threads, messages = a.data
    db = url.rsplit("/", 1)[1]
    log(f"{db}: seed")
    hashed = password_hash(ROOT)
    rows = asyncio.run(seed(url, users=users, threads=threads, messages=messages, hashed=hashed))
    files = request_files(rows, db, workdir)
    del rows
    results: dict[Any, dict[str, Sends]] = {}
    for layout in a.layouts:
        (processes, cpus), where = layout, layout_name(layout)
        with ExitStack() as stack:
            groups = {
                t: [
                    stack.enter_context(
                        serving("app", db, ROOT, workdir, cpus=cpus, label=f"-{t}{i}",
                                env=transport_env(db, t, a.redis))
                    )
                    for i in range(processes)
                ]
                for t in TRANSPORTS
            }  # fmt: skip
            expect_transports(db, client, processes)
            for name in a.scenarios:
                parts = shifted(files[name], processes)
                runs: dict[str, list[Sends]] = {t: [] for t in TRANSPORTS}
                for n in range(a.runs):
                    for t in list(TRANSPORTS)[:: -1 if n % 2 else 1]:
                        if n == 0:
                            measure(groups[t], parts, a.connections, a.warmup)
                        sends = measure(groups[t], parts, a.connections, a.duration)
                        runs[t].append(sends)
                        log(f"run {n + 1}/{a.runs} {name:8} {where} {t:6} {line(sends.run)}")
                        log(f"  lock held {sends.held:.0%}, waiting {sends.waiting:.2f}")
                results[(name, where)] = {t: medians(v) for t, v in runs.items()}
    return results


def main() -> None:
    clean_up_on_kill()
    a = parse_args()
    ensure_tools()
    users, threads, messages = a.data
    res: dict[str, Any] = {"machine": machine(), "connections": a.connections}
    res["command"] = " ".join(["bench/events.py", *sys.argv[1:]])
    res["setup"] = (
        f"c={a.connections} in all: 1 process, wrk -t1 -c{a.connections}; 2 processes, 2 wrk "
        f"-t1 -c{a.connections // 2} at once, one per server. wrk pinned to cpu {WRK_CPU}, "
        "servers with taskset as the processes column says; PostgreSQL and Redis are not "
        "pinned. Each layout starts its servers of both transports at once (the idle ones "
        f"send one probe a second); they take turns, {a.duration:g} s per run, median of "
        f"{a.runs} run(s), the first of each after a {a.warmup:g} s warm-up. Redis: "
        f"{a.redis}. Data: {users:,} users, {threads:,} threads, {messages:,} messages."
    )
    log(res["machine"] + (f"\n{res['setup']}" if "app" in a.parts else ""))
    with (
        tempfile.TemporaryDirectory(prefix="bench-", ignore_cleanup_errors=True) as tmp,
        database(f"bench_{os.getpid()}_events") as url,
    ):
        if "app" in a.parts:
            res["app"] = app_sends(a, url, Path(tmp))
        if "postgres" in a.parts:
            res["postgres"] = postgres_alone(a, url.rsplit("/", 1)[1], Path(tmp))
    text = report(res)
    print(f"\n{text}")
    OUT.mkdir(exist_ok=True)
    (OUT / "events.md").write_text(text + "\n")
    log(f"results in {OUT / 'events.md'}")


if __name__ == "__main__":
    main()
