"""System routes: /system_stats, /features, /extensions, /api/packs, and the web root (/ and its files)."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from aiohttp import web

from .errors import ApiError, json_response
from .routing import RouteTable
from .security import resolve_inside
from .state import state_of
from .ws import server_features

routes = RouteTable("system")
VERSION = "0.1.0"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _ram() -> tuple[int, int]:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemTotal", 0), info.get("MemAvailable", 0)
    except OSError:
        return 0, 0


def _devices() -> list[dict]:
    # The server does not import torch itself (it never runs model code); if the nodes have loaded
    # it, report its devices.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append({"name": torch.cuda.get_device_name(i), "type": "cuda", "index": i,
                        "vram_total": total, "vram_free": free,
                        "torch_vram_total": torch.cuda.memory_reserved(i),
                        "torch_vram_free": torch.cuda.memory_reserved(i) - torch.cuda.memory_allocated(i)})
        return out
    total, free = _ram()
    return [{"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
             "torch_vram_total": total, "torch_vram_free": free}]


@routes.get("/system_stats", "Versions, RAM and devices")
async def system_stats(request: web.Request):
    total, free = _ram()
    return json_response({
        "system": {"os": sys.platform, "ram_total": total, "ram_free": free,
                   "comfyui_version": VERSION, "latentgraph_version": VERSION,
                   "required_frontend_version": "", "installed_templates_version": "",
                   "required_templates_version": "", "python_version": sys.version,
                   "pytorch_version": _version("torch"), "embedded_python": False,
                   "argv": sys.argv, "machine": platform.machine()},
        "devices": _devices(),
    })


@routes.get("/api/packs", "Custom node packs: status, node classes, load time, error (ours)")
async def packs(request: web.Request):
    return json_response(list(state_of(request).packs))


@routes.get("/features", "Server feature flags")
async def features(request: web.Request):
    return json_response(server_features(state_of(request).opts.max_upload_bytes))


@routes.get("/extensions", "JavaScript extension URLs to import")
async def extensions(request: web.Request):
    state = state_of(request)
    urls = []
    if state.web_root:
        ext_root = Path(state.web_root) / "extensions"
        if ext_root.is_dir():
            urls += sorted("/extensions/" + p.relative_to(ext_root).as_posix()
                           for p in ext_root.rglob("*.js"))
    for name, directory in _extension_dirs(state).items():
        urls += sorted(f"/extensions/{name}/" + p.relative_to(directory).as_posix()
                       for p in Path(directory).rglob("*.js"))
    return json_response(urls)


def _extension_dirs(state) -> dict:
    """{pack name: web directory} contributed by custom node packs, if the registry knows any."""
    dirs = getattr(state.registry, "web_directories", None)
    dirs = dirs() if callable(dirs) else dirs
    return dict(dirs or {})


async def extension_file(request: web.Request):
    """GET /extensions/{name}/{path}: a node pack's web file (web-root extensions otherwise)."""
    state = state_of(request)
    name, rel = request.match_info["name"], request.match_info["path"]
    dirs = _extension_dirs(state)
    if name in dirs:
        path = resolve_inside(dirs[name], rel)
    elif state.web_root:
        path = resolve_inside(Path(state.web_root) / "extensions", name, rel)
    else:
        raise ApiError(404, f"no extension {name!r}")
    if not path.is_file():
        raise ApiError(404, f"extension file not found: {name}/{rel}")
    return web.FileResponse(path)


async def web_file(request: web.Request):
    """The web root: / serves index.html, other paths the file under the root (no escapes)."""
    state = state_of(request)
    if not state.web_root:
        raise ApiError(404, "no web root configured (--front-end-root)")
    rel = request.match_info.get("path", "") or "index.html"
    path = resolve_inside(state.web_root, rel)
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file():
        raise ApiError(404, f"not found: /{rel}")
    headers = {}
    if path.name.startswith("index") or path.suffix in (".js", ".css"):
        headers["Cache-Control"] = "no-cache"
    return web.FileResponse(path, headers=headers)


def default_web_root() -> str | None:
    root = Path(__file__).resolve().parent.parent / "web"
    return str(root) if (root / "index.html").is_file() else None


def web_root_from(opts) -> str | None:
    if opts.front_end_root:
        if not os.path.isdir(opts.front_end_root):
            raise ValueError(f"--front-end-root {opts.front_end_root!r} is not a directory")
        return os.path.realpath(opts.front_end_root)
    return default_web_root()
