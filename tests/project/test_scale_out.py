"""The scale-out recipe in deploy/, for real: nginx (deploy/nginx.conf) in front of two
`python -m app` processes, PgBouncer in transaction mode (deploy/pgbouncer.ini) in front of
PostgreSQL. Every request below goes through nginx; nginx's access log tells which process
served it, so the tests can check that the two processes really shared the work.

Needs Debian's nginx and pgbouncer (.ci/run installs them) and PostgreSQL.
"""

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from sqlalchemy import make_url
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.core.settings import settings
from tests.helpers import (
    APP,
    PASSWORD,
    ROOT,
    clean_env,
    close_code,
    free_port,
    next_event,
    serve,
)

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
FAILURES = 3  # LOGIN_FAILURES_PER_EMAIL of both processes

pytestmark = [
    pytest.mark.skipif(settings.is_sqlite, reason="PgBouncer and LISTEN need PostgreSQL"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
    pytest.mark.skipif(
        PGBOUNCER is None, reason="pgbouncer is not installed (apt-get install pgbouncer)"
    ),
]


def render(template: str, out: Path, **values: str) -> None:
    text = (DEPLOY / template).read_text()
    for name, value in values.items():
        text = text.replace("{{" + name + "}}", value)
    assert "{{" not in text, f"{template}: a placeholder is left"
    out.write_text(text)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        assert proc.poll() is None, log.read_text() if log.exists() else "exited"
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.1)


