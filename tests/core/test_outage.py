"""The database goes away while requests flow, and comes back.

A private PostgreSQL cluster that this test starts itself (the shared one is not touched)
serves a real `python -m app`: during the outage requests answer 503 quickly, readiness
says 503, and afterwards the service recovers without a restart, having lost nothing it
answered 201 for. A connection lost in the middle of a request, or just after its commit,
is a 503 or the request's own answer, never a 500.
"""

import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, suppress
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url

from app.core.db import engine
from app.core.settings import settings
from tests.helpers import ROOT, MakeUser, fetch, signup
from tests.servers import clean_env, free_port, listening_again, serve, serve_suite_db

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
pytestmark = [
    pytest.mark.skipif(not BIN, reason="needs PostgreSQL's server binaries"),
    pytest.mark.skipif(settings.is_sqlite, reason="runs with the PostgreSQL suite"),
]


class Cluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fab-pg-"))
        self.port = free_port()
        self.bin = Path(BIN[-1])
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.dir, "postgres")

    def run(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.run(
            str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust"
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-o", options,
                 "-l", str(self.dir / "log"), "-w", "start")  # fmt: skip

    def stop(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    c.init()
    c.start()
    try:
        yield c
    finally:
        subprocess.run([*c.as_postgres, str(c.bin / "pg_ctl"), "-D", str(c.dir / "data"),
                        "-m", "immediate", "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(c.dir, ignore_errors=True)


async def test_database_outage_and_recovery(cluster: Cluster, tmp_path: Path) -> None:
    env = clean_env(DATABASE_URL=cluster.url)
    subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    # Thirty signups from one address in a few seconds: more than the usual hourly limit.
    with serve(tmp_path, DATABASE_URL=cluster.url, SIGNUPS_PER_ADDRESS_PER_HOUR="100") as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            stored: list[int] = []
            answers: list[tuple[str, int, float]] = []

            async def create(phase: str, n: int) -> None:
                started = time.perf_counter()
                r = await signup(http, f"{phase}{n}@example.com")
                answers.append((phase, r.status_code, time.perf_counter() - started))
                if r.status_code == 201:
                    stored.append(r.json()["id"])

            for n in range(10):
                await create("before", n)
            await asyncio.to_thread(cluster.stop)
            for n in range(10):
                await create("during", n)
            r = await http.get("/api/health/ready")
            assert r.status_code == 503
            assert (await http.get("/api/health")).status_code == 200
            await asyncio.to_thread(cluster.start)
            deadline = time.monotonic() + 30
            while (await http.get("/api/health/ready")).status_code != 200:
                assert time.monotonic() < deadline, "did not recover"
                await asyncio.sleep(0.2)
            for n in range(10):
                await create("after", n)

    assert all(code == 201 for phase, code, _ in answers if phase == "before")
    during = [(code, took) for phase, code, took in answers if phase == "during"]
    assert all(code == 503 for code, _ in during), during
    assert all(took < 6 for _, took in during), during  # quickly, not a hang
    # After recovery a request may still meet a connection from before: at most one 503.
    after = [code for phase, code, _ in answers if phase == "after"]
    assert after.count(201) >= 9 and set(after) <= {201, 503}, after

    conn = await asyncpg.connect(cluster.url)
    try:
        rows = await conn.fetch('SELECT id FROM "user" WHERE NOT deleted')
    finally:
        await conn.close()
    assert sorted(stored) == sorted(r["id"] for r in rows)


async def test_a_connection_ended_under_a_write_answers_503(
    make_user: MakeUser, tmp_path: Path
) -> None:
    """PostgreSQL ends a connection in the middle of a transaction (a restart, a failover,
    an administrator): the write answers 503, not 500, and the next one succeeds."""
    user = await make_user()
    with serve_suite_db(tmp_path) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=user.headers) as http:
            name = {"full_name": "Later"}
            async with engine.connect() as lock:
                # The write's transaction waits for this lock, so it is there to be ended.
                await lock.exec_driver_sql('LOCK TABLE "user" IN EXCLUSIVE MODE')
                write = asyncio.create_task(http.patch("/api/users/me", json=name))
                await asyncio.sleep(0.5)
                [[ended]] = await fetch(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                await lock.rollback()
            r = await write
            assert ended == 1 and r.status_code == 503, r.text
            assert r.headers["Retry-After"].isdigit()
            assert (await http.patch("/api/users/me", json=name)).status_code == 200


class Relay:
    """The suite's PostgreSQL, relayed. `cut_after(statement)`: the next connection that
    sends `statement` is closed right after the server's answer to its COMMIT has passed
    (the network fails there)."""

    def __init__(self) -> None:
        self.database = make_url(settings.database_url)
        self.statement: bytes | None = None

    def cut_after(self, statement: bytes) -> None:
        self.statement = statement

    async def link(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        target = (self.database.host or "127.0.0.1", self.database.port or 5432)
        server, to_server = await asyncio.open_connection(*target)
        doomed = False

        async def relay(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            nonlocal doomed
            with suppress(OSError):
                while data := await src.read(65536):
                    if up and self.statement and self.statement in data:
                        doomed, self.statement = True, None
                    dst.write(data)
                    await dst.drain()
                    if not up and doomed and b"COMMIT\0" in data:
                        break
            to_client.close()
            to_server.close()

        await asyncio.gather(relay(client, to_server, True), relay(server, to_client, False))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """The relay's DATABASE_URL, while it runs."""
        server = await asyncio.start_server(self.link, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            url = self.database.set(host="127.0.0.1", port=port)
            yield url.render_as_string(hide_password=False)


async def test_a_connection_lost_just_after_a_commit_is_no_server_error(
    make_user: MakeUser, tmp_path: Path
) -> None:
    """A change other processes must hear of before it is answered (a user's) is committed,
    then its connection is lost before they are told: the change stands and is answered."""
    user = await make_user()
    relay, stack = Relay(), ExitStack()
    async with relay.running() as url:
        # Started and stopped from a thread: the relay, in this loop, serves meanwhile.
        base = await asyncio.to_thread(stack.enter_context, serve(tmp_path, DATABASE_URL=url))
        try:
            await listening_again(2)  # its listener and ours: the change waits for both
            async with httpx.AsyncClient(base_url=base, timeout=30, headers=user.headers) as http:
                relay.cut_after(b'UPDATE "user" SET')
                r = await http.patch("/api/users/me", json={"full_name": "Committed"})
                assert r.status_code in (200, 503), r.text
                r = await http.get("/api/users/me")
                assert r.status_code == 200 and r.json()["full_name"] == "Committed"
        finally:
            await asyncio.to_thread(stack.close)
