"""The route table: every HTTP route is declared once here-style (method, path, summary), so the
app registers it (at /path and /api/path) and openapi.py documents it from the same list."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable
    summary: str
    # ComfyUI serves its routes at /path and /api/path; /internal/* and /api/* paths only as written.
    alias: bool = True
    tag: str = "misc"

    def registered_paths(self) -> list[str]:
        if self.alias and not self.path.startswith(("/api/", "/internal/")):
            return [self.path, "/api" + self.path]
        return [self.path]


@dataclass
class RouteTable:
    tag: str
    routes: list[Route] = field(default_factory=list)

    def route(self, method: str, path: str, summary: str, *, alias: bool = True):
        def register(handler):
            self.routes.append(Route(method, path, handler, summary, alias, self.tag))
            return handler
        return register

    def get(self, path: str, summary: str, **kw):
        return self.route("GET", path, summary, **kw)

    def post(self, path: str, summary: str, **kw):
        return self.route("POST", path, summary, **kw)

    def delete(self, path: str, summary: str, **kw):
        return self.route("DELETE", path, summary, **kw)
