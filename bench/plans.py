"""The SQL behind the page, search and mentions scenarios: each statement the app sends,
caught on its way to the driver, then EXPLAINed and timed on its own (bench/run.py)."""

import json
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
from harness import PG, app_env, python
from jose import jwt

STATEMENT_RUNS = 100  # timed runs of each statement the app sends, one after another
# The mentions feed of the most mentioned user: its first page, and the page after a cursor
# halfway down (request files of scenarios.py).
MENTIONS = ["mentions", "mentions_after"]


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
