"""Uploads against a real `python -m app` (SQLite, files on disk in a scratch folder, or
with --s3 in a bucket of moto's S3 server, started in this process as the tests start it).

    .venv/bin/python bench/uploads.py              # a 10 MiB file
    .venv/bin/python bench/uploads.py --s3         # the same, the bytes in S3
    .venv/bin/python bench/uploads.py --mib 1      # a quick check that it runs

With --s3 a download is a 307 to a presigned URL: its bytes come from moto, not through
the server, and moto shares this process with the clients (its speed is the bench's).

1. Throughput: one client uploads the file, then downloads it, `--rounds` times; MB/s of
   each (medians), the server's peak RSS (VmHWM) before and after.
2. Parallel: `--parallel` clients (8) each upload and download the file at once; the
   aggregate MB/s and how much the server's peak RSS grew (the target: under 50 MiB: a
   file streams through, it is never held whole).
3. A page of 50 messages, each carrying one attachment, against one without: statements
   per page (counted in this process, on the app itself) and the server's median latency.
"""

import argparse
import asyncio
import hashlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import (  # noqa: E402
    S3_BUCKET,
    S3_CREDENTIALS,
    bearer,
    multipart,
    new_thread,
    sign_up,
)
from tests.servers import clean_env, free_port, start  # noqa: E402

MiB = 1024 * 1024
PAGE = 50


