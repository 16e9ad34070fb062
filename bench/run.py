"""Load harness: the app on PostgreSQL against a raw-asyncpg ceiling, driven by wrk.

    .venv/bin/python bench/run.py            # the full run (~17 min, 3 of them the 1M soak)
    .venv/bin/python bench/run.py --quick    # smoke test on small data (~2 min)
    .venv/bin/python bench/run.py --tree /tmp/before --scenarios post,post_hot --checks none

What it does, the options and the last results: bench/README.md. Its parts: harness.py
(servers, wrk, figures), scenarios.py (what is measured), plans.py (the SQL), report.py.
"""

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
VENV_PY = BENCH.parent / ".venv" / "bin" / "python"
if (
    __name__ == "__main__"
    and VENV_PY.exists()
    and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve()
):
    os.execv(VENV_PY, [str(VENV_PY), __file__, *sys.argv[1:]])  # asyncpg, jose live there
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from harness import (  # noqa: E402
    OUT,
    ROOT,
    SERVER_CPU,
    WRK_CPU,
    Run,
    clean_up_on_kill,
    database,
    ensure_tools,
    line,
    log,
    machine,
    measure,
    median,
    memory_mib,
    migrations,
    output,
    parse,
    password_hash,
    serving,
    settle,
    wrk,
)
from plans import MENTIONS, explain, statements  # noqa: E402
from report import report  # noqa: E402
from scenarios import FULL, QUICK, SCENARIOS, request_files  # noqa: E402
from seed import seed  # noqa: E402
from spy import recording  # noqa: E402

from tests.servers import Server  # noqa: E402

CHECKS = ("c256", "scale", "login", "memory")


class Bench:
    def __init__(self, a: argparse.Namespace, files: dict[str, dict[str, Path]]) -> None:
        self.a, self.files = a, files

    def run(
        self,
        server: Server,
        scenario: str,
        connections: int,
        warm: bool,
        db: str = "",
        alone: bool = True,
    ) -> Run:
        file = self.files[db or "main"][scenario]
        if warm:
            measure(server, file, connections, self.a.warmup, alone)
        return measure(server, file, connections, self.a.duration, alone)

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
            settle(app)
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as hammer:
                time.sleep(1.5)  # the 8 logins are in flight
                busy.append(self.run(app, "users_me", self.a.connections, False, alone=False))
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
    clean_up_on_kill()
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
            # The pages' statements (after all the POSTs: a plan regression shows), search's
            # and the mentions feed's.
            names = ["newest", "deep"] if "scale" in a.checks else []
            names += [n for n in a.scenarios if n.startswith("search_")]
            names += MENTIONS if "mentions" in a.scenarios else []
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
