"""What the data layer refuses, in its own words; app.middleware turns these into HTTP."""


class DomainError(Exception):
    status_code = 400
    retry_after: int | None = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class Forbidden(DomainError):
    status_code = 403


class Conflict(DomainError):
    status_code = 409


class Unavailable(DomainError):
    """Capacity is exhausted (a queue is full): retry soon."""

    status_code = 503
    retry_after = 1


class TooManyAttempts(DomainError):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("Too many failed attempts; try again later")
        self.retry_after = retry_after