def memory_mib(pid: int) -> tuple[float, float]:
    """(peak RSS, current RSS) of a process, in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


async def up_and_down(http: httpx.AsyncClient, auth: dict[str, str], data: bytes) -> list[float]:
    """Seconds to upload `data`, then to download it (checked against its sha256)."""
    body, headers = multipart(data, "bench.bin")
    started = time.perf_counter()
    r = await http.post("/api/uploads", content=body, headers={**auth, **headers})
    assert r.status_code == 201, r.text
    uploaded = time.perf_counter()
    digest = hashlib.sha256()
    async with http.stream("GET", f"/api/uploads/{r.json()['id']}", headers=auth) as got:
        assert got.status_code == 200
        async for chunk in got.aiter_bytes():
            digest.update(chunk)
    assert digest.hexdigest() == r.json()["sha256"]
    return [uploaded - started, time.perf_counter() - uploaded]


async def latency_ms(call: Callable[[], Awaitable[Any]], n: int = 50) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def fill(http: httpx.AsyncClient, user: Any, attach: bool) -> Any:
    """A thread of PAGE messages, each with one attachment or none."""
    thread = await new_thread(http, user)
    for n in range(PAGE):
        ids = []
        if attach:
            body, headers = multipart(b"x" * 1000, f"{n}.txt")
            r = await http.post("/api/uploads", content=body, headers={**user.headers, **headers})
            ids = [r.json()["id"]]
        r = await http.post(
            f"/api/threads/{thread['id']}/messages",
            json={"body": f"message {n}", "attachment_ids": ids},
            headers=user.headers,
        )
        assert r.status_code == 201, r.text
    return thread


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 as a real HTTP server in this process: the app's S3_* settings for it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield {
            "S3_BUCKET": S3_BUCKET,
            "S3_ENDPOINT_URL": f"http://{host}:{port}",
            "S3_REGION": "us-east-1",
            "S3_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
            "S3_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
        }
    finally:
        server.stop()


async def make_bucket(s3: dict[str, str]) -> None:
    from aiobotocore.session import get_session

    async with get_session().create_client(
        "s3", endpoint_url=s3["S3_ENDPOINT_URL"], region_name="us-east-1", **S3_CREDENTIALS
    ) as client:
        await client.create_bucket(Bucket=s3["S3_BUCKET"])


async def served(
    args: argparse.Namespace, scratch: Path, s3: dict[str, str]
) -> list[tuple[str, str]]:
    size = int(args.mib * MiB)
    data = os.urandom(size)
    if s3:
        await make_bucket(s3)
    env = clean_env(
        MAX_UPLOAD_BYTES=str(max(size, 10 * MiB)),
        MAX_PENDING_UPLOADS="10000",
        UPLOAD_DIR=str(scratch / "files"),
        **s3,
    )
    rows = [("storage", f"S3 (moto at {s3['S3_ENDPOINT_URL']})" if s3 else "disk")]
    with start(scratch, env) as server:
        pid = server.proc.pid
        # With S3, a download is a redirect to the bucket.
        async with httpx.AsyncClient(
            base_url=server.base, timeout=300, follow_redirects=bool(s3)
        ) as http:
            user = await sign_up(http, "bench@example.com", "Bench")
            auth = bearer(user["token"]["access_token"])
            await up_and_down(http, auth, os.urandom(MiB))  # warm-up, a hash made at signup
            peak_before, rss_before = memory_mib(pid)
            rows.append(
                ("server RSS before (peak / now)", f"{peak_before:.1f} / {rss_before:.1f} MiB")
            )

            rounds = [await up_and_down(http, auth, data) for _ in range(args.rounds)]
            mb = size / 1e6
            up = statistics.median(mb / r[0] for r in rounds)
            down = statistics.median(mb / r[1] for r in rounds)
            rows.append((f"upload {args.mib:g} MiB, 1 client", f"{up:.0f} MB/s"))
            rows.append((f"download {args.mib:g} MiB, 1 client", f"{down:.0f} MB/s"))
            peak, _ = memory_mib(pid)
            rows.append(("server peak RSS grew, 1 client", f"{peak - peak_before:.1f} MiB"))

            started = time.perf_counter()
            await asyncio.gather(*(up_and_down(http, auth, data) for _ in range(args.parallel)))
            wall = time.perf_counter() - started
            peak, _ = memory_mib(pid)
            rows.append(
                (
                    f"{args.parallel} clients, up + down at once",
                    f"{2 * args.parallel * mb / wall:.0f} MB/s",
                )
            )
            grown = peak - peak_before
            verdict = "ok" if grown < 50 else "OVER the 50 MiB target"
            rows.append(
                (f"server peak RSS grew, {args.parallel} clients", f"{grown:.1f} MiB ({verdict})")
            )

            plain, attached = await fill(http, user, False), await fill(http, user, True)
            for name, thread in (("without", plain), ("with", attached)):
                url = f"/api/threads/{thread['id']}/messages"

                async def get(url: str = url) -> None:
                    r = await http.get(url, params={"limit": PAGE}, headers=user.headers)
                    assert r.status_code == 200

                rows.append(
                    (f"page of {PAGE}, {name} attachments", f"{await latency_ms(get):.2f} ms")
                )
    return rows


async def statements_per_page(scratch: Path) -> list[tuple[str, str]]:
    """The app itself in this process (httpx's ASGI transport), counting what its engine
    sends for a page. Imported here: its settings are read on import, from this env."""
    os.environ["DATABASE_URL"] = f"sqlite+aiosqlite:///{scratch}/count.db"
    os.environ["UPLOAD_DIR"] = str(scratch / "count-files")
    os.environ["ENVIRONMENT"] = "development"
    from app.main import app
    from tests.helpers import count_statements

    rows = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            user = await sign_up(http, "count@example.com", "Count")
            plain, attached = await fill(http, user, False), await fill(http, user, True)
            for name, thread in (("without", plain), ("with", attached)):
                url = f"/api/threads/{thread['id']}/messages"
                await http.get(url, headers=user.headers)  # the caller remembered
                with count_statements() as statements:
                    r = await http.get(url, params={"limit": PAGE}, headers=user.headers)
                assert r.status_code == 200 and len(r.json()["items"]) == PAGE
                uploads = [s for s in statements if "FROM upload" in s]
                count = f"{len(statements)} ({len(uploads)} for the attachments)"
                rows.append((f"statements per page of {PAGE}, {name} attachments", count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=10, help="file size in MiB (10)")
    parser.add_argument("--rounds", type=int, default=5, help="sequential rounds (5)")
    parser.add_argument("--parallel", type=int, default=8, help="clients at once (8)")
    parser.add_argument("--s3", action="store_true", help="the bytes in moto's S3, not on disk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-uploads-") as scratch:
        if args.s3:
            with s3_server() as s3:
                rows = asyncio.run(served(args, Path(scratch), s3))
        else:
            rows = asyncio.run(served(args, Path(scratch), {}))
        rows += asyncio.run(statements_per_page(Path(scratch)))
    width = max(len(name) for name, _ in rows)
    print(f"{'':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
