"""Bulk seed of a migrated, empty bench database (asyncpg COPY): users, threads of 2-50
members, messages, mentions.

Thread 1 is the big thread: `messages // 10` of the messages and 50 members. The other
threads share the rest with a skewed (Pareto) distribution; message ids grow with
created_at over the last year, as in a real history. MENTIONED of the messages mention one
other member of their thread, some users (a skewed popularity) far more often than others.
"""

import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

WORDS = (  # noqa: SIM905 (a list literal of 130 words would take 130 lines)
    "the a to and of in is it you that for on was with he as I his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your "
    "how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number "
    "sound no most people my over know water than call first who may down side been now find "
    "meeting tomorrow lunch deploy release review ticket bug fix ship thanks sounds good ok "
    "sure later today coffee call me back please check the logs"
).split()
RARE_WORD = "xylophone"  # in one message of 50,000, for the search scenarios
BIG_THREAD_ID = 1
BIG_THREAD_MEMBERS = 50
MENTIONED = 0.02
COLUMNS = {
    "user": "id created_at updated_at deleted email full_name hashed_password scopes "
    "is_active token_version",
    "auth_session": "id created_at updated_at deleted user_id jti expires_at",
    "thread": "id created_at updated_at deleted title owner_id last_message_at version",
    "membership": "id created_at updated_at deleted thread_id user_id last_read_message_id",
    "message": "id created_at updated_at deleted thread_id author_id edited_at body client_id "
    "version",
    "mention": "message_id user_id thread_id",
}
Rows = dict[str, list[tuple[Any, ...]]]


def sentence(rng: random.Random) -> str:
    n = max(1, int(rng.lognormvariate(2.2, 0.8)))  # median ~9 words, a long tail
    words = " ".join(rng.choice(WORDS) for _ in range(min(n, 120)))
    return words.capitalize() + rng.choice(".!?")


async def seed(dsn: str, *, users: int, threads: int, messages: int, hashed: str) -> Rows:
    """Seeds the database; returns the rows written, by table."""
    rng = random.Random(42)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(days=365)
    t0 = time.perf_counter()

    # One shared argon2 hash: every seeded user logs in with the bench password.
    scopes = json.dumps(["regular"])
    rows: Rows = {name: [] for name in COLUMNS}
    for uid in range(1, users + 1):
        created = start - timedelta(minutes=rng.randint(1, 60 * 24 * 365))
        rows["user"].append(
            (uid, created, created, False, f"user{uid}@example.com", f"User {uid}",
             hashed, scopes, True, 0)
        )  # fmt: skip
        # One login per user (auth_session id = user id): the tokens the harness mints name it.
        rows["auth_session"].append((uid, now, now, False, uid, "bench", now + timedelta(days=400)))

    members = {
        tid: rng.sample(
            range(1, users + 1),
            min(BIG_THREAD_MEMBERS if tid == BIG_THREAD_ID else rng.randint(2, 50), users),
        )
        for tid in range(1, threads + 1)
    }
    big_n = messages // 10 if threads > 1 else messages
    others = list(range(2, threads + 1))
    thread_of = [BIG_THREAD_ID] * big_n
    if others:
        weights = [rng.paretovariate(1.1) for _ in others]
        thread_of += rng.choices(others, weights=weights, k=messages - big_n)
    rng.shuffle(thread_of)
    step = timedelta(days=364) / max(1, messages)
    bodies = [sentence(rng) for _ in range(2000)]
    ids_of: dict[int, list[int]] = {tid: [] for tid in members}
    for i, tid in enumerate(thread_of):
        mid, created, r = i + 1, start + step * i, rng.random()
        ids_of[tid].append(mid)
        rows["message"].append(
            (mid, created, created, r < 0.01,  # 1% deleted
             tid, rng.choice(members[tid]),
             created + timedelta(minutes=3) if r > 0.98 else None,  # 2% edited
             rng.choice(bodies) + (f" {RARE_WORD}" if mid % 50_000 == 0 else ""),
             f"c{mid}" if r < 0.5 else None,  # half with a client_id
             len(ids_of[tid]))  # versions 1..n in each thread, as the migration numbers them
        )  # fmt: skip

    # A generator of their own: the rest of the data stays as it was before mentions.
    mentions = random.Random(43)
    popularity = [0.0, *(mentions.paretovariate(1.0) for _ in range(users))]  # by user id
    for mid, _, _, _, tid, author, *_ in rows["message"]:
        if mentions.random() < MENTIONED:
            others = [uid for uid in members[tid] if uid != author]
            [uid] = mentions.choices(others, weights=[popularity[u] for u in others])
            rows["mention"].append((mid, uid, tid))

    at = {m[0]: m[1] for m in rows["message"]}
    for tid, uids in members.items():
        ids = ids_of[tid]
        first = at[ids[0]] if ids else now - timedelta(days=rng.randint(0, 30))
        created = first - timedelta(minutes=rng.randint(1, 600))
        last = at[ids[-1]] if ids else None
        title = None if rng.random() < 0.3 else f"Thread {tid}: {rng.choice(bodies)[:60]}"
        rows["thread"].append(
            (tid, created, last or created, False, title, uids[0], last, len(ids))
        )
        for uid in uids:
            # Most members are caught up; some are a few messages behind, a few far behind.
            r = rng.random()
            behind = 0 if r < 0.6 else rng.randint(1, 50) if r < 0.95 else rng.randint(50, 1000)
            last_read = ids[max(0, len(ids) - 1 - behind)] if ids else 0
            mship = len(rows["membership"]) + 1
            rows["membership"].append((mship, created, created, False, tid, uid, last_read))

    conn = await asyncpg.connect(dsn)
    try:
        for table, columns in COLUMNS.items():
            await conn.copy_records_to_table(table, records=rows[table], columns=columns.split())
            if not columns.startswith("id "):  # keyed by what it links: no sequence
                continue
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                f'(SELECT coalesce(max(id), 0) + 1 FROM "{table}"), false)'
            )
        # A steady-state database: statistics and the visibility map as autovacuum leaves them.
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    print(f"  seeded {users:,} users, {threads:,} threads, {messages:,} messages", end="")
    print(f", {len(rows['mention']):,} mentions", end="")
    print(f" in {time.perf_counter() - t0:.1f} s", flush=True)
    return rows
