"""ComfyUI's `server.PromptServer` for custom node packs: packs `import server` and get our package,
whose module __getattr__ hands out this class (our own code never uses it).

    @PromptServer.instance.routes.get("/mypack/hello")      # served by the app, also under /api
    PromptServer.instance.send_sync("mypack.event", {...})   # to the WebSocket clients

One instance per process (packs register routes at import, before any app exists); wiring hands it
to the server through ServerContext.pack_server, and build_app attaches its Hub while it runs.
"""
from __future__ import annotations

import logging

from aiohttp import web

from graph import progress

log = logging.getLogger(__name__)


class PromptServer:
    instance: "PromptServer"

    def __init__(self):
        self.routes = web.RouteTableDef()
        self._hub = None

    def attach(self, hub) -> None:
        self._hub = hub

    def detach(self, hub) -> None:
        if self._hub is hub:
            self._hub = None

    def send_sync(self, event: str, data, sid: str | None = None) -> None:
        """Queue a WebSocket message (sid None: every client); headless, there is nobody to tell."""
        if self._hub is not None:
            self._hub.send_threadsafe(event, data, sid)

    # ComfyUI sets these on the server object as it executes; we read the running node instead.
    @property
    def client_id(self):
        run = progress.current_node()
        return run.extra_data.get("client_id") if run is not None else None

    @property
    def last_node_id(self):
        run = progress.current_node()
        return run.display_node_id if run is not None else None


PromptServer.instance = PromptServer()


def route_defs(routes) -> list:
    """A pack RouteTableDef as ComfyUI serves it: each route under /api too, then as written."""
    api = [web.RouteDef(d.method, "/api" + d.path, d.handler, d.kwargs)
           for d in routes if isinstance(d, web.RouteDef)]
    return api + list(routes)


def add_pack_routes(router, routes) -> None:
    for definition in route_defs(routes):
        try:
            definition.register(router)
        except (RuntimeError, ValueError) as e:  # a clash with one of ours or another pack's
            log.warning("custom node route %r not added: %s", definition, e)
