"""Load harness: the app on PostgreSQL against a raw-asyncpg ceiling, driven by wrk.

    .venv/bin/python bench/run.py            # the full run (~45 min, 30 of them the 1M soak)
    .venv/bin/python bench/run.py --quick    # smoke test on small data (~2 min)

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass
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
from seed import BIG_THREAD_ID, RARE_WORD, seed  # noqa: E402

from tests.helpers import PASSWORD, Server, start  # noqa: E402

PY = str(VENV_PY if VENV_PY.exists() else sys.executable)
PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "x" * 40
SERVER_CPU, WRK_CPU = "0", "1"
STALL_MS = 5000  # at 256 connections, a slower request is a stall
OUT = BENCH / "out"

# name: (label, ours / ceiling target, or None for the app only)
SCENARIOS: dict[str, tuple[str, float | None]] = {
    "users_me": ("GET /api/users/me", 0.70),
    "threads": ("GET /api/threads", 0.70),
    "newest": ("GET /api/threads/{id}/messages (newest page)", 0.70),
    "deep": ("GET /api/threads/{id}/messages?before= (deep)", 0.70),
    "post": ("POST /api/threads/{id}/messages", 0.60),
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
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
    for tool, package in (("wrk", "wrk"), ("taskset", "util-linux")):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: apt-get install -y {package} (or brew install {tool})")


# --------------------------------------------------------------------------- databases


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
    }


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def migrate(cwd: Path, database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    cmd = [PY, "-m", "alembic", "upgrade", "head"]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")


def password_hash(cwd: Path) -> str:
    """One argon2 hash made by the app itself (its settings), shared by every seeded user."""
    code = f"from app.security import pwd_context; print(pwd_context.hash({PASSWORD!r}))"
    done = subprocess.run(
        [PY, "-c", code], cwd=cwd, env=app_env("postgres"), capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"the app does not import from {cwd}:\n{done.stderr[-3000:]}")
    return done.stdout.strip()


def token_for(user_id: int) -> str:
    """An access token as the app mints it (same claims), made with the servers' key."""
    now = int(time.time())
    claims = {"sub": str(user_id), "ver": 0, "sid": user_id, "type": "access", "scope": "regular",
              "iat": now, "exp": now + 7 * 24 * 3600}  # fmt: skip
    return str(jwt.encode(claims, SECRET, algorithm="HS256"))


