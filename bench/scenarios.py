"""What the load harness measures (bench/run.py): each scenario's name, label and target,
and the file of requests wrk cycles through for it, made from the seeded rows."""

import json
import random
import time
from collections import Counter
from functools import cache
from pathlib import Path
from urllib.parse import urlencode

from harness import SECRET
from jose import jwt
from seed import BIG_THREAD_ID, RARE_WORD, Rows

from tests.helpers import PASSWORD, encode_cursor

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
    "mentions": ("GET /api/mentions (the 200 most mentioned users)", None),
    "post": ("POST /api/threads/{id}/messages (spread: 2,000 thread/member pairs)", 0.55),
    "post_hot": ("POST /api/threads/{id}/messages (hot: all to 1 thread, 50 senders)", HOT_TARGET),
    "token": ("POST /api/auth/token (argon2)", None),
    # Full-text search as a member of one thread, and of the most threads anyone is in.
    "search_common_few": ("GET /api/messages/search?q=<common word>, 1 thread", None),
    "search_common_many": ("GET /api/messages/search?q=<common word>, most threads", None),
    "search_rare_few": ("GET /api/messages/search?q=<rare word>, 1 thread", None),
    "search_rare_many": ("GET /api/messages/search?q=<rare word>, most threads", None),
}

# Data sets: (users, threads, messages) of the main one, messages of the scale check's small one.
FULL = {"data": (10_000, 1_000, 1_000_000), "small": 10_000, "memory": (100_000, 1_000_000)}
QUICK = {"data": (1_000, 100, 50_000), "small": 5_000, "memory": (3_000, 15_000)}


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
    (so the requests in flight at once come from different senders). `mentions_after` is no
    scenario: the most mentioned user's page after a cursor halfway down its feed (for its
    plan)."""
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
    deleted = {m[0] for m in rows["message"] if m[3]}
    feeds: dict[int, list[int]] = {}  # each user's live mentions, newest first
    for mid, uid, _ in sorted(rows["mention"], reverse=True):
        if mid not in deleted:
            feeds.setdefault(uid, []).append(mid)
    mentioned = sorted(feeds, key=lambda uid: -len(feeds[uid]))[:200]
    most = feeds[mentioned[0]]

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
        "mentions": [get("/api/mentions", uid) for uid in mentioned],
        "mentions_after": [get(f"/api/mentions?cursor={encode_cursor([most[len(most) // 2]])}",
                               mentioned[0])],
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
