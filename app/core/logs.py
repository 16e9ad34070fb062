"""Log lines: one JSON object each, and no token or query string in any of them."""

import json
import logging
import re
from typing import Any
from urllib.parse import unquote

# A query string may carry a WebSocket's access token (`token=`, or `%74oken=`): lines of
# the server's own loggers keep the path and drop the query, whatever started the app.
QUERY = re.compile(r"\?[^\s\"']*")
TOKEN = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    """A path (or a line) without its query or a token, even where they were encoded into the
    path (`%3Ftoken=`, by a client that encoded its whole URL)."""
    plain = unquote(text)
    if "?" not in plain and "token=" not in plain.lower():
        return text
    return TOKEN.sub(r"\1[redacted]", QUERY.sub("?[redacted]", plain))


class RedactQueries(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "?" in message or "token" in unquote(message).lower():
            # The arguments keep their shape: uvicorn's access formatter unpacks them.
            if isinstance(record.args, tuple):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
            if isinstance(record.msg, str) and "?" in record.msg:
                record.msg, record.args = redact(record.getMessage()), ()
        return True


def redact_server_logs() -> None:
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueries) for f in logger.filters):
            logger.addFilter(RedactQueries())


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; tokens in URLs are blanked out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": TOKEN.sub(r"\1[redacted]", unquote(record.getMessage())),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
