"""Settings a process cannot work with stop it at start-up, in one line that names the
setting; none waits to fail (or to switch a limit off) at the first request that needs it."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import API8
from tests.servers import clean_env, serve

BAD = [
    ("WS_MAX_PER_USER", "0"),  # every socket would be closed with 4429
    ("WS_MAX_PER_USER", "ten"),
    ("MESSAGES_PER_MINUTE", "-1"),
    ("SEARCH_SECONDS", "0"),  # PostgreSQL's statement_timeout 0: no limit at all
    ("SEARCH_SECONDS", "0.0001"),  # 0 ms as well
    ("SEARCH_SECONDS", "-2"),  # refused by PostgreSQL at every search
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),  # every token dead on arrival
    ("DB_POOL_SIZE", "0"),  # SQLAlchemy's pool without a limit
    ("MAX_CONCURRENT_REQUESTS", "0"),  # every request waits, then 503
    ("REQUEST_BODY_TIMEOUT_SECONDS", "0"),  # every body 408
    ("PORT", "-1"),
    ("WORKERS", "0"),
    ("CORS_ORIGINS", "https://app.example"),  # a list is JSON
    # Past PostgreSQL's integer (each send, upload or login failed), past a date's range.
    ("MESSAGES_PER_MINUTE", "3000000000"),
    ("MAX_PENDING_UPLOADS", "3000000000"),
    ("LOGIN_FAILURES_PER_EMAIL", "3000000000"),
    ("ACCESS_TOKEN_EXPIRE_MINUTES", "10000000000"),
    ("UPLOAD_EXPIRE_MINUTES", "10000000000"),
    ("DATABASE_URL", "app.db"),  # no URL: a traceback at the engine's creation
    ("DATABASE_URL", "mysql://db/app"),
    ("EVENTS_URL", "http://redis:6379/0"),  # refused by redis-py only as the app starts
]


@API8
@pytest.mark.parametrize(("name", "value"), BAD, ids=[f"{n}={v}" for n, v in BAD])
def test_a_bad_setting_stops_the_start_in_one_line(tmp_path: Path, name: str, value: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=tmp_path,
        env=clean_env(**{name: value}),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Refusing to start"), lines
    assert name in lines[0], lines


def test_an_empty_setting_is_an_unset_one(tmp_path: Path) -> None:
    """As compose passes what it may leave out (`${VAR:-}`), the messenger's too."""
    with serve(tmp_path, WS_MAX_PER_USER="", MESSAGES_PER_MINUTE="", SEARCH_SECONDS="") as base:
        assert httpx.get(f"{base}/api/health", timeout=30).status_code == 200
