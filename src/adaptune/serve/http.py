"""HTTP plumbing shared by the routes: reading a bounded JSON body, validating it, the JSON error shape, the
API-key check."""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from .registry import ServeError

__all__ = ["check_key", "error_response", "field_of", "parse_body", "read_json"]

T = TypeVar("T", bound=BaseModel)


def error_response(status: int, message: str, field: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "field", "code"}}`` (OpenAI's error shape, plus the field at fault)."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"error": {"message": message, "type": kind, "field": field, "code": status}}
    return JSONResponse(body, status_code=status)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refusing bodies over ``limit`` bytes before reading them whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ServeError(400, "Content-Length: not a number", "body")
        if int(declared) > limit:
            raise ServeError(413, f"body: {declared} bytes, the limit is {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no Content-Length: count as they come
        size += len(chunk)
        if size > limit:
            raise ServeError(413, f"body: over the limit of {limit} bytes", "body")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ServeError(400, "body: empty; expected a JSON object", "body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise ServeError(400, "body: not UTF-8 text", "body") from None
    except json.JSONDecodeError as err:
        raise ServeError(
            400, f"body: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})", "body"
        ) from None


def field_of(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as a field path: ``("texts", 3)`` -> ``texts[3]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("body",):
            out += f".{part}" if out else str(part)
    return out or "body"


def parse_body(model: type[T], data: Any) -> T:
    """Validate ``data`` against ``model``; the first error becomes a 400 naming its field."""
    if not isinstance(data, dict):
        raise ServeError(400, f"body: expected a JSON object, got {type(data).__name__}", "body")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        # union types add the branch name (e.g. 'str') to the location: keep the request's own field names
        loc = tuple(p for p in first["loc"] if isinstance(p, int) or p in data or not _is_type_name(p))
        where = field_of(loc)
        raise ServeError(400, f"{where}: {first['msg']}", where) from None


def _is_type_name(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list") or "[" in part)


def check_key(request: Request, key: str | None) -> None:
    """401 unless the request carries ``key`` (``Authorization: Bearer KEY`` or ``X-API-Key: KEY``)."""
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ServeError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "authorization")
