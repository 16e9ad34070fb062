"""Where the server's CPU goes during a run: `bench/run.py --profile DIR`.

py-spy samples the app's process for the first measured run of each scenario and leaves
DIR/<scenario>.txt (collapsed stacks, for flamegraph.pl or speedscope) and
DIR/<scenario>.top.txt (the summary below). py-spy is no dependency of the project (a
native profiler): `pip install py-spy` anywhere, on PATH or named by PY_SPY. `--nonblocking`
does not pause the server to read its stacks; `--gil` keeps only samples that hold the GIL,
so the shares are of Python at work, not of waiting.
"""

import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Self time is charged to the library a frame belongs to: the first of these in its path.
AREAS = (
    "app/", "sqlalchemy", "asyncpg", "pydantic", "fastapi", "starlette", "uvicorn",
    "httptools", "jose", "json", "asyncio", "logging", "prometheus_client", "opentelemetry",
)  # fmt: skip


def py_spy() -> str:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not found:
        raise SystemExit("--profile needs py-spy: pip install py-spy (or PY_SPY=/path/to/it)")
    return found


@contextmanager
def recording(pid: int, out: Path, cpu: str) -> Iterator[None]:
    """Samples `pid` while the block runs, py-spy pinned to `cpu` (the load generator's:
    the server's core stays the server's)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["taskset", "-c", cpu, py_spy(), "record", "--pid", str(pid), "--rate", "250"]
    argv += ["--nonblocking", "--gil", "--format", "raw", "--output", str(out)]
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has and stops
        spy.wait(timeout=30)
    if out.exists():
        out.with_suffix(".top.txt").write_text(summary(out))


def area(frame: str) -> str:
    where = frame.rpartition("(")[2]
    return next((a.rstrip("/") for a in AREAS if a in where), "other")


def summary(collapsed: Path, top: int = 20) -> str:
    """Self time by library, then the app's own functions by time spent in them and below."""
    by_area: Counter[str] = Counter()
    in_app: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        by_area[area(frames[-1])] += n
        for frame in dict.fromkeys(f for f in frames if "app/" in f.rpartition("(")[2]):
            in_app[frame.split(" (")[0] + " " + frame.rpartition("/")[2].rstrip(")")] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples holding the GIL", "", "self time by library:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in by_area.most_common()]
    out += ["", "the app's functions, with what they call:"]
    out += [f"  {n / total:6.1%}  {name}" for name, n in in_app.most_common(top)]
    return "\n".join(out) + "\n"
