"""OpenAPI 3.1 document generated from the route table (the same list the app registers)."""
from __future__ import annotations

import re

from .routing import Route

_PARAM = re.compile(r"\{(\w+)\}")
_JSON_ERROR = {"description": "Bad request: {\"error\": ...}",
               "content": {"application/json": {"schema": {"type": "object"}}}}


def _operation(route: Route) -> dict:
    params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
              for name in _PARAM.findall(route.path)]
    op = {
        "operationId": f"{route.method.lower()}_{route.handler.__name__}",
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {"200": {"description": "OK"}, "400": _JSON_ERROR},
    }
    if params:
        op["parameters"] = params
    if route.method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {}}}}
    return op


def build_openapi(routes: list[Route], version: str) -> dict:
    paths: dict = {}
    for route in routes:
        for i, path in enumerate(route.registered_paths()):
            op = _operation(route)
            if i:
                op["operationId"] += "_api"
            paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "latentgraph", "version": version,
                 "description": "ComfyUI-compatible HTTP API. Every route outside /api/ and "
                                "/internal/ is also served under /api. WebSocket: GET /ws."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": dict(sorted(paths.items())),
    }