def start_nginx(stack: ExitStack, folder: Path, apps: list[str]) -> str:
    """nginx from deploy/nginx.conf, its files in `folder`, in front of the two `apps`
    (host:port), until `stack` closes: its base URL."""
    folder.mkdir()
    port = free_port()
    render(
        "nginx.conf",
        folder / "nginx.conf",
        LISTEN=f"127.0.0.1:{port}",
        APP_1=apps[0],
        APP_2=apps[1],
        RUN=str(folder),
    )
    # -e: the error log before the configuration is read, else the system's is tried.
    command = [str(NGINX), "-p", str(folder), "-c", str(folder / "nginx.conf")]
    command += ["-e", str(folder / "error.log"), "-g", "daemon off;"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    wait_for_port(port, proc, folder / "error.log")
    return f"http://127.0.0.1:{port}"


def shared_folder(prefix: str) -> Path:
    """A folder nginx's workers can read (pytest's tmp_path is its owner's alone)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o755)
    return folder


@dataclass
class Stack:
    base: str  # nginx
    pooled_url: str  # PgBouncer
    access_log: Path
    apps: list[str]  # host:port of the two processes

    def served_by(self, method: str, path: str) -> list[str]:
        """The process of each request `method path` so far, oldest first."""
        pattern = re.compile(rf'"{method} {re.escape(path)}" \d+ \S+ upstream=(\S+)')
        return pattern.findall(self.access_log.read_text())


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Our own folder, readable by nginx's workers and owned by the postgres user when we
    # are root: PgBouncer refuses to run as root.
    run = shared_folder("fab-scale-out-")
    as_root = os.geteuid() == 0
    pgb = run / "pgbouncer"
    pgb.mkdir()
    if as_root:
        shutil.chown(pgb, "postgres", "postgres")

    direct = make_url(settings.async_database_url)
    password = direct.password or "scale-out"  # PostgreSQL may trust us; PgBouncer does not
    pgb_port = free_port()
    render(
        "pgbouncer.ini",
        pgb / "pgbouncer.ini",
        PG_HOST=direct.host or "127.0.0.1",
        PG_PORT=str(direct.port or 5432),
        PORT=str(pgb_port),
        RUN=str(pgb),
    )
    (pgb / "userlist.txt").write_text(f'"{direct.username}" "{password}"\n')
    pooled = direct.set(host="127.0.0.1", port=pgb_port, password=password, drivername="postgresql")
    pooled_url = pooled.render_as_string(hide_password=False)

    with ExitStack() as stack:
        command = [str(PGBOUNCER), str(pgb / "pgbouncer.ini")]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)
        wait_for_port(pgb_port, proc, pgb / "pgbouncer.log")

        apps = []
        for n in (1, 2):
            cwd = run / f"app{n}"
            cwd.mkdir()
            base = stack.enter_context(
                serve(
                    cwd,
                    DATABASE_URL=pooled_url,
                    DATABASE_URL_DIRECT=settings.database_url,
                    FORWARDED_ALLOW_IPS="127.0.0.1",
                    LOGIN_FAILURES_PER_EMAIL=str(FAILURES),
                )
            )
            apps.append(base.removeprefix("http://"))

        base = start_nginx(stack, run / "nginx", apps)
        yield Stack(base, pooled_url, run / "nginx" / "access.log", apps)
    shutil.rmtree(run, ignore_errors=True)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base, timeout=10) as client:
        yield client


async def user(http: httpx.AsyncClient) -> dict[str, Any]:
    email = f"{uuid4().hex[:12]}@example.com"
    r = await http.post(
        "/api/auth/signup", json={"email": email, "password": PASSWORD, "full_name": "S"}
    )
    assert r.status_code == 201, r.text
    r = await http.post("/api/auth/token", data={"username": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    return {**r.json(), "id": 0, "email": email, "headers": {"Authorization": f"Bearer {token}"}}


async def new_thread(http: httpx.AsyncClient, owner: dict[str, Any], *members: int) -> int:
    r = await http.post(
        "/api/threads", json={"member_ids": list(members)}, headers=owner["headers"]
    )
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


async def user_id(http: httpx.AsyncClient, someone: dict[str, Any]) -> int:
    r = await http.get("/api/users/me", headers=someone["headers"])
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


# --- the plumbing: no new app behaviour needed ------------------------------------------


async def test_pgbouncer_pools_in_transaction_mode(stack: Stack) -> None:
    conn = await asyncpg.connect(stack.pooled_url, statement_cache_size=0)
    try:
        assert (
            await conn.fetchval("SELECT current_database()")
            == make_url(settings.async_database_url).database
        )
    finally:
        await conn.close()


async def test_nginx_spreads_requests_over_both_processes(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    before = len(stack.served_by("GET", "/api/health"))
    for _ in range(4):
        assert (await http.get("/api/health")).status_code == 200
    assert set(stack.served_by("GET", "/api/health")[before:]) == set(stack.apps)


async def test_nginx_upgrades_websockets(stack: Stack) -> None:
    # The app accepts, then closes a bad token with 4401: only an upgraded socket gets that.
    async with connect(stack.base.replace("http", "ws", 1) + "/api/ws?token=bad") as ws:
        assert await close_code(ws) == 4401


# --- what the app must do behind a pooler and a proxy ----------------------------------


async def test_an_event_crosses_processes_through_nginx(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    ada, bob = await user(http), await user(http)
    thread_id = await new_thread(http, ada, await user_id(http, bob))
    ws_url = stack.base.replace("http", "ws", 1) + f"/api/ws?token={bob['access_token']}"
    path = f"/api/threads/{thread_id}/messages"
    async with connect(ws_url) as ws:
        assert (await next_event(ws))["type"] == "ready"  # subscribed
        for text in ("one", "two"):  # round robin: one of the two lands on the other process
            r = await http.post(path, json={"body": text}, headers=ada["headers"])
            assert r.status_code == 201, r.text
            event = await next_event(ws)
            assert event["type"] == "message.created" and event["data"]["body"] == text
    await asyncio.sleep(0.2)  # nginx logs a socket when it closes
    [socket_process] = stack.served_by("GET", "/api/ws")[-1:]
    assert set(stack.served_by("POST", path)) - {socket_process}, "no send crossed processes"


async def test_login_limits_hold_across_processes(stack: Stack, http: httpx.AsyncClient) -> None:
    victim = await user(http)
    wrong = {"username": victim["email"], "password": "wrong password"}
    before = len(stack.served_by("POST", "/api/auth/token"))
    for _ in range(FAILURES):
        assert (await http.post("/api/auth/token", data=wrong)).status_code == 401
    assert set(stack.served_by("POST", "/api/auth/token")[before:]) == set(stack.apps)
    right = {"username": victim["email"], "password": PASSWORD}
    r = await http.post("/api/auth/token", data=right)
    assert r.status_code == 429, r.text


async def test_an_idempotent_send_through_both_processes_at_once(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    ada = await user(http)
    thread_id = await new_thread(http, ada)
    path = f"/api/threads/{thread_id}/messages"
    body = {"body": "once", "client_id": uuid4().hex}
    responses = await asyncio.gather(
        *(http.post(path, json=body, headers=ada["headers"]) for _ in range(2))
    )
    assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert set(stack.served_by("POST", path)) == set(stack.apps)
    r = await http.get(path, headers=ada["headers"])
    assert [m["body"] for m in r.json()["items"]] == ["once"]


async def test_the_largest_upload_passes_nginx(stack: Stack, http: httpx.AsyncClient) -> None:
    ada = await user(http)
    largest = os.urandom(settings.max_upload_bytes)
    for data, expected in ((largest, 201), (largest + b"!", 413)):
        files = {"file": ("big.bin", data)}
        r = await http.post("/api/uploads", files=files, headers=ada["headers"])
        assert r.status_code == expected, r.text


async def test_no_socket_token_is_logged_while_the_apps_are_away() -> None:
    """nginx's error lines quote the request line, which for a socket holds its token."""
    folder = shared_folder("fab-nginx-")
    secret = uuid4().hex
    try:
        with ExitStack() as stack:
            away = [f"127.0.0.1:{free_port()}" for _ in range(2)]
            base = start_nginx(stack, folder / "nginx", away)
            url = base.replace("http", "ws", 1) + f"/api/ws?token={secret}"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 502
        logs = "".join((folder / "nginx" / log).read_text() for log in ("access.log", "error.log"))
        assert '"GET /api/ws" 502' in logs
        assert secret not in logs
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_pooler_is_refused_without_a_direct_url(stack: Stack, tmp_path: Path) -> None:
    """Taken for PostgreSQL, PgBouncer would fail some statements at random and LISTEN
    through it would hear nothing: the process refuses to start instead."""
    env = clean_env(DATABASE_URL=stack.pooled_url, PORT=str(free_port()))
    env.pop("DATABASE_URL_DIRECT", None)
    done = subprocess.run(APP, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    assert b"through a pooler" in done.stdout + done.stderr, done.stderr.decode()[-2000:]
