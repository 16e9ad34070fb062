"""The messenger's own settings, from the environment or `.env` like the core's."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class MessengerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    ws_max_per_user: int = 10  # sockets per user per process; one more is closed with 4429
    messages_per_minute: int = 120  # sends per user within 60 s, across processes
    search_seconds: float = 2.0  # a search statement's time limit: past it, 503
    max_pending_uploads: int = 20  # uploads of one user that no message carries yet
    upload_expire_minutes: int = 1440  # an upload no message carries is deleted after this


messenger_settings = MessengerSettings()
