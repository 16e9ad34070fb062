"""The messenger's own settings, from the environment or `.env` like the core's, and
refused at start-up like them."""

from pydantic import Field, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.settings import Count, Minutes, load


class MessengerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    ws_max_per_user: PositiveInt = 10  # sockets per user per process; one more: 4429
    messages_per_minute: Count = 120  # sends per user within 60 s, across processes
    # A search statement's time limit: past it, 503. PostgreSQL counts whole milliseconds
    # (0 would be no limit at all), up to 2^31 - 1 of them.
    search_seconds: float = Field(2.0, ge=0.001, le=2_147_483)
    max_pending_uploads: Count = 20  # uploads of one user that no message carries yet
    upload_expire_minutes: Minutes = 1440  # an upload no message carries is deleted after this


messenger_settings = load(MessengerSettings)
