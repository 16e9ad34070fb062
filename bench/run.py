"""Load harness: the app on PostgreSQL against a raw-asyncpg ceiling, driven by wrk.

    .venv/bin/python bench/run.py            # the full run (~17 min, 3 of them the 1M soak)
    .venv/bin/python bench/run.py --quick    # smoke test on small data (~2 min)
    .venv/bin/python bench/run.py --tree /tmp/before --scenarios post,post_hot --checks none

What it does, the options and the last results: bench/README.md.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
if (
    __name__ == "__main__"
    and VENV_PY.exists()
    and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve()
):
    os.execv(VENV_PY, [str(VENV_PY), __file__, *sys.argv[1:]])  # asyncpg, jose live there
sys.path[:0] = [str(ROOT), str(BENCH)]

import asyncpg  # noqa: E402
from jose import jwt  # noqa: E402
from seed import BIG_THREAD_ID, RARE_WORD, Rows, seed  # noqa: E402
from spy import recording  # noqa: E402

from tests.helpers import PASSWORD, Server, start  # noqa: E402

PY = str(VENV_PY if VENV_PY.exists() else sys.executable)
PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "x" * 40
SERVER_CPU, WRK_CPU = "0", "1"
STALL_MS = 5000  # at 256 connections, a slower request is a stall
STATEMENT_RUNS = 100  # timed runs of each statement the app sends, one after another
OUT = BENCH / "out"

# The hot thread's target: twice the app's rate before the send path's rework (HOT_BEFORE
# req/s: a0e1b65, a full run, median of 3, on the 2-core Intel Xeon VM of bench/README.md),
# and ahead of the official FastAPI template's plain insert (521 req/s).
HOT_BEFORE = 304.2
HOT_TARGET = max(2 * HOT_BEFORE, 521.0)
# name: (label, target): at most 1, ours ÷ ceiling at least that; above 1, ours at least that
# many req/s (the ceiling runs beside it for comparison); None: the app only, no target.
SCENARIOS: dict[str, tuple[str, float | None]] = {
    "users_me": ("GET /api/users/me", 0.70),
    "threads": ("GET /api/threads", 0.55),
    "newest": ("GET /api/threads/{id}/messages (newest page)", 0.55),
    "deep": ("GET /api/threads/{id}/messages?before= (deep)", 0.55),
    "post": ("POST /api/threads/{id}/messages (spread: 2,000 thread/member pairs)", 0.55),
    "post_hot": ("POST /api/threads/{id}/messages (hot: all to 1 thread, 50 senders)", HOT_TARGET),
    "token": ("POST /api/auth/token (argon2)", None),
    # Full-text search as a member of one thread, and of the most threads anyone is in.
    "search_common_few": ("GET /api/messages/search?q=<common word>, 1 thread", None),
    "search_common_many": ("GET /api/messages/search?q=<common word>, most threads", None),
    "search_rare_few": ("GET /api/messages/search?q=<rare word>, 1 thread", None),
    "search_rare_many": ("GET /api/messages/search?q=<rare word>, most threads", None),
}
CHECKS = ("c256", "scale", "login", "memory")
# Data sets: (users, threads, messages) of the main one, messages of the scale check's small one.
FULL = {"data": (10_000, 1_000, 1_000_000), "small": 10_000, "memory": (100_000, 1_000_000)}
QUICK = {"data": (1_000, 100, 50_000), "small": 5_000, "memory": (3_000, 15_000)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def output(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> str:
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")), "?",
    )  # fmt: skip
    gib = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    pg = output("psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show server_version")
    wrk = output("wrk", "--version").split("[")[0].replace("wrk ", "").strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {gib:.0f} GiB RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg.split()[0]}, wrk {wrk}"
    )


def ensure_tools() -> None:
    if not shutil.which("wrk") and os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install -y wrk")
        subprocess.run("apt-get update -qq; apt-get install -y -qq wrk", shell=True, check=False)
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y {package} (or brew install {tool})")


def app_env(db: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIRST_SUPERUSER", "HOST"))}
    return {
        **env,
        "DATABASE_URL": f"{PG}/{db}",
        "SECRET_KEY": SECRET,
        "ACCESS_TOKEN_EXPIRE_MINUTES": str(60 * 24 * 30),
        # The bench logs in with the right password only; keep the limiter out of the way.
        "LOGIN_FAILURES_PER_ADDRESS": "1000000",
        "LOGIN_FAILURES_PER_EMAIL": "1000000",
        # A few users send all the bench's messages: far past any real user's rate.
        "MESSAGES_PER_MINUTE": "1000000",
    }


def python(*args: str, cwd: Path, env: dict[str, str], failure: str) -> str:
    """The stdout of the app's python running `args`; exits with `failure` if it fails."""
    done = subprocess.run([PY, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{failure}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def database(name: str, cwd: Path = ROOT) -> Iterator[str]:
    """A new database at `alembic upgrade head` (of the code in `cwd`), dropped on exit;
    yields its URL. Call it outside an event loop."""
    url = f"{PG}/{name}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        env = {**os.environ, "DATABASE_URL": url}
        python("-m", "alembic", "upgrade", "head", cwd=cwd, env=env, failure="alembic failed")
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def migrations(tree: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tree / "migrations" / "versions").glob("*.py")}


def password_hash(cwd: Path) -> str:
    """One argon2 hash made by the app itself (its settings), shared by every seeded user;
    older trees (--tree) kept the helper in app.security."""
    code = "try:\n from app.core.accounts.passwords import pwd_context\n"
    code += "except ImportError:\n from app.security import pwd_context\n"
    code += f"print(pwd_context.hash({PASSWORD!r}))"
    failure = f"the app does not import from {cwd}"
    return python("-c", code, cwd=cwd, env=app_env("postgres"), failure=failure).strip()


@cache
def token_for(user_id: int) -> str:
    """An access token as the app mints it (same claims), made with the servers' key."""
    now = int(time.time())
    claims = {"sub": str(user_id), "ver": 0, "sid": user_id, "type": "access", "scope": "regular",
              "iat": now, "exp": now + 7 * 24 * 3600}  # fmt: skip
    return str(jwt.encode(claims, SECRET, algorithm="HS256"))


def request_files(rows: Rows, db: str, workdir: Path) -> dict[str, Path]:
    """One file of requests per scenario (for bench/requests.lua), from the seeded rows, by
    users entitled to make them: 1,000 users, the big thread's members, 500 deep pages,
    2,000 senders in random threads, 2,000 sends to the big thread by its members in turn
    (so the requests in flight at once come from different senders)."""
    users = [u[0] for u in rows["user"]]
    pairs = [(m[4], m[5]) for m in rows["membership"]]  # (thread, user)
    big = [uid for tid, uid in pairs if tid == BIG_THREAD_ID]
    # Far back: among the oldest tenth of the big thread, with a full page before it.
    live = [m[0] for m in rows["message"] if m[4] == BIG_THREAD_ID and not m[3]]
    deep = live[60 : 60 + max(1, len(live) // 10 - 60)]
    rng = random.Random(7)
    words = ["hello", "ok", "thanks", "see you", "tomorrow", "the deploy is done", "lunch"]
    page = f"/api/threads/{BIG_THREAD_ID}/messages"
    senders = random.Random(8).sample(big, len(big))  # the other files stay as they were
    sample = rng.sample(users, min(1000, len(users)))
    threads_of = Counter(uid for _, uid in pairs)
    with_threads = sorted(threads_of)
    searchers = {
        "few": [uid for uid, n in threads_of.items() if n == 1][:200],
        "many": [uid for uid, _ in threads_of.most_common(200)],
    }

    def get(path: str, uid: int) -> tuple[str, ...]:
        return ("GET", path, token_for(uid), "", "")

    def post(tid: int, uid: int) -> tuple[str, ...]:
        body = json.dumps({"body": " ".join(rng.choices(words, k=rng.randint(2, 20)))})
        return ("POST", f"/api/threads/{tid}/messages", token_for(uid), "application/json", body)

    lines: dict[str, list[tuple[str, ...]]] = {
        "users_me": [get("/api/users/me", uid) for uid in sample],
        "token": [
            ("POST", "/api/auth/token", "", "application/x-www-form-urlencoded",
             urlencode({"username": f"user{uid}@example.com", "password": PASSWORD}))
            for uid in sample
        ],
        "threads": [get("/api/threads", uid)
                    for uid in rng.sample(with_threads, min(1000, len(with_threads)))],
        "newest": [get(page, uid) for uid in big],
        "deep": [get(f"{page}?before={mid}", big[i % len(big)])
                 for i, mid in enumerate(rng.sample(deep, min(500, len(deep))))],
        **{
            f"search_{kind}_{who}": [get(f"/api/messages/search?q={word}", uid) for uid in uids]
            for kind, word in (("common", "meeting"), ("rare", RARE_WORD))
            for who, uids in searchers.items()
        },
        "post": [post(tid, uid) for tid, uid in rng.sample(pairs, min(2000, len(pairs)))],
        "post_hot": [post(BIG_THREAD_ID, senders[i % len(senders)]) for i in range(2000)],
    }  # fmt: skip
    files = {name: workdir / f"{db}-{name}.tsv" for name in lines}
    for name, requests in lines.items():
        files[name].write_text("".join("\t".join(r) + "\n" for r in requests))
    return files


# The statements the app sends for a request, caught on their way to the driver: the
# harness EXPLAINs and times what app/ runs as it is, whatever it builds. Run with the
# app's python.
CAPTURE = """
import asyncio, json, sys
import httpx
from sqlalchemy import event
from sqlalchemy.engine import Engine
from app.main import app
seen = []
event.listen(Engine, "before_cursor_execute", lambda *a: seen.append((a[2], list(a[3]))))
async def main():
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as c:
        for path, token in json.loads(sys.argv[1]):
            seen.clear()
            r = await c.get(path, headers={"Authorization": "Bearer " + token})
            assert r.status_code == 200, r.text
            print(json.dumps([s for s in seen if "FROM message" in s[0]][-1]))
asyncio.run(main())
"""


def statements(cwd: Path, db: str, files: dict[str, Path], names: list[str]) -> dict[str, Any]:
    """(sql, parameters, user id) of the app's statement for each scenario's first request."""
    requests = [files[name].read_text().split("\t", 3)[1:3] for name in names]
    failure = "could not capture the app's SQL"
    out = python("-c", CAPTURE, json.dumps(requests), cwd=cwd, env=app_env(db), failure=failure)
    users = [int(jwt.get_unverified_claims(token)["sub"]) for _, token in requests]
    caught = [json.loads(line) for line in out.splitlines()]
    return {name: (*c, u) for name, c, u in zip(names, caught, users, strict=True)}


async def explain(db: str, statements: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each statement's EXPLAIN (ANALYZE, BUFFERS), then STATEMENT_RUNS timed runs of it one
    after another on one connection: rows found, p50 and p99 in ms."""
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        out = {}
        for name, (sql, params, user) in statements.items():
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
            prepared = await conn.prepare(sql)
            found, times = len(await prepared.fetch(*params)), []
            for _ in range(STATEMENT_RUNS):
                t0 = time.perf_counter()
                await prepared.fetch(*params)
                times.append((time.perf_counter() - t0) * 1000)
            q = statistics.quantiles(times, n=100)
            threads = await conn.fetchval(
                "SELECT count(*) FROM membership WHERE user_id = $1 AND NOT deleted", user
            )
            text = f"{' '.join(sql.split())}  -- {params}\n" + "\n".join(r[0] for r in plan)
            out[name] = {"plan": text, "rows": found, "p50": q[49], "p99": q[98]}
            out[name] |= {"user": user, "threads": threads}
        return out
    finally:
        await conn.close()


@dataclass
class Run:
    rps: float
    p50: float  # ms
    p99: float
    max: float
    errors: int  # socket errors, timeouts, HTTP status >= 400
    requests: int
    peak_mib: float = 0.0  # the server's VmHWM: its highest RSS so far
    others: float = 0.0  # cores used meanwhile by processes that are not the bench's


def median(runs: list[Run]) -> Run:
    return Run(
        rps=statistics.median(r.rps for r in runs),
        p50=statistics.median(r.p50 for r in runs),
        p99=statistics.median(r.p99 for r in runs),
        max=max(r.max for r in runs),
        errors=sum(r.errors for r in runs),
        requests=sum(r.requests for r in runs),
        peak_mib=max(r.peak_mib for r in runs),
        others=statistics.mean(r.others for r in runs),
    )


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


BENCH_PIDS: set[int] = {os.getpid()}  # the servers join it as they start
BENCH_COMMS = {"postgres", "wrk", "taskset"}


def cpu_ticks() -> dict[int, tuple[str, int]]:
    """(comm, utime + stime) of every process, for the `others` figure."""
    out = {}
    for entry in os.scandir("/proc"):
        try:
            raw = Path(entry.path, "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if raw:
            comm, fields = raw[raw.index("(") + 1 : raw.rindex(")")], raw.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))  # utime + stime
    return out


def others(before: dict[int, tuple[str, int]], seconds: float) -> float:
    """Cores used meanwhile by other people's processes (a shared machine skews numbers)."""
    ticks = 0
    for pid, (comm, t) in cpu_ticks().items():
        prev = before.get(pid)
        if prev and prev[0] == comm and pid not in BENCH_PIDS and comm not in BENCH_COMMS:
            ticks += t - prev[1]
    return ticks / os.sysconf("SC_CLK_TCK") / max(seconds, 1e-9)


def wrk(server: Server, file: Path, connections: int, seconds: float) -> list[str]:
    # wrk's timeout is twice the stall limit, so a stalled request is seen, not only counted.
    timeout, duration = f"--timeout={2 * STALL_MS // 1000}s", f"-d{max(1, round(seconds))}s"
    wrk = ["wrk", "-t1", f"-c{connections}", duration, timeout, "-s", str(BENCH / "requests.lua")]
    return ["taskset", "-c", WRK_CPU, *wrk, server.base, "--", str(file)]


def parse(stdout: str) -> Run:
    """The BENCH line bench/requests.lua prints."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"no BENCH line in wrk's output:\n{stdout}")
    r = json.loads(line[6:])
    rps = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    p50, p99, top = (r[f"{k}_us"] / 1000 for k in ("p50", "p99", "max"))
    errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Run(rps, p50, p99, top, errors, r["requests"])


def measure(server: Server, file: Path, connections: int, seconds: float) -> Run:
    before, t0 = cpu_ticks(), time.monotonic()
    done = subprocess.run(wrk(server, file, connections, seconds), capture_output=True, text=True)
    if done.returncode or server.proc.poll() is not None:
        raise RuntimeError(f"wrk: {done.stderr}\n{done.stdout}\nserver:\n{server.log_tail()}")
    run = parse(done.stdout)
    run.peak_mib, run.others = memory_mib(server.proc.pid), others(before, time.monotonic() - t0)
    return run


def line(r: Run) -> str:
    return (
        f"{r.rps:8.1f} req/s  p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms  max {r.max:6.0f} ms  "
        f"errors {r.errors}  peak {r.peak_mib:.0f} MiB  others {r.others:.2f} cores"
    )


@contextmanager
def serving(
    kind: str,
    db: str,
    cwd: Path,
    workdir: Path,
    *,
    cpus: str = SERVER_CPU,
    env: dict[str, str] | None = None,
    label: str = "",
) -> Iterator[Server]:
    """Our app (`python -m app`) or the ceiling, pinned to `cpus` (the server cpu), with
    `env` (app_env(db)); `label` tells the log files of servers on one database apart."""
    target = ["-m", "app"] if kind == "app" else [str(BENCH / "ceiling.py")]
    argv = ["taskset", "-c", cpus, PY, *target]  # taskset execs it: the same pid
    log_file = workdir / f"{kind}{label}-{db}.log"
    with start(cwd, env or app_env(db), argv=argv, log=log_file, timeout=60) as server:
        BENCH_PIDS.add(server.proc.pid)
        yield server


class Bench:
    def __init__(self, a: argparse.Namespace, files: dict[str, dict[str, Path]]) -> None:
        self.a, self.files = a, files

    def run(self, server: Server, scenario: str, connections: int, warm: bool, db: str = "") -> Run:
        file = self.files[db or "main"][scenario]
        if warm:
            measure(server, file, connections, self.a.warmup)
        return measure(server, file, connections, self.a.duration)

    def alternate(
        self, what: str, name: str, servers: dict[str, Server], connections: int = 0, runs: int = 0
    ) -> dict[str, Run]:
        """Runs of scenario `name` on each server in turn (on the database its key names, if
        any), alternating who goes first, a warm-up before the first; their medians."""
        out: dict[str, list[Run]] = {key: [] for key in servers}
        runs = runs or self.a.runs
        for n in range(runs):
            for key in list(servers)[:: -1 if n % 2 else 1]:
                db = key if key in self.files else ""
                profile = self.a.profile and key == "app" and n == 0 and not what
                with (
                    recording(servers[key].proc.pid, self.a.profile / f"{name}.txt", WRK_CPU)
                    if profile
                    else nullcontext()
                ):
                    r = self.run(servers[key], name, connections or self.a.connections, n == 0, db)
                out[key].append(r)
                log(f"{what}run {n + 1}/{runs} {name:9} {key:8} {line(r)}")
        return {key: median(v) for key, v in out.items()}

    def login(self, app: Server) -> dict[str, Run]:
        """users/me idle, and while 8 connections hammer the token endpoint."""
        idle, busy, logins = [], [], []
        for n in range(self.a.runs):
            idle.append(self.run(app, "users_me", self.a.connections, warm=n == 0))
            cmd = wrk(app, self.files["main"]["token"], 8, self.a.duration + 3)
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as hammer:
                time.sleep(1.5)  # the 8 logins are in flight
                busy.append(self.run(app, "users_me", self.a.connections, warm=False))
                logins.append(parse(hammer.communicate()[0]))
            log(f"login run {n + 1} idle          {line(idle[-1])}")
            log(f"login run {n + 1} with 8 logins {line(busy[-1])}, {logins[-1].rps:.1f} logins/s")
        return {"idle": median(idle), "busy": median(busy), "logins": median(logins)}

    def memory(self, app: Server) -> list[dict[str, float]]:
        """RSS of a fresh app after FIRST and after TOTAL users/me requests, served in wrk
        runs of up to a minute (wrk stops on time, not on a count)."""
        marks, done, rps, errors, t0 = [], 0, 0.0, 0, time.monotonic()
        for upto in self.a.memory:
            while done < upto:
                seconds = 5.0 if not rps else min(60.0, max(1.0, (upto - done) / rps))
                r = measure(app, self.files["main"]["users_me"], self.a.connections, seconds)
                done, rps, errors = done + r.requests, r.rps, errors + r.errors
            time.sleep(1.0)
            rss, peak = memory_mib(app.proc.pid, "VmRSS"), memory_mib(app.proc.pid)
            minutes = (time.monotonic() - t0) / 60
            marks.append(
                dict(requests=done, rss=rss, peak=peak, rps=rps, errors=errors, minutes=minutes)
            )
            log(
                f"memory: after {done:,} requests RSS {rss:.1f} MiB ({rps:.0f} req/s, {errors} err)"
            )
        return marks


FORMATS = {"rps": ".1f", "p50": ".2f", "p99": ".2f", "max": ".0f", "errors": "d",
           "peak_mib": ".0f", "others": ".2f"}  # fmt: skip


def cells(r: Run | None, *fields: str) -> list[str]:
    return [format(getattr(r, f), FORMATS[f]) if r else "—" for f in fields]


def table(title: str, head: str, rows: list[list[str]], *notes: str) -> list[str]:
    """A markdown table under `title`, with the columns `head` names (separated by |)."""
    names = [name.strip() for name in head.split("|")]
    lines = ["| " + " | ".join(names) + " |", "|---|" + "--:|" * (len(names) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*([title, ""] if title else []), *lines, "", *notes]


def ok(passed: bool) -> str:
    return "ok" if passed else "MISS"


def busiest(*runs: Run | None) -> str:
    return f"{max(r.others for r in runs if r):.2f}"


def report(res: dict[str, Any]) -> str:
    out = [f"Machine: {res['machine']}", "", f"Setup: {res['setup']}", ""]
    big, small = res["messages"]
    if main := res.get("main"):
        rows = []
        for name, runs in main.items():
            (label, target), o, c = SCENARIOS[name], runs["app"], runs.get("ceiling")
            ratio = f"{o.rps / c.rps:.0%}" if c else "—"
            goal = f"≥ {target:.0%} {ok(o.rps / c.rps >= target)}" if target and c else "—"
            if target and target > 1:  # in req/s
                goal = f"≥ {target:.0f}/s {ok(o.rps >= target)}"
            fields = ("rps", "p50", "p99", "errors", "peak_mib")
            rows.append([label, *cells(o, *fields), *cells(c, *fields), ratio, goal, busiest(o, c)])
        head = "scenario | ours req/s | p50 ms | p99 ms | errors | peak MiB | ceiling req/s"
        head += " | p50 ms | p99 ms | errors | peak MiB | ours ÷ ceiling | target | others"
        note = (
            "p50/p99: medians over the runs; errors: all runs added up (socket errors, "
            "timeouts, HTTP status >= 400); peak MiB: the server's highest RSS; others: "
            "cores used during the runs by processes that are not the bench's (a shared "
            "machine: anything above ~0.1 skews the numbers)."
        )
        out += table("", head, rows, note, "")
    if c256 := res.get("c256"):
        rows = []
        for name, runs in c256.items():
            o, c = runs["app"], runs.get("ceiling")
            c32 = res.get("main", {}).get(name, {}).get("app")
            kept = f"{o.rps / c32.rps:.0%}" if c32 else "—"
            ours = [*cells(o, "rps"), kept, *cells(o, "p50", "p99", "max", "errors", "peak_mib")]
            passed = ok(o.errors == 0 and o.max < STALL_MS)
            ceiling = cells(c, "rps", "p99", "max", "errors")
            rows.append([SCENARIOS[name][0], *ours, passed, *ceiling, busiest(o, c)])
        title = (
            "256 connections (target, ours: no errors and no stall = no request over "
            f"{STALL_MS // 1000} s); vs c=32: req/s kept from the main table; the ceiling's "
            "numbers are for comparison:"
        )
        head = "scenario | req/s | vs c=32 | p50 ms | p99 ms | max ms | errors | peak MiB |"
        out += table(title, f"{head} | ceiling req/s | p99 ms | max ms | errors | others", rows)
    if scale := res.get("scale"):
        rows = []
        for page, by_db in scale.items():
            b, s = by_db["main"], by_db["small"]
            slower, p50 = s.rps / b.rps, b.p50 / s.p50
            ratios = [f"{slower:.2f}x", f"{p50:.2f}x", ok(slower <= 1.25 and p50 <= 1.25)]
            rows.append(
                [page, *cells(b, "rps", "p50"), *cells(s, "rps", "p50"), *ratios, busiest(b, s)]
            )
        title = f"Pages at {big:,} vs {small:,} messages (ours; target: within 1.25x):"
        head = f"page | req/s @{big:,} | p50 ms | req/s @{small:,} | p50 ms | slowdown (req/s)"
        out += table(title, f"{head} | slowdown (p50) | | others", rows)
    if stats := res.get("statements"):
        rows = [
            [name, f"{s['user']} ({s['threads']})", str(s["rows"]), f"{s['p50']:.2f}",
             f"{s['p99']:.2f}"]
            for name, s in stats.items()
        ]  # fmt: skip
        title = (
            f"The app's statement for a scenario's first request, {STATEMENT_RUNS} times in a "
            f"row on one connection ({big:,} messages, after the runs above):"
        )
        out += table(title, "scenario | user (threads) | rows | p50 ms | p99 ms", rows)
        for name, s in stats.items():
            out += [f"EXPLAIN (ANALYZE, BUFFERS), {name} at {big:,} messages:", ""]
            out += ["```", s["plan"], "```", ""]
    if login := res.get("login"):
        i, b, t = login["idle"], login["busy"], login["logins"]
        rows = [
            ["idle", *cells(i, "rps", "p50", "p99"), "—", busiest(i)],
            ["with 8 logins", *cells(b, "rps", "p50", "p99"), *cells(t, "rps"), busiest(b)],
        ]
        title = "users/me while 8 connections hammer POST /api/auth/token (target: p99 < 2x idle):"
        ratio = f"p99 ratio: {b.p99 / i.p99:.2f}x — {ok(b.p99 / i.p99 < 2)}"
        out += table(
            title, "| users/me req/s | p50 ms | p99 ms | logins/s | others", rows, ratio, ""
        )
    if marks := res.get("memory"):
        m0, m1 = marks
        growth = m1["rss"] / m0["rss"]
        out += ["Server memory, a fresh app process serving users/me (target: within 10%):", ""]
        out += [
            f"- after {m['requests']:,} requests: RSS {m['rss']:.1f} MiB (peak {m['peak']:.1f} "
            f"MiB; {m['minutes']:.1f} min, {m['rps']:.0f} req/s, {m['errors']} errors)"
            for m in marks
        ]
        out += [f"- growth: {100 * (growth - 1):+.1f}% — {ok(growth <= 1.10)}", ""]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 run, 2 s per scenario")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="of: " + ",".join(SCENARIOS))
    p.add_argument("--checks", default=",".join(CHECKS), help="of: " + ",".join(CHECKS) + ", none")
    p.add_argument("--duration", type=float, help="seconds per run (default 10, --quick 2)")
    p.add_argument("--runs", type=int, help="runs per scenario, medians (default 3, --quick 1)")
    p.add_argument("-c", "--connections", type=int, default=32)
    # --snapshot: edits made meanwhile do not reach a long run. --tree: another commit's code
    # measured by today's harness (`git worktree add /tmp/before <commit>`).
    p.add_argument("--snapshot", action="store_true", help="serve a copy of the code made first")
    p.add_argument("--tree", type=Path, help="serve the app (its alembic too) from this checkout")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the app's first run of each scenario into this directory",
    )
    a = p.parse_args()
    a.scenarios = [s for s in SCENARIOS if s in a.scenarios.split(",")]
    a.checks = [c for c in CHECKS if c in a.checks.split(",")]
    size = QUICK if a.quick else FULL
    a.duration = a.duration or (2.0 if a.quick else 10.0)
    a.runs = a.runs or (1 if a.quick else 3)
    a.warmup = 1.0 if a.quick else 3.0
    a.data, a.small, a.memory = size["data"], size["small"], size["memory"]
    return a


def main() -> None:
    # Clean up (servers, databases) on Ctrl-C and on kill, even when started with `&`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a = parse_args()
    ensure_tools()
    command = " ".join(["bench/run.py", *sys.argv[1:]])
    res: dict[str, Any] = {"machine": machine(), "command": command}
    log(res["machine"])
    users, threads, messages = a.data
    res["messages"] = (messages, a.small)
    res["setup"] = (
        f"1 uvicorn worker pinned with taskset to cpu {SERVER_CPU} (the ceiling too, one at a "
        f"time under load), wrk -t1 pinned to cpu {WRK_CPU}, c={a.connections}, {a.duration:g} s "
        f"per run, median of {a.runs} run(s); PostgreSQL is not pinned and shares both cores. "
        f"Data: {users:,} users, {threads:,} threads of 2-50 members, {messages:,} messages "
        f"({messages // 10:,} in the big thread)."
    )
    src = (a.tree or ROOT).resolve()
    commit = output("git", "-C", str(src), "log", "-1", "--format=%h %cs")
    res["setup"] += f" App code: {src}" + (f" ({commit})." if commit not in ("", "?") else ".")
    log(res["setup"])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-", ignore_cleanup_errors=True) as tmp:
        workdir, cwd = Path(tmp), src
        if a.snapshot:  # `python -m app` run there imports the copy
            cwd = workdir / "src"
            for name in ("app", "migrations"):
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(src / name, cwd / name, ignore=ignore)
            shutil.copy2(src / "alembic.ini", cwd)
        with ExitStack() as databases:
            hashed, files = password_hash(cwd), {}
            # Names carry the pid: runs at the same time do not share databases.
            dbs = {key: f"bench_{os.getpid()}_{key}" for key in ("main", "small", "ceiling")}
            keys = ["main", "small"] if "scale" in a.checks else ["main"]
            # The ceiling runs today's SQL: beside a tree of other migrations, on a database
            # of its own at today's head, seeded alike.
            if migrations(cwd) == migrations(ROOT):
                dbs["ceiling"] = dbs["main"]
            else:
                keys.append("ceiling")
            for key in keys:
                log(f"{dbs[key]}: fresh database, alembic upgrade head, seed")
                url = databases.enter_context(database(dbs[key], ROOT if key == "ceiling" else cwd))
                n = a.small if key == "small" else messages
                rows = asyncio.run(
                    seed(url, users=users, threads=threads, messages=n, hashed=hashed)
                )
                if key != "ceiling":
                    files[key] = request_files(rows, dbs[key], workdir)
                del rows
            bench = Bench(a, files)
            with serving("app", dbs["main"], cwd, workdir) as app:
                with serving("ceiling", dbs["ceiling"], ROOT, workdir) as ceiling:
                    both = {"app": app, "ceiling": ceiling}
                    # Each scenario's runs in turn; the POSTs come after the reads, so every
                    # read sees the seeded data.
                    targets = {name: SCENARIOS[name][1] for name in a.scenarios}  # in order
                    res["main"] = {
                        name: bench.alternate("", name, both if target else {"app": app})
                        for name, target in targets.items()
                    }
                    if "c256" in a.checks:  # no errors and no stall (ours; ceiling to compare)
                        res["c256"] = {
                            name: bench.alternate("c=256 ", name, both, 256, runs=1)
                            for name, target in targets.items()
                            if target
                        }
                if "login" in a.checks:
                    res["login"] = bench.login(app)
                if "scale" in a.checks:
                    with serving("app", dbs["small"], cwd, workdir) as small:
                        servers = {"main": app, "small": small}
                        pages = ("newest", "deep")
                        res["scale"] = {p: bench.alternate("scale ", p, servers) for p in pages}
            # The pages' statements (after all the POSTs: a plan regression shows) and search's.
            names = ["newest", "deep"] if "scale" in a.checks else []
            names += [n for n in a.scenarios if n.startswith("search_")]
            if names:
                caught = statements(cwd, dbs["main"], files["main"], names)
                res["statements"] = asyncio.run(explain(dbs["main"], caught))
                for name, s in res["statements"].items():
                    log(f"{name}: p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms\n{s['plan']}")
            if "memory" in a.checks:
                with serving("app", dbs["main"], cwd, workdir) as fresh:
                    res["memory"] = bench.memory(fresh)
    text = report(res)
    print(f"\n{text}\n({(time.monotonic() - started) / 60:.1f} min)")
    OUT.mkdir(exist_ok=True)
    raw = json.dumps(res, indent=1, default=lambda o: asdict(o) if isinstance(o, Run) else str(o))
    (OUT / "last.json").write_text(raw)
    (OUT / "last.md").write_text(f"Command: `{res['command']}`\n\n{text}\n")
    log(f"results in {OUT / 'last.md'} and {OUT / 'last.json'}")


if __name__ == "__main__":
    main()
