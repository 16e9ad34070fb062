"""Load harness: the app on PostgreSQL against a raw-asyncpg ceiling, driven by wrk.

    .venv/bin/python bench/run.py            # the full run (~45 min, 30 of them the 1M soak)
    .venv/bin/python bench/run.py --quick    # smoke test on small data (~2 min)

See bench/README.md for what it does, the options and the last results.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"

# Re-run under the project's venv (python-jose and asyncpg live there).
if VENV_PY.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
    os.execv(str(VENV_PY), [str(VENV_PY), __file__, *sys.argv[1:]])

import asyncpg  # noqa: E402
from jose import jwt  # noqa: E402

sys.path.insert(0, str(BENCH))
from seed import BIG_THREAD_ID, seed  # noqa: E402

PY = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))
LUA = BENCH / "requests.lua"
PASSWORD = "bench-password"
SECRET = "bench-secret-" + "x" * 40
PG = "postgresql://postgres@127.0.0.1:5432"
# Where the app's code is run from: the work tree, or a copy of it (--snapshot).
APP_ROOT = ROOT


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    ceiling: bool  # the ceiling serves it too
    target: float | None  # ours / ceiling at least this


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("users_me", "GET /api/users/me", True, 0.70),
        Scenario("threads", "GET /api/threads", True, 0.70),
        Scenario("newest", "GET /api/threads/{id}/messages (newest page)", True, 0.70),
        Scenario("deep", "GET /api/threads/{id}/messages?before= (deep)", True, 0.70),
        Scenario("post", "POST /api/threads/{id}/messages", True, 0.60),
        Scenario("token", "POST /api/auth/token (argon2)", False, None),
    )
}
CHECKS = ("c256", "scale", "login", "memory")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- machine


def cmd_output(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine_line() -> str:
    cpu = "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = "?"
    with suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = f"{kb / 1024 / 1024:.0f} GiB"
    wrk_version = cmd_output(["wrk", "--version"]).split("[")[0].replace("wrk ", "").strip()
    pg_version = cmd_output(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show server_version"]
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib} RAM, Linux {platform.release()}, "
        f"Python {platform.python_version()}, PostgreSQL {pg_version.split()[0]}, "
        f"wrk {wrk_version or '?'}"
    )


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: apt-get install -y wrk")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        if shutil.which("wrk"):
            return
    sys.exit(
        "wrk is not installed. Install it with:\n"
        "    sudo apt-get update && sudo apt-get install -y wrk   (Debian/Ubuntu)\n"
        "    brew install wrk                                     (macOS)"
    )


def snapshot(workdir: Path) -> Path:
    """A copy of the app's code, so edits made to the work tree during a run do not reach
    the servers started later in it. `python -m app` run there imports the copy."""
    src = workdir / "src"
    src.mkdir()
    for name in ("app", "migrations"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "alembic.ini", src / "alembic.ini")
    return src


def check_app_imports() -> None:
    out = subprocess.run(
        [PY, "-c", "import app.main, app.models"],
        cwd=APP_ROOT,
        env=app_env("postgres", 0),
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        sys.exit(f"the app does not import from {APP_ROOT}:\n{out.stderr[-3000:]}")


def ensure_tools() -> None:
    ensure_wrk()
    if not shutil.which("taskset"):
        sys.exit("taskset is missing: apt-get install -y util-linux")


# --------------------------------------------------------------------------- database


async def recreate_db(name: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def drop_db(name: str) -> None:
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def seeded_as(name: str) -> dict[str, Any] | None:
    """The parameters a database was seeded with, if it exists and seeding finished."""
    try:
        conn = await asyncpg.connect(f"{PG}/{name}")
    except asyncpg.InvalidCatalogNameError:
        return None
    try:
        row = await conn.fetchval("SELECT params FROM bench_meta")
        return json.loads(row) if row else None
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()


def app_env(db: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FIRST_SUPERUSER", "DATABASE_URL", "PORT", "HOST"))
    }
    env.update(
        DATABASE_URL=f"{PG}/{db}",
        HOST="127.0.0.1",
        PORT=str(port),
        SECRET_KEY=SECRET,
        ACCESS_TOKEN_EXPIRE_MINUTES=str(60 * 24 * 30),
        # The bench logs in with the right password only; keep the limiter out of the way.
        LOGIN_FAILURES_PER_ADDRESS="1000000",
        LOGIN_FAILURES_PER_EMAIL="1000000",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def password_hash() -> str:
    """One argon2 hash with the app's own settings, shared by every seeded user."""
    code = (
        "from app.security import pwd_context; import sys; "
        f"sys.stdout.write(pwd_context.hash({PASSWORD!r}))"
    )
    out = subprocess.run(
        [PY, "-c", code],
        cwd=APP_ROOT,
        env=app_env("postgres", 0),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


async def prepare_db(
    name: str, *, users: int, threads: int, messages: int, hashed: str, reuse: bool
) -> None:
    params = {"users": users, "threads": threads, "messages": messages, "hash": hashed}
    if reuse and await seeded_as(name) == params:
        log(f"{name}: reusing the seeded database")
        return
    log(f"{name}: fresh database, alembic upgrade head, seeding {messages:,} messages")
    await recreate_db(name)
    migrate = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "alembic",
        "upgrade",
        "head",
        cwd=APP_ROOT,
        env=app_env(name, 0),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await migrate.communicate()
    if migrate.returncode:
        raise RuntimeError(f"alembic upgrade head failed:\n{output.decode(errors='replace')}")
    await seed(
        f"{PG}/{name}", users=users, threads=threads, messages=messages, hashed_password=hashed
    )
    conn = await asyncpg.connect(f"{PG}/{name}")
    try:
        await conn.execute("CREATE TABLE bench_meta (params text)")
        await conn.execute("INSERT INTO bench_meta VALUES ($1)", json.dumps(params))
    finally:
        await conn.close()


# --------------------------------------------------------------------------- requests


def token_for(user_id: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(user_id),
        "ver": 0,
        "type": "access",
        "scope": "regular",
        "iat": now,
        "exp": now + 7 * 24 * 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def write_request_files(db: str, workdir: Path, tag: str) -> dict[str, Path]:
    """One file of requests per scenario, with tokens of users entitled to make them."""
    rng = random.Random(7)
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        user_ids = [r[0] for r in await conn.fetch('SELECT id FROM "user" ORDER BY id')]
        with_threads = [
            r[0]
            for r in await conn.fetch(
                "SELECT DISTINCT user_id FROM membership WHERE NOT deleted ORDER BY 1"
            )
        ]
        big_members = [
            r[0]
            for r in await conn.fetch(
                "SELECT user_id FROM membership WHERE thread_id = $1 AND NOT deleted ORDER BY 1",
                BIG_THREAD_ID,
            )
        ]
        big_count = await conn.fetchval(
            "SELECT count(*) FROM message WHERE thread_id = $1 AND NOT deleted", BIG_THREAD_ID
        )
        # Far back: among the oldest tenth of the big thread, with a full page before it.
        deep_ids = [
            r[0]
            for r in await conn.fetch(
                "SELECT id FROM message WHERE thread_id = $1 AND NOT deleted "
                "ORDER BY id OFFSET 60 LIMIT $2",
                BIG_THREAD_ID,
                max(1, big_count // 10 - 60),
            )
        ]
        pairs = [
            (r[0], r[1])
            for r in await conn.fetch(
                "SELECT thread_id, user_id FROM membership WHERE NOT deleted ORDER BY id"
            )
        ]
    finally:
        await conn.close()

    tokens: dict[int, str] = {}

    def tok(uid: int) -> str:
        if uid not in tokens:
            tokens[uid] = token_for(uid)
        return tokens[uid]

    words = ["hello", "ok", "thanks", "see you", "tomorrow", "the deploy is done", "lunch"]
    lines: dict[str, list[str]] = defaultdict(list)
    for uid in rng.sample(user_ids, min(1000, len(user_ids))):
        lines["users_me"].append(f"GET\t/api/users/me\t{tok(uid)}\t\t")
        form = f"username=user{uid}%40example.com&password={PASSWORD}"
        lines["token"].append(f"POST\t/api/auth/token\t\tapplication/x-www-form-urlencoded\t{form}")
    for uid in rng.sample(with_threads, min(1000, len(with_threads))):
        lines["threads"].append(f"GET\t/api/threads\t{tok(uid)}\t\t")
    path = f"/api/threads/{BIG_THREAD_ID}/messages"
    for uid in big_members:
        lines["newest"].append(f"GET\t{path}\t{tok(uid)}\t\t")
    for i, before in enumerate(rng.sample(deep_ids, min(500, len(deep_ids)))):
        uid = big_members[i % len(big_members)]
        lines["deep"].append(f"GET\t{path}?before={before}\t{tok(uid)}\t\t")
    for thread_id, uid in rng.sample(pairs, min(2000, len(pairs))):
        body = json.dumps({"body": " ".join(rng.choices(words, k=rng.randint(2, 20)))})
        lines["post"].append(
            f"POST\t/api/threads/{thread_id}/messages\t{tok(uid)}\tapplication/json\t{body}"
        )
    files = {}
    for name, rows in lines.items():
        files[name] = workdir / f"{tag}-{name}.tsv"
        files[name].write_text("\n".join(rows) + "\n")
    return files


# --------------------------------------------------------------------------- servers


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def free_port(port: int) -> int:
    """`port`, or the next one nobody listens on (another bench may be running)."""
    for candidate in range(port, port + 200, 4):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return candidate
    raise RuntimeError(f"no free port from {port}")


class Server:
    def __init__(
        self, kind: str, db: str, port: int, cpu: str, workdir: Path, label: str = ""
    ) -> None:
        self.kind, self.db, self.port, self.cpu = kind, db, port, cpu
        self.label = label or kind
        self.log_path = workdir / f"server-{self.label}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid  # taskset execs the server: same pid

    def start(self) -> "Server":
        target = ["-m", "app"] if self.kind == "app" else [str(BENCH / "ceiling.py")]
        with self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cpu, PY, *target],
                cwd=APP_ROOT,
                env=app_env(self.db, self.port),
                stdout=subprocess.DEVNULL,  # uvicorn's access log, one line a request
                stderr=err,
                start_new_session=True,
            )
        SERVER_PIDS.add(self.proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited:\n{self.log_tail()}")
            with (
                suppress(OSError),
                urllib.request.urlopen(self.url + "/api/health", timeout=1) as r,
            ):
                if r.status == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.label} did not start:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def rss_mib(self) -> float:
        return read_status(self.pid).get("VmRSS", 0) / 1024

    def hwm_mib(self) -> float:
        return read_status(self.pid).get("VmHWM", 0) / 1024


CLK_TCK = os.sysconf("SC_CLK_TCK")
OURS = {"postgres", "wrk", "taskset", "py-spy"}
SERVER_PIDS: set[int] = set()  # ours, idle or not


def cpu_times() -> dict[int, tuple[str, int]]:
    """(comm, utime + stime in ticks) of every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{entry.name}/stat").read_text()
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            out[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def foreign_load(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], seconds: float, *own: int
) -> float:
    """Cores used meanwhile by processes that are not this bench's (servers, wrk,
    PostgreSQL, the harness): other people's work on a shared machine skews the numbers."""
    skip = {os.getpid(), *SERVER_PIDS, *own}
    ticks = 0
    for pid, (comm, t) in after.items():
        if pid in skip or comm in OURS:
            continue
        prev = before.get(pid)
        ticks += t - prev[1] if prev and prev[0] == comm else 0
    return ticks / CLK_TCK / max(seconds, 1e-9)


