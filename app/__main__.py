"""`python -m app`: uvicorn with the settings' host, port, workers and trusted proxies."""

import importlib
import logging

import uvicorn

from app.core.http import SERVER_OPTIONS
from app.core.logs import JsonFormatter, redact_server_logs
from app.core.settings import settings

if __name__ == "__main__":
    # The app as uvicorn imports it, here first: every feature's settings are read, and
    # a bad one refused in one line, before anything is logged or served.
    importlib.import_module("app.main")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    redact_server_logs()
    workers = settings.workers
    if settings.is_sqlite and workers > 1:
        logging.getLogger("app").warning(
            "WORKERS=%d ignored: SQLite serves from one process (realtime and login limits "
            "cross processes through PostgreSQL only)",
            workers,
        )
        workers = 1
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=workers,
        # The client address is the socket's peer unless a trusted proxy says otherwise.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        log_config=None,  # the root logger above formats uvicorn's lines too
        access_log=False,  # ours (app.core.middleware.RequestLog) leaves the query string out
        **SERVER_OPTIONS,
    )
