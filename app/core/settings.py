"""Every setting of the core, from the environment or `.env`, in one class."""

import os
import re
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError
from sqlalchemy import make_url

# The key shipped for development and in .env.sample; production refuses both.
DEV_SECRET_KEY = "dev-secret-key-change-me"
SAMPLE_SECRET_KEYS = {"", DEV_SECRET_KEY, "changethis", "change-me"}
S = TypeVar("S", bound=BaseSettings)
DRIVERS = ("sqlite+aiosqlite://", "postgresql+asyncpg://")  # what async_url makes of ours
# What reaches SQL fits PostgreSQL's integer; a lifetime or a window, a date's range (a
# century at most). Past them, each request that uses one would fail.
Count = Annotated[int, Field(gt=0, le=2**31 - 1)]
Minutes = Annotated[int, Field(gt=0, le=100 * 365 * 24 * 60)]


class Settings(BaseSettings):
    # An empty variable is an unset one: compose passes `${VAR:-}` for what it may leave
    # out, and an empty SMTP_USERNAME must not be a login to try.
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    environment: Literal["development", "production"] = "development"
    # The app's title in the docs, and the issuer authenticator apps show for its codes.
    project_name: str = "FastAPI Boilerplate"
    database_url: str = "sqlite+aiosqlite:///./app.db"
    secret_key: str = DEV_SECRET_KEY
    # A direct connection for LISTEN and migrations when DATABASE_URL is a pooler's.
    database_url_direct: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    workers: PositiveInt = 1
    # Proxies whose X-Forwarded-For is believed (uvicorn's own setting); none by default.
    forwarded_allow_ips: str | None = None

    first_superuser_email: str | None = None
    first_superuser_password: str | None = None

    access_token_expire_minutes: Minutes = 30
    refresh_token_expire_minutes: Minutes = 43200

    login_failures_per_email: Count = 5
    login_failures_per_address: Count = 100
    login_failure_window_seconds: Annotated[int, Field(gt=0, le=100 * 365 * 24 * 3600)] = 900

    # Argon2id cost; the defaults are OWASP's minimum (19 MiB, 2 passes, 1 lane).
    argon2_memory_kib: PositiveInt = 19456
    argon2_time_cost: PositiveInt = 2
    argon2_parallelism: PositiveInt = 1

    # Password hashes waiting for a core beyond this answer 503 at once.
    hash_queue_size: PositiveInt = 32

    # A fixed pool: overflow connections would be opened and closed request after request.
    db_pool_size: PositiveInt = 20
    db_max_overflow: NonNegativeInt = 0
    db_pool_timeout: PositiveFloat = 10
    # Connections in use at once (about the pool's size) and how many may wait for a turn.
    max_concurrent_requests: PositiveInt = 24
    request_queue_size: NonNegativeInt = 1000
    # A request body must have arrived by then (408): slow bodies hold no slot meanwhile.
    request_body_timeout_seconds: PositiveFloat = 10
    # A request's headers must have arrived by then, or its connection is closed.
    request_headers_timeout_seconds: PositiveFloat = 10
    cors_origins: list[str] = []
    max_upload_bytes: PositiveInt = 10 * 1024 * 1024

    signups_per_address_per_hour: Count = 20
    mails_per_user_per_hour: Count = 5
    email_verification_required: bool = False
    smtp_host: str | None = None
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    mail_from: str = "no-reply@localhost"
    frontend_url: str = "http://localhost:8080"
    password_reset_expire_minutes: Minutes = 60
    email_verify_expire_minutes: Minutes = 2880
    # Retries of an undeliverable mail wait twice as long each time, up to this.
    mail_retry_max_seconds: PositiveInt = 300
    mail_retention_days: Annotated[int, Field(gt=0, le=100 * 365)] = 7
    # A mail the server still refuses after this many attempts is given up (`failed`).
    mail_max_attempts: PositiveInt = 20
    # redis://host:port/db: events between processes over Redis instead of NOTIFY.
    events_url: str | None = None
    metrics_enabled: bool = False
    sentry_dsn: str | None = None
    # Uploaded files: this folder (relative to the working folder) unless S3_BUCKET is set.
    upload_dir: str = "uploads"
    # Unset keys and region fall back to boto's usual chain (environment, instance role).
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    @field_validator("database_url", "database_url_direct")
    @classmethod
    def _sqlite_or_postgresql(cls, url: str | None) -> str | None:
        if url is not None and not async_url(url).startswith(DRIVERS):
            raise ValueError("not an sqlite:// or postgresql:// URL")
        return url

    @field_validator("events_url")
    @classmethod
    def _redis(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("not a redis://, rediss:// or unix:// URL")
        return url

    @model_validator(mode="after")
    def _refuse_sample_secret_in_production(self) -> "Settings":
        key = self.secret_key
        weak = key in SAMPLE_SECRET_KEYS or len(key) < 32 or len(set(key)) < 10
        if self.environment == "production" and weak:
            raise ValueError(
                "SECRET_KEY is missing, a sample value, shorter than 32 characters or made "
                "of fewer than 10 different ones; set a random one for production "
                '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        return self

    @cached_property
    def async_database_url(self) -> str:
        return async_url(self.database_url)

    @cached_property
    def direct_database_url(self) -> str:
        return async_url(self.database_url_direct or self.database_url)

    @property
    def behind_pooler(self) -> bool:
        """A pooler in transaction mode shares server connections between clients, so
        prepared statements cannot be cached on them."""
        return self.direct_database_url != self.async_database_url

    @property
    def database_name(self) -> str:
        """The database as every process of one app names it, on every machine: an SQLite
        file's full path (one machine), a PostgreSQL database's name (not its host: each
        machine may reach the one server by another name)."""
        url = make_url(self.direct_database_url)
        if url.get_backend_name() == "sqlite":
            return os.path.abspath(url.database or "")
        return url.database or ""

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")


def async_url(url: str) -> str:
    """The URL with an async driver: postgresql:// and postgres:// mean asyncpg."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def load(cls: type[S]) -> S:
    """The settings, or one line that names what to fix, not a traceback: a value no process
    can work with (a size of 0, a negative time) stops it here, not at its first request."""
    try:
        return cls()
    except ValidationError as exc:
        reasons = "; ".join(map(_reason, exc.errors()))
    except SettingsError as exc:  # a list that is not JSON: it names the field in its text
        name = re.search(r'field "(\w+)"', str(exc))
        reasons = f"{name[1].upper() if name else exc}: not JSON ({exc.__cause__})"
    raise SystemExit(f"Refusing to start: {reasons}")


def _reason(error: Any) -> str:
    name = str(error["loc"][0]).upper() if error["loc"] else ""  # not a list's item's place
    reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{name}: {reason}" if name else reason


settings = load(Settings)
