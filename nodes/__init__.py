"""Node families and the registry that collects them.

Built-in node modules are listed in BUILTIN_MODULES; each exposes NODE_CLASS_MAPPINGS (and
optionally NODE_DISPLAY_NAME_MAPPINGS). Adding a family is one line there. Modules are imported
only when a registry is built, and one failing import is logged, not fatal.
"""
from __future__ import annotations

import importlib
import logging

from nodes import folder_paths  # noqa: F401  (re-exported: `from nodes import folder_paths`)
from nodes.registry import NodeRegistry

log = logging.getLogger(__name__)

BUILTIN_MODULES = [
    "nodes.utility_nodes",
    "nodes.image_nodes",
    "nodes.sd_loaders", "nodes.sd_conditioning", "nodes.sd_latent", "nodes.sd_sampling",
]


def load_registry(modules=None) -> NodeRegistry:
    """A fresh registry with every built-in node module that imports."""
    registry = NodeRegistry()
    for name in (BUILTIN_MODULES if modules is None else modules):
        try:
            module = importlib.import_module(name)
        except Exception:
            log.exception("node module %s failed to import; its nodes are unavailable", name)
            continue
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if not isinstance(mappings, dict):
            log.warning("node module %s has no NODE_CLASS_MAPPINGS; skipped", name)
            continue
        registry.register_mappings(mappings, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None),
                                   python_module="nodes")
    return registry


_runner = None


def run_workflow(workflow, overrides=None):
    """Run a workflow (dict, JSON/PNG path or PNG bytes) with every built-in node.

    Returns a graph.runner.RunResult (`.outputs` per node, `.files(folder_paths)`); raises
    graph.runner.RunError with a readable message. One runner is kept for the process, so its
    cache and loaded models are reused: a second call with one value changed re-runs only what
    depends on it.
    """
    global _runner
    if _runner is None:
        from graph.runner import Runner

        _runner = Runner(load_registry())
    return _runner.run(workflow, overrides=overrides)


def after_prompt() -> None:
    """Between prompts: models stay loaded unless --disable-smart-memory asked otherwise."""
    import sys

    memory = sys.modules.get("diffusion.memory")
    if memory is not None:
        memory.cleanup_after_prompt()


def unload_models() -> None:
    """Drop every loaded model from memory (POST /free). Imported lazily: the server calls this
    without loading the model runtime when nothing was ever loaded."""
    import sys

    memory = sys.modules.get("diffusion.memory")
    if memory is not None:
        memory.unload_all_models()


__all__ = ["BUILTIN_MODULES", "NodeRegistry", "after_prompt", "folder_paths", "load_registry",
           "run_workflow", "unload_models"]
