"""Message search on a seeded, migrated bench database: plans and latency of the app's own
search statement, for a common and a rare word, as a member of few threads and of many.

    flock /tmp/bench.lock .venv/bin/python bench/search.py [bench_main] --runs 200

The database must be at `alembic upgrade head` (the search index) and seeded (bench/seed.py);
nothing is written. The statement is the repository's (`Messages._search`, ordered and
limited as `Repository.keyset` does), compiled for asyncpg and run on one connection.
"""

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

import asyncpg

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("database", nargs="?", default="bench_main")
parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
parser.add_argument("--common", default="meeting", help="a word in many messages")
parser.add_argument("--rare", default="xylophone", help="a word in few or none")
parser.add_argument("--runs", type=int, default=200, help="timed runs per case")
parser.add_argument("--limit", type=int, default=50)
args = parser.parse_args()
DSN = f"{args.server}/{args.database}"
os.environ["DATABASE_URL"] = DSN  # the app's statements for PostgreSQL, not SQLite's

from sqlalchemy.dialects.postgresql import asyncpg as pg  # noqa: E402

from app.models.message import words  # noqa: E402
from app.repositories.messages import Messages, newest_first  # noqa: E402


def statement(limit: int) -> tuple[str, list[str], dict[str, Any]]:
    """SQL with $n placeholders, the names in their order, and the values compiled in."""
    stmt = Messages._search.order_by(newest_first.desc()).limit(limit + 1)
    compiled = stmt.compile(dialect=pg.dialect())  # type: ignore[no-untyped-call]
    return str(compiled), list(compiled.positiontup or []), dict(compiled.params)


async def members(conn: asyncpg.Connection) -> dict[str, int]:
    """A user of the fewest live threads and one of the most."""
    rows = await conn.fetch(
        "SELECT user_id, count(*) AS n FROM membership WHERE NOT deleted"
        " GROUP BY user_id ORDER BY n, user_id"
    )
    few, many = rows[0], rows[-1]
    print(
        f"few threads: user {few['user_id']} ({few['n']}); many: user {many['user_id']} "
        f"({many['n']})"
    )
    return {"few": few["user_id"], "many": many["user_id"]}


async def main() -> None:
    sql, names, fixed = statement(args.limit)
    conn = await asyncpg.connect(DSN)
    try:
        total = await conn.fetchval("SELECT count(*) FROM message")
        print(f"{args.database}: {total} messages\n{sql}\n")
        users = await members(conn)
        prepared = await conn.prepare(sql)
        report = []
        for word in (args.common, args.rare):
            for who, user_id in users.items():
                values = {**fixed, "q": " ".join(words(word)), "user_id": user_id}
                params = [values[n] for n in names]
                plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params)
                print(f"--- q={word!r}, member of {who} threads")
                print("\n".join(r[0] for r in plan))
                found = len(await prepared.fetch(*params))
                timings = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    await prepared.fetch(*params)
                    timings.append((time.perf_counter() - t0) * 1000)
                q = statistics.quantiles(timings, n=100)
                report.append((word, who, found, q[49], q[98]))
        print(f"\n{'q':<12} {'member of':<10} {'rows':>5} {'p50 ms':>8} {'p99 ms':>8}")
        for word, who, found, p50, p99 in report:
            print(f"{word:<12} {who:<10} {found:>5} {p50:>8.2f} {p99:>8.2f}")
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
