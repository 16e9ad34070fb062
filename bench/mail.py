"""Mail throughput and an SMTP outage: one `python -m app` process, a local aiosmtpd.

    flock /tmp/bench.lock .venv/bin/python bench/mail.py              # on bench_mail_<pid>
    flock /tmp/bench.lock .venv/bin/python bench/mail.py --outage 60  # the full minute

1. Throughput: N rows queued in the outbox in one transaction (and one NOTIFY); the time
   from the first mail received to the last gives mails per second for one process.
2. Outage: the SMTP server stopped, 100 mails queued, `--outage` seconds (15 by default)
   later it starts again; prints the queue meanwhile and how long draining took.
Both count duplicates (a mail received twice).
"""

import argparse
import asyncio
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
from aiosmtpd.controller import Controller

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import database

from tests.servers import free_port, serve

QUEUE = (
    'INSERT INTO mail (created_at, updated_at, kind, "to", data, attempts, next_attempt_at) '
    "SELECT now(), now(), 'verify', $1::text || i || '@example.com', '{\"token\": \"bench\"}', "
    "0, now() FROM generate_series(1, $2::integer) AS i"
)
PENDING = (
    "SELECT count(*), max(attempts), extract(epoch FROM max(next_attempt_at) - now()) FROM mail "
    "WHERE next_attempt_at IS NOT NULL"
)


class Counting:
    def __init__(self) -> None:
        self.received: list[tuple[float, str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.extend((time.monotonic(), r) for r in envelope.rcpt_tos)
        return "250 OK"


async def wait_for(box: Counting, prefix: str, n: int) -> float:
    deadline = time.monotonic() + 300
    while sum(1 for _, r in box.received if r.startswith(prefix)) < n:
        assert time.monotonic() < deadline, "mail did not arrive"
        await asyncio.sleep(0.02)
    return time.monotonic()


async def main(args: argparse.Namespace, db: str) -> None:
    conn = await asyncpg.connect(db)

    async def queue(n: int, prefix: str) -> None:
        async with conn.transaction():
            await conn.execute(QUEUE, prefix, n)
            await conn.execute("SELECT pg_notify('mail', '')")

    box, port = Counting(), free_port()
    smtp = Controller(box, hostname="127.0.0.1", port=port)
    smtp.start()
    env = {"DATABASE_URL": db, "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
           "SMTP_SECURITY": "none", "MAIL_RETRY_MAX_SECONDS": str(args.retry_max)}  # fmt: skip
    cwd = Path("/tmp") / f"bench-mail-{port}"
    cwd.mkdir(exist_ok=True)
    try:
        with serve(cwd, **env):
            start = time.monotonic()
            await queue(args.n, "t")
            done = await wait_for(box, "t", args.n)
            times = sorted(t for t, r in box.received if r.startswith("t"))
            rate = (args.n - 1) / (times[-1] - times[0])
            print(
                f"throughput: {args.n} mails in {done - start:.2f} s from the commit "
                f"({args.n / (done - start):.0f}/s); first to last: {rate:.0f} mails/s"
            )

            smtp.stop()
            await queue(100, "o")
            for second in range(0, args.outage, 5):
                await asyncio.sleep(5)
                pending, attempts, wait = await conn.fetchrow(PENDING)
                print(
                    f"  SMTP down {second + 5:>3} s: {pending} pending, attempts so far "
                    f"{attempts}, next try due in {float(wait):.1f} s"
                )
            smtp = Controller(box, hostname="127.0.0.1", port=port)
            smtp.start()
            back = time.monotonic()
            done = await wait_for(box, "o", 100)
            print(f"outage: SMTP back, 100 queued mails delivered {done - back:.1f} s later")
            await asyncio.sleep(2)
        twice = [r for r, c in Counter(r for _, r in box.received).items() if c > 1]
        print(f"duplicates: {len(twice)}")
    finally:
        smtp.stop()
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--outage", type=int, default=15, help="seconds without SMTP")
    parser.add_argument("--retry-max", type=int, default=300, help="MAIL_RETRY_MAX_SECONDS")
    args = parser.parse_args()
    with database(f"bench_mail_{os.getpid()}") as db:  # dropped at the end
        asyncio.run(main(args, db))