@contextmanager
def rss_sampler(pid: int, every: float = 0.05) -> Iterator[dict[str, float]]:
    """The peak VmRSS (MiB) of `pid` while the block runs."""
    result = {"peak_mib": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = read_status(pid).get("VmRSS", 0) / 1024
            result["peak_mib"] = max(result["peak_mib"], rss)
            stop.wait(every)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield result
    finally:
        stop.set()
        t.join()


# --------------------------------------------------------------------------- wrk


def wrk_command(
    url: str, requests_file: Path, connections: int, duration: float, cpu: str, **kw: Any
) -> list[str]:
    timeout = kw.get("timeout", 10)
    return [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "-s",
        str(LUA),
        url,
        "--",
        str(requests_file),
    ]


def parse_wrk(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH "):
            r: dict[str, Any] = json.loads(line[6:])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
            r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
            return r
    raise RuntimeError(f"no BENCH line in wrk output:\n{stdout}")


def run_wrk(
    server: Server, requests_file: Path, connections: int, duration: float, cpu: str, **kw: Any
) -> dict[str, Any]:
    cmd = wrk_command(server.url, requests_file, connections, duration, cpu, **kw)
    before, t0 = cpu_times(), time.monotonic()
    with rss_sampler(server.pid) as mem:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    others = foreign_load(before, cpu_times(), time.monotonic() - t0, *kw.get("own", ()))
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}\n{out.stdout}")
    result = parse_wrk(out.stdout)
    result["peak_mib"] = mem["peak_mib"]
    result["others"] = others
    if server.proc is not None and server.proc.poll() is not None:
        raise RuntimeError(f"{server.label} died under load:\n{server.log_tail()}")
    return result


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; errors added up; the highest peak memory."""
    if not results:
        return {}
    return {
        "rps": statistics.median(r["rps"] for r in results),
        "p50_ms": statistics.median(r["p50_us"] for r in results) / 1000,
        "p99_ms": statistics.median(r["p99_us"] for r in results) / 1000,
        "max_ms": max(r["max_us"] for r in results) / 1000,
        "errors": sum(r["errors"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "peak_mib": max(r.get("peak_mib", 0.0) for r in results),
        "runs": [round(r["rps"], 1) for r in results],
        "status_errors": sum(r["status"] for r in results),
        "timeouts": sum(r["timeout"] for r in results),
        "others": statistics.mean(r.get("others", 0.0) for r in results),
    }


# --------------------------------------------------------------------------- blocks


def main_block(
    a: argparse.Namespace, app: Server, ceiling: Server | None, files: dict[str, Path]
) -> dict[str, Any]:
    """Each scenario's runs in turn, app and ceiling alternating within a run. Scenarios go
    in SCENARIOS order, so every read run sees the seeded data and the POST runs come
    after them (their messages then stay for the checks that follow)."""
    raw: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    scenarios = [sc for sc in SCENARIOS.values() if sc.name in a.scenarios]
    for sc in scenarios:
        for run in range(a.runs):
            servers = [app] + ([ceiling] if ceiling and sc.ceiling else [])
            if run % 2:
                servers.reverse()  # alternate who goes first, against drift
            for srv in servers:
                if run == 0 and a.warmup > 0:
                    run_wrk(srv, files[sc.name], a.connections, a.warmup, a.wrk_cpu)
                r = run_wrk(srv, files[sc.name], a.connections, a.duration, a.wrk_cpu)
                raw[(sc.name, srv.kind)].append(r)
                log(
                    f"run {run + 1}/{a.runs} {sc.name:9} {srv.kind:8} {r['rps']:8.1f} req/s  "
                    f"p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  "
                    f"errors {r['errors']}  peak {r['peak_mib']:.0f} MiB  "
                    f"others {r['others']:.2f} cores"
                )
    out = {}
    for sc in scenarios:
        ours = summarize(raw[(sc.name, "app")])
        ceil = summarize(raw[(sc.name, "ceiling")])
        ratio = ours["rps"] / ceil["rps"] if ceil else None
        out[sc.name] = {
            "label": sc.label,
            "ours": ours,
            "ceiling": ceil,
            "ratio": ratio,
            "target": sc.target,
            "pass": None if ratio is None or sc.target is None else ratio >= sc.target,
        }
    return out


def c256_block(
    a: argparse.Namespace,
    app: Server,
    ceiling: Server | None,
    files: dict[str, Path],
    main: dict[str, Any],
) -> dict[str, Any]:
    """256 connections: no errors, no request slower than --stall-seconds (wrk's timeout
    is set twice as long, so a slow request is seen and not only counted). The ceiling
    runs the same, for comparison only."""
    out: dict[str, Any] = {}
    for name in [n for n in SCENARIOS if n in a.scenarios and n != "token"]:
        row: dict[str, Any] = {}
        for srv in [app] + ([ceiling] if ceiling else []):
            kw = {"timeout": 2 * a.stall_seconds}
            if a.warmup > 0:
                run_wrk(srv, files[name], 256, a.warmup, a.wrk_cpu, **kw)
            s = summarize([run_wrk(srv, files[name], 256, a.duration, a.wrk_cpu, **kw)])
            s["pass"] = s["errors"] == 0 and s["max_ms"] < a.stall_seconds * 1000
            base = main.get(name, {}).get("ours" if srv.kind == "app" else "ceiling", {}).get("rps")
            s["vs_c32"] = s["rps"] / base if base else None
            row[srv.kind] = s
            log(
                f"c=256 {name:9} {srv.kind:8} {s['rps']:8.1f} req/s  p50 {s['p50_ms']:7.2f} ms  "
                f"p99 {s['p99_ms']:7.2f} ms  max {s['max_ms']:7.1f} ms  errors {s['errors']}  "
                f"others {s['others']:.2f} cores"
            )
        out[name] = row
    return out


def scale_block(
    a: argparse.Namespace,
    big: Server,
    small: Server,
    big_files: dict[str, Path],
    small_files: dict[str, Path],
) -> dict[str, Any]:
    raw: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for run in range(a.runs):
        for name in ("newest", "deep"):
            pairs = [(big, big_files), (small, small_files)]
            if run % 2:
                pairs.reverse()
            for srv, files in pairs:
                if run == 0 and a.warmup > 0:
                    run_wrk(srv, files[name], a.connections, a.warmup, a.wrk_cpu)
                r = run_wrk(srv, files[name], a.connections, a.duration, a.wrk_cpu)
                raw[(name, srv.label)].append(r)
                log(
                    f"scale run {run + 1} {name:7} {srv.label:6} {r['rps']:8.1f} req/s  "
                    f"p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  "
                    f"others {r['others']:.2f} cores"
                )
    out = {}
    for name in ("newest", "deep"):
        b, s = summarize(raw[(name, big.label)]), summarize(raw[(name, small.label)])
        slower = s["rps"] / b["rps"]
        p50 = b["p50_ms"] / s["p50_ms"]
        out[name] = {"big": b, "small": s, "rps_ratio": slower, "p50_ratio": p50}
        out[name]["pass"] = slower <= 1.25 and p50 <= 1.25
    return out


def login_block(a: argparse.Namespace, app: Server, files: dict[str, Path]) -> dict[str, Any]:
    idle, busy, token = [], [], []
    for run in range(a.runs):
        if run == 0 and a.warmup > 0:
            run_wrk(app, files["users_me"], a.connections, a.warmup, a.wrk_cpu)
        idle.append(run_wrk(app, files["users_me"], a.connections, a.duration, a.wrk_cpu))
        hammer = subprocess.Popen(
            wrk_command(app.url, files["token"], 8, a.duration + 3, a.wrk_cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)  # the 8 logins are in flight
            busy.append(run_wrk(app, files["users_me"], a.connections, a.duration, a.wrk_cpu))
        finally:
            stdout, _ = hammer.communicate(timeout=a.duration + 60)
        token.append(parse_wrk(stdout))
        log(
            f"login run {run + 1}: users/me p99 idle {idle[-1]['p99_us'] / 1000:.2f} ms, "
            f"with 8 logins {busy[-1]['p99_us'] / 1000:.2f} ms "
            f"({busy[-1]['rps']:.0f} req/s; logins {token[-1]['rps']:.1f}/s; "
            f"others {busy[-1]['others']:.2f} cores)"
        )
    i, b, t = summarize(idle), summarize(busy), summarize(token)
    ratio = b["p99_ms"] / i["p99_ms"]
    return {"idle": i, "busy": b, "token": t, "p99_ratio": ratio, "pass": ratio < 2.0}


def memory_block(
    a: argparse.Namespace, make_server: Callable[[], Server], files: dict[str, Path]
) -> dict[str, Any]:
    """RSS of a fresh app process after FIRST and after TOTAL requests of users/me, served
    in wrk runs of up to a minute each (wrk stops on time, not on a count)."""
    first, total = a.memory_requests
    app = make_server().start()
    try:
        marks = []
        done, rps, t0, errors, others = 0, 0.0, time.monotonic(), 0, []
        for upto in (first, total):
            while done < upto:
                seconds = 5.0 if not rps else min(60.0, max(1.0, (upto - done) / rps))
                r = run_wrk(app, files["users_me"], a.connections, seconds, a.wrk_cpu)
                done, rps, errors = done + r["requests"], r["rps"], errors + r["errors"]
                others.append(r["others"])
            time.sleep(1.0)
            rss = app.rss_mib()
            marks.append(
                {
                    "requests": done,
                    "rss_mib": rss,
                    "hwm_mib": app.hwm_mib(),
                    "rps": rps,
                    "errors": errors,
                    "minutes": (time.monotonic() - t0) / 60,
                    "others": statistics.mean(others),
                }
            )
            log(
                f"memory: after {done:,} requests of users/me RSS {rss:.1f} MiB "
                f"({rps:.0f} req/s, {errors} errors, others {marks[-1]['others']:.2f} cores)"
            )
    finally:
        app.stop()
    growth = marks[1]["rss_mib"] / marks[0]["rss_mib"]
    return {"marks": marks, "growth": growth, "pass": growth <= 1.10}


# --------------------------------------------------------------------------- profile


IDLE_LEAVES = ("Condition.wait (threading.py", "_wait_for_tstate_lock", "select (selectors.py")


def categorize(frame: str) -> str:
    """A py-spy frame "function (path:line)" -> the library it runs in."""
    m = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    path = m.group(1) if m else frame
    if not frame.strip():
        return "native, no Python frame"
    rules = [
        ("sqlalchemy/orm", "SQLAlchemy ORM"),
        ("sqlalchemy/dialects", "SQLAlchemy asyncpg dialect"),
        ("sqlalchemy/util/concurrency", "SQLAlchemy greenlet bridge"),
        ("sqlalchemy/ext/asyncio", "SQLAlchemy asyncio glue"),
        ("sqlalchemy/engine", "SQLAlchemy Core engine/result"),
        ("sqlalchemy/sql", "SQLAlchemy Core statement build/cache key"),
        ("sqlalchemy/pool", "SQLAlchemy pool"),
        ("sqlalchemy", "SQLAlchemy other"),
        ("sqlmodel", "SQLModel"),
        ("asyncpg/connect_utils", "asyncpg connect (pool churn)"),
        ("asyncpg", "asyncpg (protocol, I/O)"),
        ("ssl.py", "asyncpg connect (pool churn)"),
        ("email_validator", "email-validator (EmailStr)"),
        ("pydantic", "pydantic"),
        ("jose", "python-jose (JWT)"),
        ("cryptography", "python-jose (JWT)"),
        ("ecdsa", "python-jose (JWT)"),
        ("fastapi", "FastAPI (routing, dependencies, encoding)"),
        ("starlette", "Starlette"),
        ("anyio", "anyio (threadpool, cancel scopes)"),
        ("threading.py", "threadpool hand-off"),
        ("queue.py", "threadpool hand-off"),
        ("concurrent/futures", "threadpool hand-off"),
        ("uvicorn", "uvicorn/httptools"),
        ("httptools", "uvicorn/httptools"),
        ("uvloop", "event loop (uvloop/asyncio)"),
        ("asyncio", "event loop (uvloop/asyncio)"),
        ("logging", "logging (request log)"),
        ("uuid.py", "uuid4 (request id)"),
        ("json", "json"),
        ("/app/", "app code"),
    ]
    for needle, name in rules:
        if needle in path:
            return name
    return "other: " + (Path(path).name if "/" in path else path)


PROFILE_GROUPS = {
    "SQLAlchemy + SQLModel (ORM, Core, greenlet bridge, pool)": ("SQLAlchemy", "SQLModel"),
    "FastAPI + Starlette + anyio (routing, dependencies, threadpool)": (
        "FastAPI",
        "Starlette",
        "anyio",
        "threadpool",
    ),
    "uvicorn, httptools, event loop, native code": ("uvicorn", "event loop", "native"),
    "asyncpg (protocol, socket I/O)": ("asyncpg (protocol",),
    "asyncpg new connections (pool overflow churn)": ("asyncpg connect",),
    "pydantic + email-validator": ("pydantic", "email-validator"),
    "python-jose (JWT)": ("python-jose",),
    "request log (logging, json, uuid4)": ("logging", "uuid4", "json"),
}
# Inclusive shares of a few functions; lower bounds, since stacks that run under
# SQLAlchemy's greenlets start at the greenlet and lose the frames above it.
PROFILE_FUNCTIONS = {
    "FastAPI solve_dependencies": "solve_dependencies (fastapi/dependencies/utils.py",
    "get_current_user (token + user row)": "get_current_user (app/security.py",
    "Session.flush (unit of work)": "Session.flush (sqlalchemy/orm/session.py",
    "SQLModel.model_validate": "SQLModel.model_validate (sqlmodel/main.py",
    "thread_views (members, ThreadOut)": "thread_views (app/routers/threads.py",
    "argon2 (verify_password)": "verify_password (app/security.py",
}


def summarize_profile(collapsed: Path) -> dict[str, Any]:
    """Self time grouped by library, and inclusive shares of a few functions, from
    py-spy's raw (collapsed) stacks; idle threads left out."""
    groups: dict[str, int] = defaultdict(int)
    funcs: dict[str, int] = defaultdict(int)
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        if frames and frames[0].startswith(("thread ", "process ")):
            frames = frames[1:]
        if frames[-1].strip().startswith(IDLE_LEAVES):
            continue
        total += count
        leaf = categorize(frames[-1])
        group = next(
            (g for g, prefixes in PROFILE_GROUPS.items() if leaf.startswith(prefixes)),
            "other: " + leaf.removeprefix("other: "),
        )
        groups[group] += count
        for name, needle in PROFILE_FUNCTIONS.items():
            if any(needle in f for f in frames):
                funcs[name] += count

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(k, 100 * v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])]

    return {"samples": total, "groups": pct(groups), "functions": pct(funcs)}


