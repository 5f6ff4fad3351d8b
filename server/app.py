"""The aiohttp application: wiring of routes, middlewares, the WebSocket hub, the worker and the
durable store; and `serve_main(argv)`, the `python main.py` entry."""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from aiohttp import web

from graph.queue import PromptStore

from . import jobs, routes_files, routes_prompt, routes_system, routes_user, run_api
from .args import ArgsError, ServerOptions, parse_args
from .errors import error_middleware, json_response, log
from .openapi import build_openapi
from .routing import Route, RouteTable
from .security import make_security_middleware
from .state import STATE, ServerState
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


def build_app(opts: ServerOptions, *, registry, folder_paths, store: PromptStore | None = None,
              executor=None, web_root: str | None = None, unload_models=None,
              after_prompt=None) -> web.Application:
    """Everything but the listening socket. Tests pass their own registry/store/executor."""
    if store is None:
        store = PromptStore(":memory:", max_history=opts.max_history)
    if executor is None:
        executor = make_executor(registry, opts)
    state = ServerState(opts=opts, store=store, registry=registry, folder_paths=folder_paths,
                        web_root=web_root)
    completions = run_api.Completions()
    state.completions = completions
    hub = Hub(lambda: {"exec_info": {"queue_remaining": store.queue_remaining()}},
              opts.max_upload_bytes)
    worker = PromptWorker(store, hub, executor, preview_size=opts.preview_size,
                          preview_method=opts.preview_method, on_finished=completions.finished,
                          unload_models=unload_models, after_prompt=after_prompt)
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
    app.router.add_get("/", routes_system.web_file)
    app.router.add_get("/{path:.+}", routes_system.web_file)

    async def on_startup(app):
        await hub.start()
        await completions.start()
        interrupted = store.recover()
        if interrupted:
            log.warning("marked %d prompt(s) left running by a previous process as interrupted: %s",
                        len(interrupted), ", ".join(interrupted))
        worker.start()

    async def on_cleanup(app):
        worker.stop()
        await completions.stop()
        await hub.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def configure_folders(opts: ServerOptions, folder_paths) -> None:
    """Apply the directory options to folder_paths, then the extra model path YAML files."""
    from nodes.extra_model_paths import load_extra_model_paths

    if opts.base_directory:
        folder_paths.set_base_path(os.path.abspath(opts.base_directory))
    for flag, setter in (("output_directory", "set_output_directory"),
                         ("input_directory", "set_input_directory"),
                         ("user_directory", "set_user_directory")):
        value = getattr(opts, flag)
        if value:
            getattr(folder_paths, setter)(os.path.abspath(value))
    if opts.temp_directory:
        folder_paths.set_temp_directory(os.path.join(os.path.abspath(opts.temp_directory), "temp"))
    default_yaml = Path(__file__).resolve().parent.parent / "extra_model_paths.yaml"
    configs = ([str(default_yaml)] if default_yaml.is_file() else []) + list(opts.extra_model_paths_config)
    for config in configs:
        load_extra_model_paths(config, folder_paths)
    folder_paths.add_output_model_paths()


def serve_main(argv: list[str], registry=None, folder_paths=None) -> int:
    try:
        opts = parse_args(argv)
    except ArgsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(opts.verbose).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if folder_paths is None:
        from nodes import folder_paths
    try:
        configure_folders(opts, folder_paths)
        web_root = routes_system.web_root_from(opts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if registry is None:
        from nodes import load_registry
        registry = load_registry()
    if opts.disable_metadata:
        import nodes.image_nodes

        nodes.image_nodes.DISABLE_METADATA = True
    for getter in ("get_input_directory", "get_output_directory", "get_user_directory"):
        os.makedirs(getattr(folder_paths, getter)(), exist_ok=True)
    temp = folder_paths.get_temp_directory()
    shutil.rmtree(temp, ignore_errors=True)  # previews are throwaway, as in ComfyUI
    db_path = opts.database or os.path.join(folder_paths.get_user_directory(), "queue.sqlite3")
    store = PromptStore(db_path, max_history=opts.max_history)
    import nodes  # model housekeeping (POST /free, between prompts) is the nodes package's business
    app = build_app(opts, registry=registry, folder_paths=folder_paths, store=store, web_root=web_root,
                    unload_models=getattr(nodes, "unload_models", None),
                    after_prompt=getattr(nodes, "after_prompt", None))
    log.info("latentgraph serving on %s port %d (queue: %s)", ",".join(opts.hosts), opts.port, db_path)
    try:
        web.run_app(app, host=opts.hosts, port=opts.port, print=None, handle_signals=True)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        store.close()
    return 0
