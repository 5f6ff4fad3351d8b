"""Custom node packs: discovery and loading of custom_nodes/ (COMPAT §7).

    report = load_custom_packs(registry, folder_paths.get_folder_paths("custom_nodes"))

Discovery: each search root in os.listdir order; `*.py` files and directories, skipping names
ending `.disabled` and `__pycache__`. Every pack's `prestartup_script.py` runs before any pack is
imported. A directory is imported as a package from its `__init__.py` (relative imports work), a
file as a module. The sys.modules name is the pack's full path with `.` replaced by `_x_`, as
ComfyUI does: a pack folder called `graph` or `server` then cannot shadow our own packages. The
pack's *name* (file stem or folder name) is what the report, `/api/packs` and `/object_info`
(`python_module: custom_nodes.<name>`) show.

Registration: core node names are never overridden (the clash is reported); a later pack does
replace an earlier pack's class of the same name, as in ComfyUI. A class whose INPUT_TYPES raises
or that lacks FUNCTION/RETURN_TYPES is reported and skipped; the rest of its pack loads. A pack
that raises on import or has no NODE_CLASS_MAPPINGS is reported as failed.

Packs import ComfyUI's module names. `folder_paths` is aliased to nodes.folder_paths (the same
module object, so paths registered by a pack are ours too); `nodes` is our own package, which
exports MAX_RESOLUTION and a lazily built NODE_CLASS_MAPPINGS of the core classes (nodes/__init__).
`server` is our package (its PromptServer is server/pack_api.py); `comfy.utils` and
`comfy.model_management` come from compat/, which is appended to sys.path (so it shadows nothing of
ours) when packs load. Other ComfyUI modules (execution, comfy.sd...) are not provided yet.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

log = logging.getLogger(__name__)

PRESTARTUP_SCRIPT = "prestartup_script.py"
# ComfyUI module name -> our module that packs get when they import it.
COMPAT_ALIASES = {"folder_paths": "nodes.folder_paths"}
# compat/ sits next to nodes/ in the source tree and in an install (pyproject packages it).
COMPAT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat")


@dataclass
class PackReport:
    """One pack's outcome, as the start-up log and GET /api/packs show it."""

    name: str
    path: str
    status: str = "OK"                      # "OK" or "FAILED"
    seconds: float = 0.0
    error: Optional[str] = None             # why it failed (the missing module's name if that is why)
    node_classes: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)  # class_type -> why it was not registered
    web_directory: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PackOptions:
    """--disable-all-custom-nodes / --whitelist-custom-nodes: with everything disabled, only the
    whitelisted pack names load."""

    disable_all: bool = False
    whitelist: tuple = ()

    def allows(self, name: str) -> bool:
        return not self.disable_all or name in self.whitelist


def pack_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    return base[:-3] if base.endswith(".py") else base


def discover(roots: Iterable[str], options: PackOptions = PackOptions()) -> list[str]:
    """Paths of the packs under `roots`, in os.listdir order per root."""
    found = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        for entry in os.listdir(root):
            path = os.path.join(root, entry)
            if entry == "__pycache__" or entry.endswith(".disabled"):
                continue
            if os.path.isfile(path) and not entry.endswith(".py"):
                continue
            if not os.path.isdir(path) and not os.path.isfile(path):
                continue
            if not options.allows(pack_name(path)):
                log.info("custom node pack %s skipped (custom nodes disabled, not whitelisted)", entry)
                continue
            found.append(path)
    return found