def profile_block(a: argparse.Namespace, app: Server, files: dict[str, Path]) -> dict[str, Any]:
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        log("py-spy is missing (.venv/bin/pip install py-spy): no profile")
        return {}
    out = {}
    outdir = BENCH / "out"
    outdir.mkdir(exist_ok=True)
    for name in a.scenarios:
        d = max(3, round(a.duration))
        hammer = subprocess.Popen(
            wrk_command(app.url, files[name], a.connections, d + 4, a.wrk_cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        raw = outdir / f"profile-{name}.txt"
        speedscope = outdir / f"profile-{name}.speedscope.json"
        # --gil: the thread holding the GIL only (the idle threadpool is left out); blocking
        # mode (the default) pauses the server per sample, for consistent stacks.
        spy = ["taskset", "-c", a.wrk_cpu, str(pyspy), "record", "--gil", "-r", "100"]
        subprocess.run(
            [*spy, "-d", str(d), "-p", str(app.pid), "-f", "raw", "-o", str(raw)],
            capture_output=True,
            check=False,
        )
        subprocess.run(
            [*spy, "-d", "2", "-p", str(app.pid), "-f", "speedscope", "-o", str(speedscope)],
            capture_output=True,
            check=False,
        )
        hammer.communicate(timeout=d + 60)
        if raw.exists():
            out[name] = summarize_profile(raw)
            log(f"profile {name}: {out[name]['samples']} samples -> {raw}")
    return out


# --------------------------------------------------------------------------- report


def fmt(v: Any, spec: str = ".1f") -> str:
    if v is None:
        return "—"
    return format(v, spec)


def report(res: dict[str, Any]) -> str:
    lines = [f"Machine: {res['machine']}", "", f"Setup: {res['setup']}", ""]
    main = res.get("main", {})
    if main:
        lines += [
            "| scenario | ours req/s | p50 ms | p99 ms | errors | peak MiB "
            "| ceiling req/s | p50 ms | p99 ms | errors | peak MiB | ours ÷ ceiling | target "
            "| others |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|",
        ]
        for row in main.values():
            o, c = row["ours"], row["ceiling"] or {}
            target = "—"
            if row["target"] is not None and row["ratio"] is not None:
                mark = "ok" if row["pass"] else "MISS"
                target = f"≥ {row['target']:.0%} {mark}"
            lines.append(
                f"| {row['label']} | {fmt(o['rps'])} | {fmt(o['p50_ms'], '.2f')} "
                f"| {fmt(o['p99_ms'], '.2f')} | {o['errors']} | {fmt(o['peak_mib'], '.0f')} "
                f"| {fmt(c.get('rps'))} | {fmt(c.get('p50_ms'), '.2f')} "
                f"| {fmt(c.get('p99_ms'), '.2f')} | {fmt(c.get('errors'), 'd')} "
                f"| {fmt(c.get('peak_mib'), '.0f')} "
                f"| {fmt(row['ratio'] and 100 * row['ratio'], '.0f')}% | {target} "
                f"| {fmt(max(o['others'], c.get('others', 0.0)), '.2f')} |"
            )
        lines += [
            "",
            "p50/p99: medians over the runs; errors: all runs added up (socket errors, "
            "timeouts, HTTP status >= 400); peak MiB: the server's highest RSS; others: "
            "cores used during the runs by processes that are not the bench's (a shared "
            "machine: anything above ~0.1 skews the numbers).",
            "",
        ]
    c256 = res.get("c256")
    if c256:
        lines += [
            "256 connections (target, ours: no errors and no stall = no request over "
            f"{res['stall_seconds']} s); vs c=32: req/s kept from the main table; the "
            "ceiling's numbers are for comparison:",
            "",
            "| scenario | req/s | vs c=32 | p50 ms | p99 ms | max ms | errors | peak MiB | "
            "| ceiling req/s | p99 ms | max ms | errors | others |",
            "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|",
        ]
        for name, row in c256.items():
            s, c = row["app"], row.get("ceiling") or {}
            lines.append(
                f"| {SCENARIOS[name].label} | {fmt(s['rps'])} "
                f"| {fmt(s['vs_c32'] and 100 * s['vs_c32'], '.0f')}% "
                f"| {fmt(s['p50_ms'], '.2f')} | {fmt(s['p99_ms'], '.2f')} "
                f"| {fmt(s['max_ms'], '.0f')} | {s['errors']} | {fmt(s['peak_mib'], '.0f')} "
                f"| {'ok' if s['pass'] else 'MISS'} | {fmt(c.get('rps'))} "
                f"| {fmt(c.get('p99_ms'), '.2f')} | {fmt(c.get('max_ms'), '.0f')} "
                f"| {fmt(c.get('errors'), 'd')} "
                f"| {fmt(max(s['others'], c.get('others', 0.0)), '.2f')} |"
            )
        lines.append("")
    scale = res.get("scale")
    if scale:
        big_n, small_n = res["datasets"]["big"], res["datasets"]["small"]
        lines += [
            f"Pages at {big_n:,} vs {small_n:,} messages (ours; target: within 1.25x):",
            "",
            f"| page | req/s @{big_n:,} | p50 ms | req/s @{small_n:,} | p50 ms "
            "| slowdown (req/s) | slowdown (p50) | | others |",
            "|---|--:|--:|--:|--:|--:|--:|---|--:|",
        ]
        for name, s in scale.items():
            lines.append(
                f"| {name} | {fmt(s['big']['rps'])} | {fmt(s['big']['p50_ms'], '.2f')} "
                f"| {fmt(s['small']['rps'])} | {fmt(s['small']['p50_ms'], '.2f')} "
                f"| {s['rps_ratio']:.2f}x | {s['p50_ratio']:.2f}x "
                f"| {'ok' if s['pass'] else 'MISS'} "
                f"| {fmt(max(s['big']['others'], s['small']['others']), '.2f')} |"
            )
        lines.append("")
    login = res.get("login")
    if login:
        lines += [
            "users/me while 8 connections hammer POST /api/auth/token (target: p99 < 2x idle):",
            "",
            "| | users/me req/s | p50 ms | p99 ms | logins/s | others |",
            "|---|--:|--:|--:|--:|--:|",
            f"| idle | {fmt(login['idle']['rps'])} | {fmt(login['idle']['p50_ms'], '.2f')} "
            f"| {fmt(login['idle']['p99_ms'], '.2f')} | — "
            f"| {fmt(login['idle']['others'], '.2f')} |",
            f"| with 8 logins | {fmt(login['busy']['rps'])} "
            f"| {fmt(login['busy']['p50_ms'], '.2f')} | {fmt(login['busy']['p99_ms'], '.2f')} "
            f"| {fmt(login['token']['rps'])} | {fmt(login['busy']['others'], '.2f')} |",
            "",
            f"p99 ratio: {login['p99_ratio']:.2f}x — {'ok' if login['pass'] else 'MISS'}",
            "",
        ]
    mem = res.get("memory")
    if mem:
        m0, m1 = mem["marks"]
        lines += [
            "Server memory, a fresh app process serving users/me (target: within 10%):",
            "",
            f"- after {m0['requests']:,} requests: RSS {m0['rss_mib']:.1f} MiB "
            f"({m0['minutes']:.1f} min)",
            f"- after {m1['requests']:,} requests: RSS {m1['rss_mib']:.1f} MiB "
            f"(peak {m1['hwm_mib']:.1f} MiB; {m1['minutes']:.1f} min, {m1['rps']:.0f} req/s, "
            f"{m1['errors']} errors)",
            f"- growth: {100 * (mem['growth'] - 1):+.1f}% — {'ok' if mem['pass'] else 'MISS'}",
            "",
        ]
    prof = res.get("profile")
    if prof:
        lines += [
            "Profile of our app (py-spy --gil: self time by library, % of on-CPU samples; "
            "then inclusive shares of some functions, lower bounds):",
            "",
        ]
        for name, p in prof.items():
            groups = ", ".join(f"{k} {v:.0f}%" for k, v in p["groups"] if v >= 1)
            lines.append(f"- {name} ({p['samples']} samples): {groups}")
            funcs = ", ".join(f"{k} {v:.0f}%" for k, v in p["functions"] if v >= 1)
            if funcs:
                lines.append(f"  - {funcs}")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Load harness: our app vs a raw-asyncpg ceiling on PostgreSQL, with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="small data, 1 run, 2 s per scenario")
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma-separated, of: " + ", ".join(SCENARIOS),
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per scenario run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up, first run")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario; medians reported")
    p.add_argument("--connections", "-c", type=int, default=32)
    p.add_argument(
        "--checks",
        default=",".join(CHECKS),
        help="extra checks, comma-separated, of: " + ", ".join(CHECKS) + " (or none)",
    )
    p.add_argument("--no-ceiling", action="store_true", help="measure our app only")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1_000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--small-messages", type=int, default=10_000, help="the scale check's data")
    p.add_argument(
        "--memory-requests",
        default="100000,1000000",
        help="users/me requests after which the memory check reads RSS: FIRST,TOTAL",
    )
    p.add_argument("--stall-seconds", type=int, default=5, help="a slower request stalls")
    p.add_argument("--profile", action="store_true", help="also py-spy our app per scenario")
    p.add_argument("--reuse", action="store_true", help="keep a database seeded the same way")
    p.add_argument("--keep", action="store_true", help="leave the bench databases in place")
    p.add_argument(
        "--snapshot",
        action="store_true",
        help="run a copy of app/ and migrations/ taken at the start (edits during the run "
        "do not reach it)",
    )
    p.add_argument(
        "--db-prefix",
        default="",
        help="database names: PREFIXmain, PREFIXsmall (default: bench_PID_, or bench_ "
        "with --reuse/--keep)",
    )
    p.add_argument(
        "--port", type=int, default=18080, help="first of 4 ports (a busy one is skipped)"
    )
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--wrk-cpu", default="1")
    p.add_argument("--out", default=str(BENCH / "out"), help="where results are written")
    a = p.parse_args()
    if a.quick:
        defaults = {
            "duration": 2.0,
            "warmup": 1.0,
            "runs": 1,
            "users": 1_000,
            "threads": 100,
            "messages": 50_000,
            "memory_requests": "3000,15000",
        }
        for k, v in defaults.items():
            if getattr(a, k) == p.get_default(k):
                setattr(a, k, v)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    unknown = set(a.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    a.checks = [] if a.checks == "none" else [c.strip() for c in a.checks.split(",") if c]
    if set(a.checks) - set(CHECKS):
        p.error(f"unknown checks: {', '.join(sorted(set(a.checks) - set(CHECKS)))}")
    first, total = (int(x) for x in str(a.memory_requests).split(","))
    a.memory_requests = (first, total)
    return a


def main() -> None:
    # Clean up (servers, databases) on Ctrl-C and on kill, even when started with `&`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    a = parse_args()
    ensure_tools()
    machine = machine_line()
    log(machine)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    global APP_ROOT
    if a.snapshot:
        APP_ROOT = snapshot(workdir)
    check_app_imports()
    # Runs at the same time must not share databases: a fresh run's names carry its pid;
    # --reuse/--keep use fixed names, so a later run can find them.
    prefix = a.db_prefix or ("bench_" if a.reuse or a.keep else f"bench_{os.getpid()}_")
    big_db, small_db = f"{prefix}main", f"{prefix}small"
    started = time.monotonic()
    servers: list[Server] = []
    res: dict[str, Any] = {
        "machine": machine,
        "command": " ".join(["bench/run.py", *sys.argv[1:]]),
        "stall_seconds": a.stall_seconds,
        "datasets": {"big": a.messages, "small": a.small_messages},
    }
    res["setup"] = (
        f"1 uvicorn worker pinned with taskset to cpu {a.server_cpu} (the ceiling too, "
        f"one at a time under load), wrk -t1 pinned to cpu {a.wrk_cpu}, c={a.connections}, "
        f"{a.duration:g} s per run, median of {a.runs} run(s); PostgreSQL is not pinned and "
        f"shares both cores. Data: {a.users:,} users, {a.threads:,} threads of 2-50 members, "
        f"{a.messages:,} messages ({a.messages // 10:,} in the big thread)."
    )
    try:
        hashed = password_hash()
        need_small = "scale" in a.checks
        asyncio.run(
            prepare_db(
                big_db,
                users=a.users,
                threads=a.threads,
                messages=a.messages,
                hashed=hashed,
                reuse=a.reuse,
            )
        )
        if need_small:
            asyncio.run(
                prepare_db(
                    small_db,
                    users=a.users,
                    threads=a.threads,
                    messages=a.small_messages,
                    hashed=hashed,
                    reuse=a.reuse,
                )
            )
        big_files = asyncio.run(write_request_files(big_db, workdir, "big"))
        small_files = (
            asyncio.run(write_request_files(small_db, workdir, "small")) if need_small else {}
        )

        def server(kind: str, db: str, port: int, label: str = "") -> Server:
            s = Server(kind, db, free_port(port), a.server_cpu, workdir, label)
            servers.append(s)
            return s

        app = server("app", big_db, a.port).start()
        ceiling = None if a.no_ceiling else server("ceiling", big_db, a.port + 1).start()
        log(f"app pid {app.pid}" + (f", ceiling pid {ceiling.pid}" if ceiling else ""))

        res["main"] = main_block(a, app, ceiling, big_files)
        if "c256" in a.checks:
            res["c256"] = c256_block(a, app, ceiling, big_files, res["main"])
        if ceiling:
            ceiling.stop()
        if "login" in a.checks and "users_me" in big_files:
            res["login"] = login_block(a, app, big_files)
        if "scale" in a.checks:
            app.label = "big"
            small = server("app", small_db, a.port + 2, "small").start()
            res["scale"] = scale_block(a, app, small, big_files, small_files)
            small.stop()
        if a.profile:
            res["profile"] = profile_block(a, app, big_files)
        app.stop()
        if "memory" in a.checks:
            res["memory"] = memory_block(
                a, lambda: server("app", big_db, a.port + 3, "memory"), big_files
            )
    finally:
        for s in servers:
            s.stop()
        if not a.keep:
            with suppress(Exception):
                asyncio.run(drop_db(big_db))
                asyncio.run(drop_db(small_db))
        shutil.rmtree(workdir, ignore_errors=True)
    res["minutes"] = (time.monotonic() - started) / 60
    text = report(res)
    print()
    print(text)
    print(f"({res['minutes']:.1f} min)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "last.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "last.md").write_text(f"Command: `{res['command']}`\n\n{text}\n")
    log(f"results in {out / 'last.md'} and {out / 'last.json'}")


if __name__ == "__main__":
    main()
