"""File routes: /view, /upload/image, /upload/mask, model listings (incl. /experiment/models),
/internal/files and /internal/folder_paths. Every path goes through security.resolve_inside."""
from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import os
import struct
from pathlib import Path

from aiohttp import web

from .errors import ApiError, json_response
from .routing import RouteTable
from .security import PathEscape, is_active_content, resolve_inside
from .state import state_of

routes = RouteTable("files")
FILE_TYPES = ("input", "output", "temp")
_ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


def split_annotation(name: str) -> tuple[str, str | None]:
    """'x.png [output]' -> ('x.png', 'output')."""
    for suffix, kind in _ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def type_root(request: web.Request, kind: str) -> str:
    if kind not in FILE_TYPES:
        raise ApiError(400, f"type must be one of {', '.join(FILE_TYPES)}, got {kind!r}")
    return state_of(request).directory_for_type(kind)


def _safe_name(name: str, what: str) -> str:
    if not name:
        raise ApiError(400, f"{what} is empty")
    if name.startswith(("/", "\\")) or ".." in name or "\x00" in name:
        raise ApiError(400, f"{what} {name!r} must be a plain file name (no '..', not absolute)")
    return name


@routes.get("/view", "Serve an input/output/temp file (optional preview re-encode or channel)")
async def view(request: web.Request):
    q = request.query
    name, annotated = split_annotation(q.get("filename", ""))
    name = _safe_name(name, "filename")
    root = type_root(request, annotated or q.get("type", "output") or "output")
    folder = resolve_inside(root, q.get("subfolder", ""))
    path = resolve_inside(folder, os.path.basename(name))
    if not path.is_file():
        raise ApiError(404, f"file not found: {os.path.basename(name)!r}")
    # As ComfyUI: a preview re-encodes (webp unless jpeg was asked for and no alpha is wanted);
    # otherwise channel rgb / a extracts; any other channel value serves the file as it is.
    preview = q.get("preview")
    channel = q.get("channel", "")
    if preview:
        return _preview_image(path, preview, channel)
    if channel in ("rgb", "a"):
        return _channel_image(path, channel)
    return file_response(path)


def file_response(path: Path, *, download_name: str | None = None) -> web.StreamResponse:
    """The file's bytes; active content (html/js/svg…) as an attachment of octet-stream."""
    name = download_name or path.name
    quoted = name.replace('"', "_").replace("\r", "").replace("\n", "")
    headers = {"X-Content-Type-Options": "nosniff"}
    if is_active_content(name):
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Disposition"] = f'attachment; filename="{quoted}"'
    else:
        headers["Content-Type"] = mimetypes.guess_type(name)[0] or "application/octet-stream"
        headers["Content-Disposition"] = f'filename="{quoted}"'
    return web.FileResponse(path, headers=headers)


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
        return img
    except (UnidentifiedImageError, OSError) as e:
        raise ApiError(400, f"{path.name!r} is not an image that can be converted: {e}") from None


def _image_response(img, path: Path, fmt: str, **save_args) -> web.Response:
    buf = io.BytesIO()
    img.save(buf, format=fmt.upper(), **save_args)
    return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}",
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Content-Disposition": f'filename="{path.stem}.{fmt}"'})


def _preview_image(path: Path, preview: str, channel: str) -> web.Response:
    """`preview=FORMAT;QUALITY`: webp or jpeg (anything else, or an alpha channel asked for: webp);
    a quality that is not a number means 90."""
    parts = preview.split(";")
    fmt = parts[0].lower()
    if fmt not in ("webp", "jpeg") or "a" in channel:
        fmt = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with _open_image(path) as img:
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        return _image_response(img, path, fmt, quality=max(1, min(quality, 100)))


def _channel_image(path: Path, channel: str) -> web.Response:
    """channel=rgb: the colour channels as PNG; channel=a: only the alpha, as an RGBA PNG."""
    from PIL import Image

    with _open_image(path) as img:
        if channel == "rgb":
            out = img.convert("RGB")
        else:
            alpha = img.convert("RGBA").getchannel("A")
            out = Image.new("RGBA", img.size, (0, 0, 0, 0))
            out.putalpha(alpha)
        return _image_response(out, path, "png")


async def _read_upload(request: web.Request):
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "upload must be multipart/form-data with an 'image' file field")
    try:
        form = await request.post()
    except ValueError as e:
        raise ApiError(400, f"malformed multipart body: {e}") from None
    upload = form.get("image")
    if upload is None or not hasattr(upload, "file"):
        raise ApiError(400, "no 'image' file field in the upload")
    return form, upload


def _unique_target(folder: Path, name: str, data: bytes, overwrite: bool) -> Path:
    """Where to write: same name if free or overwrite; the existing file if it has the same
    bytes; otherwise 'name (1).ext', 'name (2).ext'…"""
    target = resolve_inside(folder, name)
    if overwrite or not target.exists():
        return target
    digest = hashlib.sha256(data).hexdigest()
    stem, ext = os.path.splitext(name)
    i = 0
    while target.exists():
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return target
        i += 1
        target = resolve_inside(folder, f"{stem} ({i}){ext}")
    return target


def _save_upload(request, form, upload, data: bytes):
    kind = str(form.get("type") or "input")
    root = type_root(request, kind)
    subfolder = str(form.get("subfolder") or "")
    name = _safe_name(os.path.basename(str(upload.filename or "")), "upload filename")
    try:
        folder = resolve_inside(root, subfolder)
    except PathEscape as e:  # uploads answer 400 for a bad subfolder (COMPAT §4)
        raise ApiError(400, e.message) from None
    overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
    target = _unique_target(folder, name, data, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and not overwrite and target.read_bytes() == data):
        target.write_bytes(data)
    return {"name": target.name, "subfolder": subfolder, "type": kind}