def run_prestartup_scripts(paths: Iterable[str]) -> None:
    """Each directory pack's prestartup_script.py, before any pack imports; failures are logged."""
    for path in paths:
        script = os.path.join(path, PRESTARTUP_SCRIPT)
        if not os.path.isfile(script):
            continue
        try:
            spec = importlib.util.spec_from_file_location(_sys_module_name(script), script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception:
            log.exception("prestartup script of custom node pack %s failed", pack_name(path))


def install_compat_modules() -> None:
    """Make ComfyUI's top-level module names that we provide importable by packs."""
    for alias, target in COMPAT_ALIASES.items():
        sys.modules.setdefault(alias, importlib.import_module(target))
    if COMPAT_DIR not in sys.path:
        sys.path.append(COMPAT_DIR)


def _sys_module_name(path: str) -> str:
    return os.path.normpath(path).replace(".", "_x_")


def _import_pack(path: str):
    init = os.path.join(path, "__init__.py") if os.path.isdir(path) else path
    if not os.path.isfile(init):
        raise ImportError(f"{path} is a folder without __init__.py")
    name = _sys_module_name(path)
    locations = [path] if os.path.isdir(path) else None
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"missing module {exc.name!r}"
    return f"{type(exc).__name__}: {exc}"


def _class_problem(class_type: str, cls) -> Optional[str]:
    """Why a pack class cannot be a node, else None."""
    if not isinstance(cls, type):
        return f"{class_type} is not a class ({type(cls).__name__})"
    for attr in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(cls, attr):
            return f"{class_type} lacks {attr}"
    if not hasattr(cls, getattr(cls, "FUNCTION")):
        return f"{class_type}.FUNCTION names {cls.FUNCTION!r}, which the class does not define"
    try:
        types = cls.INPUT_TYPES()
    except Exception as e:
        return f"{class_type}.INPUT_TYPES() raised {type(e).__name__}: {e}"
    if not isinstance(types, dict):
        return f"{class_type}.INPUT_TYPES() returned {type(types).__name__}, not a dict"
    return None


def _register_pack(registry, report: PackReport, module, core_names: set) -> None:
    core_classes = {id(registry.get_class(name)) for name in core_names}
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if not isinstance(mappings, dict):
        report.status, report.error = "FAILED", "no NODE_CLASS_MAPPINGS"
        return
    python_module = f"custom_nodes.{report.name}"
    usable = {}
    for class_type, cls in mappings.items():
        if class_type in core_names:
            report.skipped[class_type] = "name of a core node (core kept)"
            continue
        problem = _class_problem(class_type, cls)
        if problem:
            report.skipped[class_type] = problem
            continue
        if "RELATIVE_PYTHON_MODULE" not in vars(cls) and id(cls) not in core_classes:
            # ComfyUI stamps each pack class (a subclass of a core node must not report its base's
            # module); a core class a pack maps under a new name is left untouched.
            cls.RELATIVE_PYTHON_MODULE = python_module
        usable[class_type] = cls
    displays = {k: v for k, v in (getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}).items()
                if k in usable}
    report.node_classes = registry.register_mappings(usable, displays, python_module=python_module)
    for class_type, why in report.skipped.items():
        log.warning("custom node pack %s: node %s skipped: %s", report.name, class_type, why)
    web = getattr(module, "WEB_DIRECTORY", None)
    if isinstance(web, str) and os.path.isdir(report.path):
        directory = os.path.normpath(os.path.join(report.path, web))
        if os.path.isdir(directory):
            report.web_directory = directory


def load_pack(registry, path: str, core_names: set) -> PackReport:
    report = PackReport(pack_name(path), os.path.abspath(path))
    start = time.perf_counter()
    try:
        module = _import_pack(path)
    except Exception as e:
        report.status, report.error = "FAILED", _failure_reason(e)
        log.error("custom node pack %s failed to import:\n%s", report.name, traceback.format_exc())
    else:
        _register_pack(registry, report, module, core_names)
        if report.status == "FAILED":
            log.warning("custom node pack %s: %s; skipped", report.name, report.error)
    report.seconds = time.perf_counter() - start
    return report


def load_custom_packs(registry, paths: Iterable[str]) -> list[PackReport]:
    """Import and register the packs at `paths` (from discover()); returns the reports.
    `registry` already holds the core nodes, whose names packs cannot take."""
    paths = list(paths)
    if paths:
        install_compat_modules()
    core_names = set(registry.class_types())
    return [load_pack(registry, path, core_names) for path in paths]


def registry_with_packs(registry_factory, roots: Iterable[str],
                        options: PackOptions = PackOptions()) -> tuple:
    """(registry, reports): the packs under `roots` discovered and their prestartup scripts run
    first, then the core registry built, then the packs loaded into it."""
    paths = discover(roots, options)
    run_prestartup_scripts(paths)
    registry = registry_factory()
    return registry, load_custom_packs(registry, paths)


def format_report(reports: list[PackReport]) -> str:
    """The import-time table, like ComfyUI's "Import times for custom nodes"."""
    lines = ["Import times for custom nodes:"]
    for r in sorted(reports, key=lambda r: r.seconds):
        status = "OK" if r.status == "OK" else f"FAILED ({r.error})"
        lines.append(f"{r.seconds:8.1f} seconds: {r.name} {status}  [{r.path}]")
    return "\n".join(lines)
