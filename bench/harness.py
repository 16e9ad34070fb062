"""What every bench script shares: the machine, PostgreSQL databases, the servers (the app
or the ceiling, pinned to one core), wrk runs and their figures, markdown tables."""

import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.helpers import PASSWORD
from tests.servers import Server, start

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(VENV_PY if VENV_PY.exists() else sys.executable)
PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "x" * 40
SERVER_CPU, WRK_CPU = "0", "1"
STALL_MS = 5000  # at 256 connections, a slower request is a stall
OUT = BENCH / "out"


def clean_up_on_kill() -> None:
    """Servers and databases are cleaned up on Ctrl-C and on kill, even when started
    with `&` (where SIGINT is ignored by default)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


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


def settle(server: Server) -> None:
    """Wait until the last run's connections are closed on the server's side. A new wrk
    that opens one on a port of theirs meanwhile waits seconds for it (SYN retries): at
    c=256 straight after another run, 1% of users/me requests took 5-6 s though the app
    served each in under 1 ms, and none did after a pause of 0.25 s."""
    port = server.base.rsplit(":", 1)[1]
    states = [
        w for s in ("established", "close-wait", "last-ack", "fin-wait-1") for w in ("state", s)
    ]
    deadline = time.monotonic() + 10
    while output("ss", "-tanH", *states, "sport", "=", f":{port}") and time.monotonic() < deadline:
        time.sleep(0.05)
    quiet(deadline)


def quiet(deadline: float) -> None:
    """Wait until the bench's servers are idle. A wrk run ends with `c` requests in flight,
    which their server still works through after wrk is gone (at c=256 a page's server, for
    0.6-1 s), on the cpu the next run's server shares: straight after a run, a c=256 page's
    p99 was 1.5-1.8 s although no request took over 0.7 s inside the app, and 0.7 s after a
    pause of 1 s."""
    servers = BENCH_PIDS - {os.getpid()}
    while time.monotonic() < deadline:
        before = cpu_ticks()
        time.sleep(0.25)
        after = cpu_ticks()
        busy = sum(after[p][1] - before[p][1] for p in servers if p in before and p in after)
        if busy / os.sysconf("SC_CLK_TCK") < 0.025:  # 10 % of a core
            return


def measure(
    server: Server, file: Path, connections: int, seconds: float, alone: bool = True
) -> Run:
    """One wrk run; `alone`: nothing else talks to the server (so it can settle first)."""
    if alone:
        settle(server)
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
