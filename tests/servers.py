"""The real servers the tests (and bench/) start and drive: `python -m app` processes, a
scratch PostgreSQL database, an SMTP inbox, and the event listeners every process holds.

Nothing from app/ is imported at module level, as in tests/helpers.py: conftest sets
DATABASE_URL before the app is first imported, and bench/ drives servers it starts itself,
with their own settings.
"""

import asyncio
import email
import email.policy
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import make_url

from tests.helpers import ROOT, fetch

APP = (sys.executable, "-m", "app")
# uvicorn as its own command line runs the app: its logging config, its access log.
PLAIN_UVICORN = (sys.executable, "-m", "uvicorn", "app.main:app", "--port", "{port}")

# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def copy_tracked(dest: Path, leave_out: Sequence[str] = ()) -> None:
    """The repository's tracked files, as they are on disk, into `dest`; paths starting with
    one of `leave_out` stay behind."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if name.startswith(tuple(leave_out)) or not source.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the suite's database and mode, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "ENVIRONMENT"}}
    return {**env, **extra}


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str  # http://127.0.0.1:PORT
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def start(
    cwd: Path,
    env: dict[str, str],
    *,
    argv: Sequence[str] = APP,
    log: Path | None = None,
    ready: str = "/api/health",
    timeout: float = 30,
) -> Iterator[Server]:
    """`argv` (`python -m app` by default) on a free port (given to it as PORT, and in place
    of `{port}` in `argv`), run in `cwd` with exactly `env`, its output in `log`; yielded
    once `ready` answers 200, stopped on exit."""
    port = free_port()
    log = log or cwd / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in argv],
            cwd=cwd,
            env={**env, "PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches us, and we stop it in order
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(server.base + ready, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, server.log_tail()
            assert time.monotonic() < deadline, f"server did not start:\n{server.log_tail()}"
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def serve(cwd: Path, **env: str) -> Iterator[str]:
    """`python -m app` in `cwd` (so its default SQLite file lands there), its output in
    `cwd / "server.log"`; yields its base URL."""
    with start(cwd, clean_env(**env)) as server:
        yield server.base


@contextmanager
def serve_suite_db(cwd: Path, **env: str) -> Iterator[str]:
    """`serve` on the suite's own database (so the test sees what the process stores), with
    extra settings; `cwd` is made if missing."""
    cwd.mkdir(parents=True, exist_ok=True)
    with serve(cwd, DATABASE_URL=os.environ["DATABASE_URL"], **env) as base:
        yield base


@contextmanager
def scratch_postgres(url: str, prefix: str = "scratch") -> Iterator[str]:
    """A new, empty database on the PostgreSQL server of `url`, dropped on exit: its URL."""
    server = make_url(url).set(drivername="postgresql")
    name = f"{prefix}_{uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        dsn = server.set(database="postgres").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f"DROP DATABASE {name} WITH (FORCE)"))


# --------------------------------------------------------------------------- mail


MAIL_FRONTEND = "https://app.example.com"  # FRONTEND_URL while a test reads mail
TOKEN = re.compile(r"token=([A-Za-z0-9_-]+)")


class Inbox:
    """An SMTP server that keeps what it receives: (recipient, subject, body)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body().get_content()  # type: ignore[union-attr]
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.mails.append((rcpt, str(msg["Subject"]), body))
        return "250 OK"

    def to(self, address: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [m for m in self.mails if m[0] == address]

    async def wait(self, address: str, count: int = 1, timeout: float = 15) -> str:
        """The body of the `count`th mail to `address`, once it is there."""
        deadline = time.monotonic() + timeout
        while len(self.to(address)) < count:
            assert time.monotonic() < deadline, f"no mail {count} for {address}: {self.mails}"
            await asyncio.sleep(0.05)
        return self.to(address)[count - 1][2]


def token_of(body: str) -> str:
    match = TOKEN.search(body)
    assert match, body
    return match.group(1)


# --------------------------------------------------------------------------- event listeners


async def listeners() -> int:
    """The event listeners of this suite's database (one per process), whatever carries
    the events: PostgreSQL's LISTEN, or Redis pub/sub when EVENTS_URL says so."""
    from app.core.channels import redis_client_name
    from app.core.settings import settings

    if settings.events_url:
        import redis.asyncio as redis

        name = redis_client_name()  # this database's: other apps may share the Redis
        async with redis.from_url(settings.events_url) as r:
            return sum(c["name"] == name for c in await r.client_list(_type="pubsub"))
    rows = await fetch(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'app-events' AND datname = current_database()"
    )
    return int(rows[0][0])


async def listening_again(count: int, seconds: float = 15) -> None:
    """Wait until `count` listeners of this suite's database are connected again."""
    deadline = time.monotonic() + seconds
    while (now := await listeners()) < count:
        assert time.monotonic() < deadline, f"{now} of {count} event listeners back in {seconds} s"
        await asyncio.sleep(0.1)


async def cut_listeners() -> None:
    """Every process's event listener on this suite's database loses its connection."""
    from app.core.channels import redis_client_name
    from app.core.settings import settings

    if settings.events_url:
        import redis.asyncio as redis

        name = redis_client_name()
        async with redis.from_url(settings.events_url) as r:
            for c in await r.client_list():
                if c["name"] == name:
                    await r.client_kill_filter(_id=c["id"])
        return
    await fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'app-events' AND datname = current_database()"
    )
