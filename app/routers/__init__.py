"""What every router shares: parameter types and the error responses they document."""

from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.convertors import PathConvertor, register_url_convertor


class Problem(BaseModel):
    """FastAPI's error shape."""

    detail: str


DESCRIPTIONS = {
    400: "Malformed request: a body that is not JSON, or a cursor that is not ours",
    401: "No token, or a bad, expired or revoked one",
    403: "The token lacks a scope this needs, or the caller may see but not change this",
    404: "Not found, or not visible to the caller",
    409: "Conflicts with existing data",
    413: "Request body over 1 MiB",
    429: "Too many failed attempts; see Retry-After",
    503: "Capacity exhausted (database, connection pool, hashing queue); see Retry-After",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entry documenting these error statuses."""
    return {code: {"model": Problem, "description": DESCRIPTIONS[code]} for code in codes}


def invalid(field: str, message: str, where: str = "body") -> RequestValidationError:
    """A 422 in FastAPI's own shape, for a body field that names something unusable."""
    return RequestValidationError(
        [{"type": "value_error", "loc": [where, field], "msg": message, "input": None}]
    )


class AnyText(PathConvertor):
    """A path parameter of any text, `/` and line breaks too: its own rule refuses them with
    a 422 (the `path` convertor stops at a line break, the default one at `/`: 404s)."""

    regex = "(?s:.*)"


register_url_convertor("text", AnyText())
