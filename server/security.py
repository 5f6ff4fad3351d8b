"""Defences on by default: Host/Origin checks (CSRF, DNS rebinding), optional bearer token,
CORS when asked for, and the one path-resolution function every file route goes through."""
from __future__ import annotations

import hmac
import os
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .args import is_loopback
from .errors import ApiError, error_response

TOKEN_COOKIE = "latentgraph_token"


class PathEscape(ApiError):
    def __init__(self, what: str):
        super().__init__(403, f"path escapes its root: {what!r}")


def resolve_inside(root: str | os.PathLike, *parts: str) -> Path:
    """Join `parts` onto `root` and return the real path (symlinks resolved), refusing anything that
    lands outside root's real path: `..`, absolute parts, encoded separators, symlinks pointing out."""
    base = Path(os.path.realpath(root))
    for part in parts:
        if part is None:
            continue
        if "\x00" in part:
            raise ApiError(400, "path contains a NUL byte")
        if os.path.isabs(part) or part.startswith(("/", "\\")):
            raise PathEscape(part)
    joined = os.path.join(base, *[p for p in parts if p])
    real = Path(os.path.realpath(joined))
    if real != base and base not in real.parents:
        raise PathEscape(os.path.join(*[p for p in parts if p]) if any(parts) else str(root))
    return real


def _split_host(value: str) -> tuple[str, str]:
    """'127.0.0.1:8188' / '[::1]:80' / 'localhost' -> (host, port-or-'')."""
    parts = urlsplit("//" + value)
    try:
        port = str(parts.port or "")
    except ValueError:
        port = "?"
    return (parts.hostname or "").lower(), port


def _origin_hostport(origin: str) -> tuple[str, str]:
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.hostname or "").lower(), str(port or "")


def _host_port_with_default(host_header: str, scheme: str) -> tuple[str, str]:
    host, port = _split_host(host_header)
    return host, port or {"http": "80", "https": "443"}.get(scheme, "")


def request_token(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.query.get("token") or request.cookies.get(TOKEN_COOKIE)


def make_security_middleware(*, check_host: bool, cors_origin: str | None, auth_token: str | None):
    """check_host: refuse Host names that are not loopback (DNS rebinding), for loopback binds.
    cors_origin: None = same-origin only (cross-site Origin / Origin: null / Sec-Fetch-Site
    cross-site are 403); '*' or an origin = send CORS headers for it instead.
    auth_token: when set, every request must carry it."""

    @web.middleware
    async def security(request: web.Request, handler):
        host_header = request.headers.get("Host", "")
        if check_host and host_header:
            host, _ = _split_host(host_header)
            if not is_loopback(host):
                return _deny(request, 403, f"Host {host_header!r} is not a loopback name "
                             "(possible DNS rebinding); use 127.0.0.1 or localhost")
        origin = request.headers.get("Origin")
        if cors_origin is None:
            if origin is not None:
                if origin.strip().lower() == "null":
                    return _deny(request, 403, "Origin: null is not accepted (cross-site request)")
                if _origin_hostport(origin) != _host_port_with_default(host_header, request.scheme):
                    return _deny(request, 403, f"Origin {origin!r} does not match Host {host_header!r}")
            if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
                return _deny(request, 403, "cross-site request refused")
        elif request.method == "OPTIONS":
            return _with_cors(web.Response(status=200), cors_origin)

        if auth_token:
            given = request_token(request)
            if not given or not hmac.compare_digest(given.encode(), auth_token.encode()):
                return _deny(request, 401, "missing or wrong auth token (Authorization: Bearer <token>)")
        response = await handler(request)
        if auth_token and request.query.get("token") and request.path == "/":
            # A browser opened with ?token=... keeps it as a cookie for the editor's own calls.
            response.set_cookie(TOKEN_COOKIE, auth_token, httponly=True, samesite="Strict")
        if cors_origin is not None:
            _with_cors(response, cors_origin)
        return response

    return security


def _with_cors(response: web.StreamResponse, cors_origin: str):
    if not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = cors_origin
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, Comfy-User, Idempotency-Key"
        response.headers["Access-Control-Allow-Credentials"] = "true"
    return response


def _deny(request: web.Request, status: int, message: str) -> web.Response:
    # Logged once by errors.error_middleware, which wraps this middleware.
    return error_response(status, message)


# Served inline these could run script in our origin; /view and /userdata send them as downloads.
ACTIVE_CONTENT_SUFFIXES = {".html", ".htm", ".xhtml", ".js", ".mjs", ".css", ".svg", ".svgz", ".xml",
                           ".xsl", ".shtml", ".php", ".swf", ".pdf"}


def is_active_content(name: str) -> bool:
    return Path(name).suffix.lower() in ACTIVE_CONTENT_SUFFIXES
