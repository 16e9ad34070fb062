"""Bulk seed of a bench database: users, threads with 2-50 members, messages.

Run by bench/run.py; on its own:

    .venv/bin/python bench/seed.py postgresql://postgres@127.0.0.1:5432/bench_x \
        --users 10000 --threads 1000 --messages 1000000 --hash '$argon2id$...'

The schema must exist (alembic upgrade head) and the tables be empty. Thread 1 is the big
thread: it holds `messages // 10` messages (100,000 of 1,000,000) and 50 members. The
other threads share the rest with a skewed (Pareto) distribution; message ids grow with
created_at over the last year, as in a real history.
"""

import argparse
import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta

import asyncpg

TEXT = (
    "the a to and of in is it you that for on was with he as I his they be at one "
    "have this from or had by hot word but what some we can out other were all there "
    "when up use your how said an each she which do their time if will way about many "
    "then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than "
    "call first who may down side been now find meeting tomorrow lunch deploy release "
    "review ticket bug fix ship thanks sounds good ok sure later today coffee call me "
    "back please check the logs"
)
WORDS = TEXT.split()

BIG_THREAD_ID = 1
BIG_THREAD_MEMBERS = 50


def sentence(rng: random.Random) -> str:
    n = max(1, int(rng.lognormvariate(2.2, 0.8)))  # median ~9 words, a long tail
    words = [rng.choice(WORDS) for _ in range(min(n, 120))]
    return (" ".join(words)).capitalize() + rng.choice(".!?")


async def seed(
    dsn: str,
    *,
    users: int,
    threads: int,
    messages: int,
    hashed_password: str,
    seed_value: int = 42,
    log: bool = True,
) -> dict[str, float]:
    rng = random.Random(seed_value)
    now = datetime.now(UTC).replace(microsecond=0)
    history_start = now - timedelta(days=365)
    timings: dict[str, float] = {}
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        # Users: one shared argon2 hash, so any seeded user can log in with the bench password.
        scopes = json.dumps(["regular"])
        user_rows = []
        for uid in range(1, users + 1):
            created = history_start - timedelta(minutes=rng.randint(1, 60 * 24 * 365))
            user_rows.append(
                (
                    uid,
                    created,
                    created,
                    False,
                    f"user{uid}@example.com",
                    f"User {uid}",
                    hashed_password,
                    scopes,
                    True,
                    0,
                )
            )
        await conn.copy_records_to_table(
            "user",
            records=user_rows,
            columns=[
                "id",
                "created_at",
                "updated_at",
                "deleted",
                "email",
                "full_name",
                "hashed_password",
                "scopes",
                "is_active",
                "token_version",
            ],
        )
        timings["users"] = time.perf_counter() - t0

        # Threads and their members.
        t0 = time.perf_counter()
        members: dict[int, list[int]] = {}
        for tid in range(1, threads + 1):
            k = BIG_THREAD_MEMBERS if tid == BIG_THREAD_ID else rng.randint(2, 50)
            members[tid] = rng.sample(range(1, users + 1), min(k, users))

        # Messages: the big thread gets a tenth, the rest a skewed share each.
        big_n = messages // 10 if threads > 1 else messages
        others = list(range(2, threads + 1))
        weights = [rng.paretovariate(1.1) for _ in others]
        thread_of: list[int] = [BIG_THREAD_ID] * big_n
        if others:
            thread_of += rng.choices(others, weights=weights, k=messages - big_n)
        rng.shuffle(thread_of)
        step = timedelta(days=364) / max(1, messages)
        bodies = [sentence(rng) for _ in range(2000)]
        ids_of: dict[int, list[int]] = {tid: [] for tid in members}
        message_rows = []
        append = message_rows.append
        choice, rand = rng.choice, rng.random
        for i, tid in enumerate(thread_of):
            mid = i + 1
            created = history_start + step * i
            ids_of[tid].append(mid)
            r = rand()
            append(
                (
                    mid,
                    created,
                    created,
                    r < 0.01,  # a few deleted
                    tid,
                    choice(members[tid]),
                    created + timedelta(minutes=3) if r > 0.98 else None,  # a few edited
                    choice(bodies),
                    f"c{mid}" if r < 0.5 else None,  # half the clients send a client_id
                )
            )
        timings["generate"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        thread_rows = []
        first_at: dict[int, datetime] = {}
        for tid in members:
            ids = ids_of[tid]
            first = message_rows[ids[0] - 1][1] if ids else now - timedelta(days=rng.randint(0, 30))
            created = first - timedelta(minutes=rng.randint(1, 600))
            first_at[tid] = created
            last = message_rows[ids[-1] - 1][1] if ids else None
            title = None if rng.random() < 0.3 else f"Thread {tid}: {rng.choice(bodies)[:60]}"
            thread_rows.append((tid, created, last or created, False, title, members[tid][0], last))
        await conn.copy_records_to_table(
            "thread",
            records=thread_rows,
            columns=[
                "id",
                "created_at",
                "updated_at",
                "deleted",
                "title",
                "owner_id",
                "last_message_at",
            ],
        )

        membership_rows = []
        mid = 0
        for tid, uids in members.items():
            ids = ids_of[tid]
            for uid in uids:
                mid += 1
                # Most members are caught up; some are a few messages behind, a few far behind.
                r = rng.random()
                if not ids:
                    last_read = 0
                elif r < 0.6:
                    last_read = ids[-1]
                elif r < 0.95:
                    last_read = ids[max(0, len(ids) - 1 - rng.randint(1, 50))]
                else:
                    last_read = ids[max(0, len(ids) - 1 - rng.randint(50, 1000))]
                joined = first_at[tid]
                membership_rows.append((mid, joined, joined, False, tid, uid, last_read))
        await conn.copy_records_to_table(
            "membership",
            records=membership_rows,
            columns=[
                "id",
                "created_at",
                "updated_at",
                "deleted",
                "thread_id",
                "user_id",
                "last_read_message_id",
            ],
        )
        timings["threads+memberships"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        chunk = 200_000
        for start in range(0, len(message_rows), chunk):
            await conn.copy_records_to_table(
                "message",
                records=message_rows[start : start + chunk],
                columns=[
                    "id",
                    "created_at",
                    "updated_at",
                    "deleted",
                    "thread_id",
                    "author_id",
                    "edited_at",
                    "body",
                    "client_id",
                ],
            )
        timings["messages"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for table in ("user", "thread", "membership", "message"):
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                f'(SELECT coalesce(max(id), 0) + 1 FROM "{table}"), false)'
            )
        # A steady-state database: statistics and the visibility map as autovacuum leaves them.
        await conn.execute("VACUUM ANALYZE")
        timings["vacuum analyze"] = time.perf_counter() - t0
    finally:
        await conn.close()
    if log:
        done = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        print(f"  seeded {users} users, {threads} threads, {messages} messages: {done}")
    return timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("dsn")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1_000)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--hash", required=True, help="the argon2 hash every user gets")
    a = p.parse_args()
    asyncio.run(
        seed(
            a.dsn,
            users=a.users,
            threads=a.threads,
            messages=a.messages,
            hashed_password=a.hash,
        )
    )


if __name__ == "__main__":
    main()