@routes.post("/upload/image", "Upload an image into input/temp/output")
async def upload_image(request: web.Request):
    form, upload = await _read_upload(request)
    data = upload.file.read()
    return json_response(_save_upload(request, form, upload, data))


@routes.post("/upload/mask", "Upload a mask: the original image gets the upload's alpha channel")
async def upload_mask(request: web.Request):
    from PIL import Image, PngImagePlugin, UnidentifiedImageError

    form, upload = await _read_upload(request)
    try:
        ref = json.loads(str(form.get("original_ref") or ""))
    except ValueError:
        raise ApiError(400, "original_ref must be JSON {filename, subfolder?, type?}") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ApiError(400, "original_ref must be JSON {filename, subfolder?, type?}")
    ref_name, annotated = split_annotation(ref["filename"])
    # ComfyUI looks for the original in output/ unless the reference says otherwise.
    root = type_root(request, annotated or str(ref.get("type") or "output"))
    original_path = resolve_inside(resolve_inside(root, str(ref.get("subfolder") or "")),
                                   _safe_name(ref_name, "original_ref.filename"))
    if not original_path.is_file():
        raise ApiError(404, f"original image not found: {ref_name!r}")
    try:
        with Image.open(original_path) as original:
            original.load()
            info = PngImagePlugin.PngInfo()
            for key, value in getattr(original, "text", {}).items():
                info.add_text(key, value)
            with Image.open(upload.file) as mask:
                alpha = mask.convert("RGBA").getchannel("A").resize(original.size)
            result = original.convert("RGBA")
            result.putalpha(alpha)
    except (UnidentifiedImageError, OSError) as e:
        raise ApiError(400, f"could not read image: {e}") from None
    buf = io.BytesIO()
    result.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return json_response(_save_upload(request, form, upload, buf.getvalue()))


@routes.get("/internal/files/{type}", "Top-level visible files of input/output/temp, newest first",
            alias=False)
async def internal_files(request: web.Request):
    root = Path(type_root(request, request.match_info["type"]))
    if not root.is_dir():
        raise ApiError(404, f"{request.match_info['type']} directory does not exist")
    entries = [e for e in os.scandir(root) if e.is_file() and not e.name.startswith(".")]
    entries.sort(key=lambda e: e.stat().st_mtime, reverse=True)
    return json_response([e.name for e in entries])


def _folder_keys(fp) -> list[str]:
    names = getattr(fp, "folder_names_and_paths", None)
    return list(names) if names is not None else []


@routes.get("/internal/folder_paths", "Model folder keys and their search paths", alias=False)
async def internal_folder_paths(request: web.Request):
    fp = state_of(request).folder_paths
    return json_response({key: fp.get_folder_paths(key) for key in _folder_keys(fp)})


@routes.get("/models", "Model folder keys")
async def models(request: web.Request):
    return json_response(_folder_keys(state_of(request).folder_paths))


@routes.get("/models/{folder}", "Files of one model folder")
async def models_in_folder(request: web.Request):
    fp = state_of(request).folder_paths
    folder = request.match_info["folder"]
    if folder not in _folder_keys(fp):
        raise ApiError(404, f"unknown model folder {folder!r}")
    return json_response(fp.get_filename_list(folder))


# Folder keys that hold no model files; the frontend's model library leaves them out.
_NOT_MODEL_FOLDERS = ("configs", "custom_nodes")


@routes.get("/experiment/models", "Model folders for the frontend's model library: [{name, folders}]")
async def experiment_model_folders(request: web.Request):
    fp = state_of(request).folder_paths
    return json_response([{"name": key, "folders": fp.get_folder_paths(key)}
                          for key in _folder_keys(fp) if key not in _NOT_MODEL_FOLDERS])


@routes.get("/experiment/models/{folder}",
            "Files of one model folder with the index of the search path holding each, size and times")
async def experiment_models_in_folder(request: web.Request):
    fp = state_of(request).folder_paths
    folder = request.match_info["folder"]
    if folder not in _folder_keys(fp) or folder in _NOT_MODEL_FOLDERS:
        raise ApiError(404, f"unknown model folder {folder!r}")
    roots = fp.get_folder_paths(folder)
    entries = []
    # get_filename_list already applies the folder's extensions; a name may sit in several roots.
    for name in fp.get_filename_list(folder):
        for index, root in enumerate(roots):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            entries.append({"name": Path(name).as_posix(), "pathIndex": index, "modified": st.st_mtime,
                            "created": st.st_ctime, "size": st.st_size})
    return json_response(entries)


@routes.get("/embeddings", "Embedding names (without extension)")
async def embeddings(request: web.Request):
    fp = state_of(request).folder_paths
    try:
        names = fp.get_filename_list("embeddings")
    except KeyError:
        names = []
    return json_response([os.path.splitext(n)[0] for n in names])


_MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024


@routes.get("/view_metadata/{folder}", "The __metadata__ of a .safetensors model file")
async def view_metadata(request: web.Request):
    fp = state_of(request).folder_paths
    folder = request.match_info["folder"]
    name = _safe_name(request.query.get("filename", ""), "filename")
    if folder not in _folder_keys(fp) or not name.endswith(".safetensors"):
        raise ApiError(404, f"no safetensors file {name!r} in {folder!r}")
    path = fp.get_full_path(folder, name)
    if path is None:
        raise ApiError(404, f"no safetensors file {name!r} in {folder!r}")
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_SAFETENSORS_HEADER:
                raise ValueError("header too large")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise ApiError(404, f"{name!r} has no readable safetensors header: {e}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if meta is None:
        raise ApiError(404, f"{name!r} has no __metadata__")
    return json_response(meta)
