"""What the messenger's tests share beyond tests/conftest.py: two real `python -m app`
processes on the suite's PostgreSQL, with a send limit small enough to reach."""

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from app.core.settings import settings
from tests.helpers import start

SENDS_PER_MINUTE = 5  # MESSAGES_PER_MINUTE of the two processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """The base URLs of two processes serving the suite's database; stopped after the
    module, since they also run its jobs (mail), which later tests expect to run here."""
    if settings.is_sqlite:
        pytest.skip("processes share PostgreSQL only")
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "MESSAGES_PER_MINUTE": str(SENDS_PER_MINUTE),
    }
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                start(tmp_path_factory.mktemp("server"), env, ready="/api/health/ready")
            ).base
            for _ in range(2)
        ]
