"""Per-user storage: /users, /settings, /userdata (list, v2 list, file GET/POST/DELETE, move), /i18n.
Single-user mode: everything lives under <user directory>/default/."""
from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path

from aiohttp import web

from .errors import ApiError, json_response, read_json
from .routes_files import file_response
from .routing import RouteTable
from .security import resolve_inside
from .state import state_of

routes = RouteTable("user")
SETTINGS_FILE = "comfy.settings.json"
# Served unless the user stored otherwise: skip the first-run template browser and the outside
# release check (Appendix A).
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False}
_settings_lock = threading.Lock()


def user_root(request: web.Request) -> Path:
    state = state_of(request)
    root = resolve_inside(state.folder_paths.get_user_directory(), state.user_id)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _flag(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    return value.lower() in ("true", "1", "yes")


# ---- users & settings ----------------------------------------------------------------------------
@routes.get("/users", "User storage mode")
async def get_users(request: web.Request):
    return json_response({"storage": "server", "migrated": True})


@routes.post("/users", "Create a user; returns its id")
async def post_users(request: web.Request):
    body = await read_json(request)
    name = body.get("username")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "username must be a non-empty string")
    users_file = Path(state_of(request).folder_paths.get_user_directory()) / "users.json"
    users = json.loads(users_file.read_text()) if users_file.is_file() else {}
    if name in users.values():
        raise ApiError(400, f"duplicate username {name!r}")
    user_id = re.sub(r"[^a-zA-Z0-9_]", "-", name.strip()) + "_" + uuid.uuid4().hex
    users[user_id] = name
    users_file.parent.mkdir(parents=True, exist_ok=True)
    users_file.write_text(json.dumps(users))
    return json_response(user_id)


def _load_settings(request) -> dict:
    path = user_root(request) / SETTINGS_FILE
    stored = {}
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            stored = {}
    return {**DEFAULT_SETTINGS, **(stored if isinstance(stored, dict) else {})}


def _store_settings(request, update: dict) -> None:
    with _settings_lock:
        path = user_root(request) / SETTINGS_FILE
        current = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        current.update(update)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(current, indent=4), encoding="utf-8")
        os.replace(tmp, path)


@routes.get("/settings", "All settings of the user")
async def get_settings(request: web.Request):
    return json_response(_load_settings(request))


@routes.post("/settings", "Merge a dict into the user's settings")
async def post_settings(request: web.Request):
    _store_settings(request, await read_json(request))
    return web.Response(status=200)


@routes.get("/settings/{id}", "One setting's value (null if unset)")
async def get_setting(request: web.Request):
    return json_response(_load_settings(request).get(request.match_info["id"]))


@routes.post("/settings/{id}", "Set one setting to the JSON body")
async def post_setting(request: web.Request):
    _store_settings(request, {request.match_info["id"]: await read_json(request, expect=None)})
    return web.Response(status=200)


# ---- userdata ------------------------------------------------------------------------------------
def _info(path: Path, root: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size,
            "modified": int(st.st_mtime * 1000), "created": int(st.st_ctime * 1000)}


@routes.get("/userdata", "List files in a user data directory")
async def list_userdata(request: web.Request):
    directory = request.query.get("dir")
    if not directory:
        raise ApiError(400, "query parameter 'dir' is required")
    root = user_root(request)
    base = resolve_inside(root, directory)
    if not base.is_dir():
        raise ApiError(404, f"user data directory {directory!r} does not exist")
    pattern = "**/*" if _flag(request, "recurse") else "*"
    files = sorted(p for p in base.glob(pattern) if p.is_file())
    full_info, split = _flag(request, "full_info"), _flag(request, "split")
    result = []
    for p in files:
        rel = p.relative_to(base).as_posix()
        if full_info:
            info = _info(p, base)
            result.append(info)
        elif split:
            result.append([rel, *rel.split("/")])
        else:
            result.append(rel)
    return json_response(result)


@routes.get("/v2/userdata", "List one user data directory: folders first, then files")
async def list_userdata_v2(request: web.Request):
    root = user_root(request)
    rel = request.query.get("path", "").strip("/")
    base = resolve_inside(root, rel)
    if not base.is_dir():
        raise ApiError(404, f"user data path {rel!r} is not a directory")
    dirs, files = [], []
    for entry in sorted(base.iterdir(), key=lambda p: p.name.lower()):
        item = {"name": entry.name, "path": entry.relative_to(root).as_posix()}
        if entry.is_dir():
            dirs.append({**item, "type": "directory"})
        elif entry.is_file():
            st = entry.stat()
            files.append({**item, "type": "file", "size": st.st_size, "modified": st.st_mtime})
    return json_response(dirs + files)


def _user_file(request: web.Request, key: str = "file") -> tuple[Path, Path]:
    name = request.match_info[key]
    if not name or name.endswith("/"):
        raise ApiError(400, f"bad user data file name {name!r}")
    root = user_root(request)
    path = resolve_inside(root, name)
    if path == root:
        raise ApiError(400, f"bad user data file name {name!r}")
    return root, path


@routes.get("/userdata/{file}", "Read a user data file ('/' sent as %2F)")
async def get_userdata(request: web.Request):
    _, path = _user_file(request)
    if not path.is_file():
        raise ApiError(404, f"user data file {request.match_info['file']!r} not found")
    return file_response(path)


@routes.post("/userdata/{file}", "Write a user data file from the raw body")
async def post_userdata(request: web.Request):
    root, path = _user_file(request)
    if path.exists() and not _flag(request, "overwrite", True):
        raise ApiError(409, f"user data file {request.match_info['file']!r} already exists")
    if path.is_dir():
        raise ApiError(400, f"{request.match_info['file']!r} is a directory")
    body = await request.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return json_response(_info(path, root) if _flag(request, "full_info") else
                         path.relative_to(root).as_posix())


@routes.delete("/userdata/{file}", "Delete a user data file")
async def delete_userdata(request: web.Request):
    _, path = _user_file(request)
    if not path.is_file():
        raise ApiError(404, f"user data file {request.match_info['file']!r} not found")
    path.unlink()
    return web.Response(status=204)


@routes.post("/userdata/{file}/move/{dest}", "Move/rename a user data file")
async def move_userdata(request: web.Request):
    root, source = _user_file(request, "file")
    _, dest = _user_file(request, "dest")
    if not source.is_file():
        raise ApiError(404, f"user data file {request.match_info['file']!r} not found")
    if dest.exists() and not _flag(request, "overwrite", True):
        raise ApiError(409, f"destination {request.match_info['dest']!r} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, dest)
    return json_response(_info(dest, root) if _flag(request, "full_info") else
                         dest.relative_to(root).as_posix())


@routes.get("/i18n", "Translations contributed by node packs")
async def i18n(request: web.Request):
    translations = getattr(state_of(request).registry, "translations", None)
    return json_response(translations() if callable(translations) else {})
