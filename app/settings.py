from functools import cached_property
from typing import Literal

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The key shipped for development and in .env.sample; production refuses both.
DEV_SECRET_KEY = "dev-secret-key-change-me"
SAMPLE_SECRET_KEYS = {"", DEV_SECRET_KEY, "changethis", "change-me"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///./app.db"
    secret_key: str = DEV_SECRET_KEY
    host: str = "127.0.0.1"
    port: int = 8080

    first_superuser_email: str | None = None
    first_superuser_password: str | None = None

    access_token_expire_minutes: int = 30
    refresh_token_expire_minutes: int = 43200

    login_failures_per_email: int = 5
    login_failures_per_address: int = 100
    login_failure_window_seconds: int = 900

    # Argon2id cost; the defaults are OWASP's minimum (19 MiB, 2 passes, 1 lane).
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1

    # A fixed pool: overflow connections would be opened and closed request after request.
    db_pool_size: int = 20
    db_max_overflow: int = 0
    cors_origins: list[str] = []

    @model_validator(mode="after")
    def _refuse_sample_secret_in_production(self) -> "Settings":
        if self.environment == "production" and self.secret_key in SAMPLE_SECRET_KEYS:
            raise ValueError(
                "SECRET_KEY is missing or a sample value; set a random one for production "
                '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )
        return self

    @cached_property
    def async_database_url(self) -> str:
        """The URL with an async driver: postgresql:// and postgres:// mean asyncpg."""
        url = self.database_url
        for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite://"):
            return "sqlite+aiosqlite://" + url[len("sqlite://") :]
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.async_database_url.startswith("sqlite")


def _load() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # One line that says what to fix, not a traceback.
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise SystemExit(f"Refusing to start: {reasons}") from None


settings = _load()
