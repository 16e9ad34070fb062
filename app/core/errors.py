"""What the app refuses, in its own words. Rules raise these where their data lives (the
repositories and services); app.core.http turns them into FastAPI's error shape, so nothing
below the routes imports FastAPI."""


class DomainError(Exception):
    status_code = 400
    retry_after: int | None = None
    headers: dict[str, str] | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(DomainError):
    status_code = 401

    def __init__(self, detail: str = "Could not validate credentials") -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": "Bearer"}


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Conflict(DomainError):
    status_code = 409


class TooLarge(DomainError):
    """More than a limit allows: the request stops here, and its connection is closed
    (the rest of its body is not read)."""

    status_code = 413

    def __init__(self, detail: str = "Content Too Large") -> None:
        super().__init__(detail)
        self.headers = {"Connection": "close"}


class Invalid(DomainError):
    """A field that names something unusable (an unknown user, a message of another
    thread): a 422 in FastAPI's own list shape, as if the field had failed validation."""

    status_code = 422

    def __init__(self, field: str, detail: str, where: str = "body") -> None:
        super().__init__(detail)
        self.loc = [where, field]


class Unavailable(DomainError):
    """Capacity is exhausted (a queue is full): retry soon."""

    status_code = 503
    retry_after = 1


class TooMany(DomainError):
    """A limit was reached: retry after `retry_after` seconds."""

    status_code = 429

    def __init__(
        self, retry_after: int, detail: str = "Too many requests; try again later"
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class TooManyAttempts(TooMany):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after, "Too many failed attempts; try again later")
