"""The aiohttp application: routes, middlewares, the WebSocket hub, the worker and the durable store,
built from the ServerContext main.py hands in; and `serve_main(argv, setup)`, the `python main.py` entry."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from aiohttp import web

from graph.queue import PromptStore

from . import jobs, routes_files, routes_prompt, routes_system, routes_user, run_api
from .args import ArgsError, ServerOptions, parse_args
from .errors import error_middleware, json_response, log
from .openapi import build_openapi
from .pack_api import add_pack_routes
from .routing import Route, RouteTable
from .security import make_security_middleware
from .state import STATE, ServerContext, ServerState
from .worker import PromptWorker
from .ws import Hub

meta_routes = RouteTable("meta")


@meta_routes.get("/api/openapi.json", "This OpenAPI 3.1 document")
async def openapi_document(request: web.Request):
    return json_response(build_openapi(api_routes(), routes_system.VERSION))


def api_routes() -> list[Route]:
    tables = (routes_prompt.routes, jobs.routes, run_api.routes, routes_files.routes,
              routes_user.routes, routes_system.routes, meta_routes)
    return [r for t in tables for r in t.routes]


# Registered outside the route table because they are not JSON API operations.
NON_API_PATHS = ("/ws", "/api/ws", "/extensions/{name}/{path}", "/", "/{path}")


@web.middleware
async def cache_headers(request: web.Request, handler):
    response = await handler(request)
    path = request.path
    if path.endswith((".js", ".css")) or Path(path).name.startswith("index") and path.endswith(".json"):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def make_executor(registry, opts: ServerOptions):
    from graph.cache import make_cache
    from graph.executor import Executor

    return Executor(registry, cache=make_cache(**opts.cache_policy))


def build_app(opts: ServerOptions, context: ServerContext, *, store: PromptStore | None = None,
              executor=None, web_root: str | None = None) -> web.Application:
    """Everything but the listening socket. Tests pass their own context/store/executor."""
    if store is None:
        store = PromptStore(":memory:", max_history=opts.max_history)
    if executor is None:
        executor = make_executor(context.registry, opts)
    state = ServerState(opts=opts, store=store, registry=context.registry,
                        folder_paths=context.folder_paths, web_root=web_root,
                        packs=context.packs)
    completions = run_api.Completions()
    state.completions = completions
    hub = Hub(lambda: {"exec_info": {"queue_remaining": store.queue_remaining()}},
              opts.max_upload_bytes)
    worker = PromptWorker(store, hub, executor, preview_size=opts.preview_size,
                          preview_method=opts.preview_method, on_finished=completions.finished,
                          unload_models=context.unload_models, after_prompt=context.after_prompt)
    hub.running_node_for = worker.running_node_for
    state.hub, state.worker = hub, worker
    store.on_change = hub.broadcast_status

    security = make_security_middleware(check_host=opts.loopback_only,
                                        cors_origin=opts.enable_cors_header,
                                        auth_token=opts.auth_token)
    app = web.Application(client_max_size=opts.max_upload_bytes,
                          middlewares=[error_middleware, security, cache_headers])
    app[STATE] = state
    for route in api_routes():
        for path in route.registered_paths():
            app.router.add_route(route.method, path, route.handler)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    app.router.add_get("/extensions/{name}/{path:.+}", routes_system.extension_file)
    pack_server = context.pack_server
    if pack_server is not None:  # before the catch-all web file route, which would shadow them
        add_pack_routes(app.router, pack_server.routes)
    app.router.add_get("/", routes_system.web_file)
    app.router.add_get("/{path:.+}", routes_system.web_file)

    async def on_startup(app):
        await hub.start()
        if pack_server is not None:
            pack_server.attach(hub)
        await completions.start()
        interrupted = store.recover()
        if interrupted:
            log.warning("marked %d prompt(s) left running by a previous process as interrupted: %s",
                        len(interrupted), ", ".join(interrupted))
        worker.start()

    async def on_cleanup(app):
        worker.stop()
        if pack_server is not None:
            pack_server.detach(hub)
        await completions.stop()
        await hub.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve_main(argv: list[str], setup: Callable[[ServerOptions], ServerContext]) -> int:
    """`python main.py [options]`. `setup(opts)` is main.py's wiring: it applies the folder options
    (ValueError/OSError for bad ones) and returns the context; called once the options are checked."""
    try:
        opts = parse_args(argv)
    except ArgsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(opts.verbose).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        web_root = routes_system.web_root_from(opts)
        context = setup(opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    folder_paths = context.folder_paths
    for getter in ("get_input_directory", "get_output_directory", "get_user_directory"):
        os.makedirs(getattr(folder_paths, getter)(), exist_ok=True)
    temp = folder_paths.get_temp_directory()
    shutil.rmtree(temp, ignore_errors=True)  # previews are throwaway, as in ComfyUI
    db_path = opts.database or os.path.join(folder_paths.get_user_directory(), "queue.sqlite3")
    store = PromptStore(db_path, max_history=opts.max_history)
    app = build_app(opts, context, store=store, web_root=web_root)
    log.info("latentgraph serving on %s port %d (queue: %s)", ",".join(opts.hosts), opts.port, db_path)
    try:
        web.run_app(app, host=opts.hosts, port=opts.port, print=None, handle_signals=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        store.close()
    return 0
