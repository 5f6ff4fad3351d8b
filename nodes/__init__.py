"""Node families and the registry that collects them.

Built-in node modules are listed in BUILTIN_MODULES; each exposes NODE_CLASS_MAPPINGS (and
optionally NODE_DISPLAY_NAME_MAPPINGS). Adding a family is one line there. Modules are imported
only when a registry is built, and one failing import is logged, not fatal.

This package is also what custom node packs get for ComfyUI's `import nodes` (its nodes.py): it
exports MAX_RESOLUTION, and NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS of the core classes,
built on first access (PEP 562 module __getattr__), so importing `nodes` stays cheap for our code.
"""
from __future__ import annotations

import importlib
import logging

from nodes import folder_paths  # noqa: F401  (re-exported: `from nodes import folder_paths`)
from nodes.registry import NodeRegistry
from nodes.spec import MAX_RESOLUTION

log = logging.getLogger(__name__)

BUILTIN_MODULES = [
    "nodes.utility_nodes",
    "nodes.image_nodes",
    "nodes.sd_loaders", "nodes.sd_conditioning", "nodes.sd_latent", "nodes.sd_sampling",
    "nodes.conditioning_nodes",
    "nodes.latent_nodes",
    "nodes.image_ops",
    "nodes.mask_nodes",
    "nodes.custom_sampling",
    "nodes.vision_nodes",
    "nodes.model_patch_nodes",
    "nodes.gligen_nodes",
    "nodes.controlnet_nodes",
    "nodes.lora_nodes",
    "nodes.merge_nodes",
    "nodes.loader_nodes",
    "nodes.batch_nodes",
    "nodes.upscale_nodes",
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


def __getattr__(name):
    """NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS for packs: the core classes by name, built
    once and then kept as ordinary module attributes (a pack reading them twice sees one dict)."""
    if name not in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        raise AttributeError(f"module 'nodes' has no attribute {name!r}")
    core = load_registry()
    globals()["NODE_CLASS_MAPPINGS"] = {t: core.get_class(t) for t in core.class_types()}
    globals()["NODE_DISPLAY_NAME_MAPPINGS"] = {t: core.display_name(t) for t in core.class_types()}
    return globals()[name]


__all__ = ["BUILTIN_MODULES", "MAX_RESOLUTION", "NodeRegistry", "folder_paths", "load_registry"]
