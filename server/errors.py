"""JSON errors for every rejected request, logged once, never with a stack trace in the body."""
from __future__ import annotations

import json
import logging

from aiohttp import web

log = logging.getLogger("latentgraph.server")


class ApiError(Exception):
    """Raised by handlers: becomes `{"error": message, ...extra}` with the given 4xx status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def json_response(data, status: int = 200, **kw) -> web.Response:
    return web.json_response(data, status=status, dumps=json.dumps, **kw)


def error_response(status: int, message: str, **extra) -> web.Response:
    body = {"error": message}
    body.update(extra)
    return json_response(body, status=status)


async def read_json(request: web.Request, *, default=..., expect=dict):
    """Parse the request body as JSON of type `expect`; an empty body gives `default` if set."""
    raw = await request.read()
    if not raw.strip():
        if default is not ...:
            return default
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if expect is not None and not isinstance(data, expect):
        raise ApiError(400, f"request body must be a JSON {expect.__name__}, got {type(data).__name__}")
    return data


def query_int(request: web.Request, name: str, minimum: int, default: int | None = None) -> int | None:
    """An integer query parameter of at least `minimum`; `default` when it is absent or empty."""
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ApiError(400, f"query parameter {name!r} must be >= {minimum}, got {n}")
    return n


def _reject(request: web.Request, status: int, message: str) -> None:
    log.warning("rejected %s %s -> %d: %s", request.method, request.path_qs[:200], status, message)


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        response = await handler(request)
    except ApiError as e:
        _reject(request, e.status, e.message)
        return error_response(e.status, e.message, **e.extra)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
        _reject(request, e.status, message)
        return error_response(e.status, message)
    except Exception:
        # A bug, not bad input: keep the trace in the log, never in the response.
        log.exception("internal error in %s %s", request.method, request.path)
        return error_response(500, "internal server error (see server log)")
    if response.status >= 400 and isinstance(response, web.Response):
        _reject(request, response.status, _error_message(response))
    return response


def _error_message(response: web.Response) -> str:
    """The message of a JSON error body a handler returned itself (e.g. a 400 with node_errors)."""
    try:
        error = json.loads(response.text or "null")["error"]
    except (ValueError, TypeError, KeyError, AttributeError):
        return f"status {response.status}"
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('message')} {error.get('details') or ''}".strip()
    return str(error)
