"""What main.py plugs together, in one place: the built-in node registry and the custom node packs
loaded into it (their import report goes to the log and to GET /api/packs), the folder layout
(--base-directory and friends, extra_model_paths.yaml) and the model housekeeping hooks, handed to
server/ as a ServerContext; and the one-call Python API, `run_workflow`.

    from wiring import run_workflow
    result = run_workflow("workflows/default.json", overrides={"3.seed": 7})
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from nodes import folder_paths, load_registry
from nodes.custom_packs import PackOptions, format_report, registry_with_packs
from nodes.extra_model_paths import load_extra_model_paths
from server.pack_api import PromptServer
from server.state import ServerContext

ROOT = Path(__file__).resolve().parent
log = logging.getLogger("latentgraph")


def configure_folders(opts, folders) -> None:
    """Apply the directory options to folder_paths, then the extra model path YAML files."""
    if opts.base_directory:
        folders.set_base_path(os.path.abspath(opts.base_directory))
    for flag, setter in (("output_directory", "set_output_directory"),
                         ("input_directory", "set_input_directory"),
                         ("user_directory", "set_user_directory")):
        value = getattr(opts, flag)
        if value:
            getattr(folders, setter)(os.path.abspath(value))
    if opts.temp_directory:
        folders.set_temp_directory(os.path.join(os.path.abspath(opts.temp_directory), "temp"))
    default_yaml = ROOT / "extra_model_paths.yaml"
    configs = ([str(default_yaml)] if default_yaml.is_file() else []) + list(opts.extra_model_paths_config)
    for config in configs:
        load_extra_model_paths(config, folders)
    folders.add_output_model_paths()


# The hooks look diffusion.memory up instead of importing it: a server that never loaded a model
# answers POST /free and finishes prompts without importing the model runtime.
def after_prompt() -> None:
    """Between prompts: models stay loaded unless --disable-smart-memory asked otherwise."""
    memory = sys.modules.get("diffusion.memory")
    if memory is not None:
        memory.cleanup_after_prompt()


def unload_models() -> None:
    """Drop every loaded model from memory (POST /free, and after an out-of-memory error)."""
    memory = sys.modules.get("diffusion.memory")
    if memory is not None:
        memory.unload_all_models()


def load_with_packs(registry_factory: Callable = load_registry,
                    pack_options: PackOptions = PackOptions(), report=None) -> tuple:
    """(registry, pack reports): the core registry plus the custom node packs of the configured
    custom_nodes folders; the import-time report goes to `report` (default: the log)."""
    registry, reports = registry_with_packs(registry_factory, folder_paths.get_folder_paths("custom_nodes"),
                                            pack_options)
    if reports:
        (report or log.info)(format_report(reports))
    # The server serves these under /extensions/<pack>/ (a registry extra it reads when present).
    web = {r.name: r.web_directory for r in reports if r.status == "OK" and r.web_directory}
    if web:
        registry.web_directories = {**(getattr(registry, "web_directories", None) or {}), **web}
    return registry, reports


def headless_registry_factory(pack_options: PackOptions = PackOptions()) -> Callable:
    """`main.py run`/`convert`'s registry factory: packs loaded, their report on stderr."""
    def factory():
        return load_with_packs(load_registry, pack_options,
                               report=lambda text: print(text, file=sys.stderr))[0]
    return factory


def server_context(registry, packs=()) -> ServerContext:
    """`registry` with the built-in folders and housekeeping hooks, as the server is handed them."""
    return ServerContext(registry, folder_paths, unload_models=unload_models, after_prompt=after_prompt,
                         packs=tuple(r.as_dict() for r in packs), pack_server=PromptServer.instance)


def server_setup(opts, registry_factory: Callable = load_registry,
                 pack_options: PackOptions = PackOptions()) -> ServerContext:
    """serve_main's `setup`: folders first (bad ones fail before the registry imports the model
    runtime, which takes seconds), then the registry with the custom node packs, and the
    metadata switch."""
    configure_folders(opts, folder_paths)
    context = server_context(*load_with_packs(registry_factory, pack_options))
    if opts.disable_metadata:
        from nodes import image_nodes

        image_nodes.DISABLE_METADATA = True
    return context


_runner = None


def run_workflow(workflow, overrides=None):
    """Run a workflow (dict, JSON/PNG path or PNG bytes) with every built-in node.

    Returns a graph.runner.RunResult (`.outputs` per node, `.files(folder_paths)` for every image
    written, `.previews(folder_paths)` for the PreviewImage ones, which live in folder_paths' temp
    folder: the server empties it when it starts, so copy what you keep); raises
    graph.runner.RunError with a readable message. One runner is kept for the process, so its
    cache and loaded models are reused: a second call with one value changed re-runs only what
    depends on it.
    """
    global _runner
    if _runner is None:
        from graph.runner import Runner

        _runner = Runner(load_registry())
    return _runner.run(workflow, overrides=overrides)