async def request_files(db: str, workdir: Path) -> dict[str, Path]:
    """One file of requests per scenario (for bench/requests.lua), by users entitled to
    make them: 1,000 users, the big thread's members, 500 deep pages, 2,000 senders."""
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        users = [r[0] for r in await conn.fetch('SELECT id FROM "user" ORDER BY id')]
        pairs = await conn.fetch("SELECT thread_id, user_id FROM membership ORDER BY id")
        big = [uid for tid, uid in pairs if tid == BIG_THREAD_ID]
        count = await conn.fetchval(
            "SELECT count(*) FROM message WHERE thread_id = $1 AND NOT deleted", BIG_THREAD_ID
        )
        # Far back: among the oldest tenth of the big thread, with a full page before it.
        deep = await conn.fetch(
            "SELECT id FROM message WHERE thread_id = $1 AND NOT deleted "
            "ORDER BY id OFFSET 60 LIMIT $2",
            BIG_THREAD_ID,
            max(1, count // 10 - 60),
        )
    finally:
        await conn.close()
    rng = random.Random(7)
    words = ["hello", "ok", "thanks", "see you", "tomorrow", "the deploy is done", "lunch"]
    form = "application/x-www-form-urlencoded"
    page = f"/api/threads/{BIG_THREAD_ID}/messages"
    sample = rng.sample(users, min(1000, len(users)))
    with_threads = sorted({uid for _, uid in pairs})
    threads_of = Counter(uid for _, uid in pairs)
    few = [uid for uid, n in threads_of.items() if n == 1][:200]
    many = [uid for uid, _ in threads_of.most_common(200)]
    lines = {
        "users_me": [("GET", "/api/users/me", uid, "", "") for uid in sample],
        "token": [
            ("POST", "/api/auth/token", None, form,
             urlencode({"username": f"user{uid}@example.com", "password": PASSWORD}))
            for uid in sample
        ],
        "threads": [("GET", "/api/threads", uid, "", "")
                    for uid in rng.sample(with_threads, min(1000, len(with_threads)))],
        "newest": [("GET", page, uid, "", "") for uid in big],
        "deep": [("GET", f"{page}?before={r[0]}", big[i % len(big)], "", "")
                 for i, r in enumerate(rng.sample(deep, min(500, len(deep))))],
        **{
            f"search_{kind}_{who}": [
                ("GET", f"/api/messages/search?q={word}", uid, "", "") for uid in users_
            ]
            for kind, word in (("common", "meeting"), ("rare", RARE_WORD))
            for who, users_ in (("few", few), ("many", many))
        },
        "post": [
            ("POST", f"/api/threads/{tid}/messages", uid, "application/json",
             json.dumps({"body": " ".join(rng.choices(words, k=rng.randint(2, 20)))}))
            for tid, uid in rng.sample(pairs, min(2000, len(pairs)))
        ],
    }  # fmt: skip
    tokens: dict[int, str] = {}
    files = {}
    for name, rows in lines.items():
        files[name] = workdir / f"{db}-{name}.tsv"
        with files[name].open("w") as f:
            for method, path, uid, ctype, body in rows:
                if uid is not None and uid not in tokens:
                    tokens[uid] = token_for(uid)
                token = "" if uid is None else tokens[uid]
                f.write(f"{method}\t{path}\t{token}\t{ctype}\t{body}\n")
    return files


# The statements the app sends for a page, caught on their way to the driver: the scale
# check EXPLAINs what app/ runs as it is, whatever it builds. Run with the app's python.
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


def page_statements(cwd: Path, db: str, files: dict[str, Path]) -> list[Any]:
    """(sql, parameters) the app sends for the first newest-page and deep-page requests."""
    requests = [files[name].read_text().split("\t", 3)[1:3] for name in ("newest", "deep")]
    done = subprocess.run(
        [PY, "-c", CAPTURE, json.dumps(requests)],
        cwd=cwd, env=app_env(db), capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"could not capture the app's SQL:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines()]


async def explain(db: str, statements: list[Any]) -> dict[str, str]:
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        plans = {}
        for name, (sql, params) in zip(("newest", "deep"), statements, strict=True):
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
            plans[name] = f"{' '.join(sql.split())}  -- {params}\n" + "\n".join(r[0] for r in rows)
        return plans
    finally:
        await conn.close()


# --------------------------------------------------------------------------- measuring


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
    timeout = f"--timeout={2 * STALL_MS // 1000}s"
    duration = f"-d{max(1, round(seconds))}s"
    lua = str(BENCH / "requests.lua")
    wrk = ["wrk", "-t1", f"-c{connections}", duration, timeout, "-s", lua, server.base]
    return ["taskset", "-c", WRK_CPU, *wrk, "--", str(file)]


def parse(stdout: str) -> Run:
    """The BENCH line bench/requests.lua prints."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"no BENCH line in wrk's output:\n{stdout}")
    r = json.loads(line[6:])
    return Run(
        rps=r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0,
        p50=r["p50_us"] / 1000,
        p99=r["p99_us"] / 1000,
        max=r["max_us"] / 1000,
        errors=sum(r[k] for k in ("connect", "read", "write", "status", "timeout")),
        requests=r["requests"],
    )


def measure(server: Server, file: Path, connections: int, seconds: float) -> Run:
    before, t0 = cpu_ticks(), time.monotonic()
    done = subprocess.run(wrk(server, file, connections, seconds), capture_output=True, text=True)
    if done.returncode or server.proc.poll() is not None:
        raise RuntimeError(f"wrk: {done.stderr}\n{done.stdout}\nserver:\n{server.log_tail()}")
    run = parse(done.stdout)
    run.peak_mib, run.others = memory_mib(server.proc.pid), others(before, time.monotonic() - t0)
    return run


@contextmanager
def serving(kind: str, db: str, cwd: Path, workdir: Path) -> Iterator[Server]:
    """Our app (`python -m app`) or the ceiling, pinned to the server cpu."""
    target = ["-m", "app"] if kind == "app" else [str(BENCH / "ceiling.py")]
    argv = ["taskset", "-c", SERVER_CPU, PY, *target]  # taskset execs it: the same pid
    log_file = workdir / f"{kind}-{db}.log"
    with start(cwd, app_env(db), argv=argv, log=log_file, timeout=60) as server:
        BENCH_PIDS.add(server.proc.pid)
        yield server


# --------------------------------------------------------------------------- blocks


class Bench:
    def __init__(self, a: argparse.Namespace, files: dict[str, dict[str, Path]]) -> None:
        self.a, self.files = a, files

    def run(self, server: Server, scenario: str, connections: int, warm: bool, db: str = "") -> Run:
        file = self.files[db or "main"][scenario]
        if warm:
            measure(server, file, connections, self.a.warmup)
        return measure(server, file, connections, self.a.duration)

    def main_table(self, servers: dict[str, Server]) -> dict[str, dict[str, Run]]:
        """Each scenario's runs in turn, app and ceiling alternating who goes first. The
        POSTs come after the reads, so every read sees the seeded data."""
        raw: dict[str, dict[str, list[Run]]] = {}
        for name in self.a.scenarios:
            kinds = ["app", "ceiling"] if SCENARIOS[name][1] else ["app"]
            raw[name] = {kind: [] for kind in kinds}
            for n in range(self.a.runs):
                for kind in kinds[::-1] if n % 2 else kinds:
                    r = self.run(servers[kind], name, self.a.connections, warm=n == 0)
                    raw[name][kind].append(r)
                    log(f"run {n + 1}/{self.a.runs} {name:9} {kind:8} {line(r)}")
        return {name: {k: median(v) for k, v in runs.items()} for name, runs in raw.items()}

    def c256(self, servers: dict[str, Server]) -> dict[str, dict[str, Run]]:
        """256 connections: no errors and no stall (ours; the ceiling for comparison)."""
        out: dict[str, dict[str, Run]] = {}
        for name in [n for n in self.a.scenarios if SCENARIOS[n][1]]:
            for kind, server in servers.items():
                out.setdefault(name, {})[kind] = r = self.run(server, name, 256, warm=True)
                log(f"c=256 {name:9} {kind:8} {line(r)}")
        return out

    def scale(self, big: Server, small: Server) -> dict[str, dict[str, Run]]:
        """The newest and a deep page on the main data set and on the small one."""
        raw: dict[str, dict[str, list[Run]]] = {"newest": {}, "deep": {}}
        for n in range(self.a.runs):
            for page, by_db in raw.items():
                for db, server in [("main", big), ("small", small)][:: -1 if n % 2 else 1]:
                    r = self.run(server, page, self.a.connections, n == 0, db)
                    by_db.setdefault(db, []).append(r)
                    log(f"scale run {n + 1} {page:7} {db:6} {line(r)}")
        return {page: {db: median(v) for db, v in by_db.items()} for page, by_db in raw.items()}

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
            rss = memory_mib(app.proc.pid, "VmRSS")
            minutes, peak = (time.monotonic() - t0) / 60, memory_mib(app.proc.pid)
            mark = {"requests": done, "rss": rss, "peak": peak, "rps": rps, "errors": errors}
            marks.append({**mark, "minutes": minutes})
            log(
                f"memory: after {done:,} requests RSS {rss:.1f} MiB ({rps:.0f} req/s, {errors} err)"
            )
        return marks


def line(r: Run) -> str:
    return (
        f"{r.rps:8.1f} req/s  p50 {r.p50:7.2f} ms  p99 {r.p99:7.2f} ms  max {r.max:6.0f} ms  "
        f"errors {r.errors}  peak {r.peak_mib:.0f} MiB  others {r.others:.2f} cores"
    )


# --------------------------------------------------------------------------- report

FORMATS = {"rps": ".1f", "p50": ".2f", "p99": ".2f", "max": ".0f", "errors": "d",
           "peak_mib": ".0f", "others": ".2f"}  # fmt: skip


def cells(r: Run | None, *fields: str) -> list[str]:
    return [format(getattr(r, f), FORMATS[f]) if r else "—" for f in fields]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    return [*lines, *("| " + " | ".join(row) + " |" for row in rows), ""]


def ok(passed: bool) -> str:
    return "ok" if passed else "MISS"


def busiest(*runs: Run | None) -> str:
    return f"{max(r.others for r in runs if r):.2f}"


def report(res: dict[str, Any]) -> str:
    out = [f"Machine: {res['machine']}", "", f"Setup: {res['setup']}", ""]
    if main := res.get("main"):
        rows = []
        for name, runs in main.items():
            (label, target), o, c = SCENARIOS[name], runs["app"], runs.get("ceiling")
            ratio = f"{o.rps / c.rps:.0%}" if c else "—"
            goal = f"≥ {target:.0%} {ok(o.rps / c.rps >= target)}" if c and target else "—"
            fields = ("rps", "p50", "p99", "errors", "peak_mib")
            rows.append([label, *cells(o, *fields), *cells(c, *fields), ratio, goal, busiest(o, c)])
        head = ["scenario", "ours req/s", "p50 ms", "p99 ms", "errors", "peak MiB"]
        head += ["ceiling req/s", "p50 ms", "p99 ms", "errors", "peak MiB"]
        out += table([*head, "ours ÷ ceiling", "target", "others"], rows)
        out += [
            "p50/p99: medians over the runs; errors: all runs added up (socket errors, "
            "timeouts, HTTP status >= 400); peak MiB: the server's highest RSS; others: "
            "cores used during the runs by processes that are not the bench's (a shared "
            "machine: anything above ~0.1 skews the numbers).",
            "",
        ]
    if c256 := res.get("c256"):
        out += [
            "256 connections (target, ours: no errors and no stall = no request over "
            f"{STALL_MS // 1000} s); vs c=32: req/s kept from the main table; the ceiling's "
            "numbers are for comparison:",
            "",
        ]
        rows = []
        for name, runs in c256.items():
            o, c = runs["app"], runs.get("ceiling")
            c32 = res.get("main", {}).get(name, {}).get("app")
            kept = f"{o.rps / c32.rps:.0%}" if c32 else "—"
            ours = [*cells(o, "rps"), kept, *cells(o, "p50", "p99", "max", "errors", "peak_mib")]
            passed = ok(o.errors == 0 and o.max < STALL_MS)
            ceiling = cells(c, "rps", "p99", "max", "errors")
            rows.append([SCENARIOS[name][0], *ours, passed, *ceiling, busiest(o, c)])
        head = [
            "scenario",
            "req/s",
            "vs c=32",
            "p50 ms",
            "p99 ms",
            "max ms",
            "errors",
            "peak MiB",
            "",
        ]
        out += table([*head, "ceiling req/s", "p99 ms", "max ms", "errors", "others"], rows)
    if scale := res.get("scale"):
        big, small = res["messages"]
        out += [f"Pages at {big:,} vs {small:,} messages (ours; target: within 1.25x):", ""]
        rows = []
        for page, by_db in scale.items():
            b, s = by_db["main"], by_db["small"]
            slower, p50 = s.rps / b.rps, b.p50 / s.p50
            ratios = [f"{slower:.2f}x", f"{p50:.2f}x", ok(slower <= 1.25 and p50 <= 1.25)]
            rows.append(
                [page, *cells(b, "rps", "p50"), *cells(s, "rps", "p50"), *ratios, busiest(b, s)]
            )
        head = ["page", f"req/s @{big:,}", "p50 ms", f"req/s @{small:,}", "p50 ms"]
        out += table([*head, "slowdown (req/s)", "slowdown (p50)", "", "others"], rows)
        for page, plan in res.get("plans", {}).items():
            out += [f"EXPLAIN (ANALYZE, BUFFERS), {page} page at {big:,} messages:", ""]
            out += ["```", plan, "```", ""]
    if login := res.get("login"):
        i, b, t = login["idle"], login["busy"], login["logins"]
        out += [
            "users/me while 8 connections hammer POST /api/auth/token (target: p99 < 2x idle):",
            "",
            *table(
                ["", "users/me req/s", "p50 ms", "p99 ms", "logins/s", "others"],
                [
                    ["idle", *cells(i, "rps", "p50", "p99"), "—", busiest(i)],
                    ["with 8 logins", *cells(b, "rps", "p50", "p99"), *cells(t, "rps"), busiest(b)],
                ],
            ),
            f"p99 ratio: {b.p99 / i.p99:.2f}x — {ok(b.p99 / i.p99 < 2)}",
            "",
        ]
    if marks := res.get("memory"):
        m0, m1 = marks
        growth = m1["rss"] / m0["rss"]
        out += [
            "Server memory, a fresh app process serving users/me (target: within 10%):",
            "",
            f"- after {m0['requests']:,} requests: RSS {m0['rss']:.1f} MiB "
            f"({m0['minutes']:.1f} min)",
            f"- after {m1['requests']:,} requests: RSS {m1['rss']:.1f} MiB (peak "
            f"{m1['peak']:.1f} MiB; {m1['minutes']:.1f} min, {m1['rps']:.0f} req/s, "
            f"{m1['errors']} errors)",
            f"- growth: {100 * (growth - 1):+.1f}% — {ok(growth <= 1.10)}",
            "",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data, 1 run, 2 s per scenario")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="of: " + ",".join(SCENARIOS))
    p.add_argument("--checks", default=",".join(CHECKS), help="of: " + ",".join(CHECKS) + ", none")
    p.add_argument("--duration", type=float, help="seconds per run (default 10, --quick 2)")
    p.add_argument("--runs", type=int, help="runs per scenario, medians (default 3, --quick 1)")
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="serve a copy of app/ and migrations/ taken at the start (edits made meanwhile "
        "do not reach a long run)",
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
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    cwd = ROOT
    if a.snapshot:  # `python -m app` run there imports the copy
        cwd = workdir / "src"
        for name in ("app", "migrations"):
            shutil.copytree(ROOT / name, cwd / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(ROOT / "alembic.ini", cwd)
    # Names carry the pid: runs at the same time do not share databases.
    dbs = {"main": f"bench_{os.getpid()}_main", "small": f"bench_{os.getpid()}_small"}
    if "scale" not in a.checks:
        del dbs["small"]
    started = time.monotonic()
    try:
        hashed = password_hash(cwd)
        files = {}
        for key, db in dbs.items():
            log(f"{db}: fresh database, alembic upgrade head, seed")
            asyncio.run(admin(f'CREATE DATABASE "{db}"'))
            migrate(cwd, f"{PG}/{db}")
            n = messages if key == "main" else a.small
            asyncio.run(seed(f"{PG}/{db}", users=users, threads=threads, messages=n, hashed=hashed))
            files[key] = asyncio.run(request_files(db, workdir))
        bench = Bench(a, files)
        with serving("app", dbs["main"], cwd, workdir) as app:
            with serving("ceiling", dbs["main"], cwd, workdir) as ceiling:
                servers = {"app": app, "ceiling": ceiling}
                res["main"] = bench.main_table(servers)
                if "c256" in a.checks:
                    res["c256"] = bench.c256(servers)
            if "login" in a.checks:
                res["login"] = bench.login(app)
            if "scale" in a.checks:
                with serving("app", dbs["small"], cwd, workdir) as small:
                    res["scale"] = bench.scale(app, small)
                statements = page_statements(cwd, dbs["main"], files["main"])
                res["plans"] = asyncio.run(explain(dbs["main"], statements))
                for page, plan in res["plans"].items():
                    log(f"EXPLAIN (ANALYZE, BUFFERS), {page} page:\n{plan}")
        if "memory" in a.checks:
            with serving("app", dbs["main"], cwd, workdir) as fresh:
                res["memory"] = bench.memory(fresh)
    finally:
        for db in dbs.values():
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(res)
    print(f"\n{text}\n({(time.monotonic() - started) / 60:.1f} min)")
    OUT.mkdir(exist_ok=True)
    raw = json.dumps(res, indent=1, default=lambda o: asdict(o) if isinstance(o, Run) else str(o))
    (OUT / "last.json").write_text(raw)
    (OUT / "last.md").write_text(f"Command: `{res['command']}`\n\n{text}\n")
    log(f"results in {OUT / 'last.md'} and {OUT / 'last.json'}")


if __name__ == "__main__":
    main()
