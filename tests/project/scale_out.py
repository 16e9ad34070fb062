"""The scale-out recipe of deploy/, started for test_scale_out.py: PgBouncer in transaction
mode (deploy/pgbouncer.ini) in front of the suite's PostgreSQL, two `python -m app`
processes through it, and nginx (deploy/nginx.conf) in front of them, whose access log
names the process that served each request."""

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import make_url

from app.core.settings import settings
from tests.helpers import ROOT
from tests.servers import free_port, serve

DEPLOY = ROOT / "deploy"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
FAILURES = 3  # LOGIN_FAILURES_PER_EMAIL of both processes


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


@contextmanager
def scale_out_stack() -> Iterator[Stack]:
    """The whole recipe, running until the block ends."""
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
