import json
import logging
import re
from typing import Any

import uvicorn

from app.settings import settings

# uvicorn logs WebSocket paths with their query, where the access token travels.
TOKEN_IN_QUERY = re.compile(r"(token=)[^&\s\"']+")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; tokens in URLs are blanked out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": TOKEN_IN_QUERY.sub(r"\1[redacted]", record.getMessage()),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        proxy_headers=True,
        log_config=None,  # the root logger above formats uvicorn's lines too
        access_log=False,  # ours (app.main.RequestLog) leaves the query string out
        ws_ping_interval=20,  # heartbeats, so dead sockets are dropped
        ws_ping_timeout=20,
    )
