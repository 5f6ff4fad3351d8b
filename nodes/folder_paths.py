"""Where models, inputs and outputs live (COMPAT §7 folder_paths API, §8 folder keys).

Module-level state, like ComfyUI's folder_paths, so plugin code written against that API works.
The base directory defaults to the repository root and can be changed with set_base_path().
"""
from __future__ import annotations

import mimetypes
import os
import re
import threading
import time
from typing import Optional

SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
LEGACY_KEYS = {"unet": "diffusion_models", "clip": "text_encoders"}

_lock = threading.RLock()
base_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models_dir = os.path.join(base_path, "models")
folder_names_and_paths: dict[str, tuple[list, set]] = {}
output_directory = input_directory = temp_directory = user_directory = ""
# key -> (files, mtimes of scanned dirs, (roots, extensions) the scan used)
_filename_cache: dict[str, tuple[list, dict, tuple]] = {}


def _model_folders(models: str, base: str) -> dict[str, tuple[list, set]]:
    m = lambda *names: [os.path.join(models, n) for n in names]  # noqa: E731
    pt = SUPPORTED_PT_EXTENSIONS
    return {
        "checkpoints": (m("checkpoints"), set(pt)),
        "configs": (m("configs"), {".yaml"}),
        "loras": (m("loras"), set(pt)),
        "vae": (m("vae"), set(pt)),
        "text_encoders": (m("text_encoders", "clip"), set(pt)),
        "diffusion_models": (m("unet", "diffusion_models"), set(pt)),
        "clip_vision": (m("clip_vision"), set(pt)),
        "style_models": (m("style_models"), set(pt)),
        "embeddings": (m("embeddings"), set(pt)),
        "diffusers": (m("diffusers"), {"folder"}),
        "vae_approx": (m("vae_approx"), set(pt)),
        "controlnet": (m("controlnet", "t2i_adapter"), set(pt)),
        "gligen": (m("gligen"), set(pt)),
        "upscale_models": (m("upscale_models"), set(pt)),
        "latent_upscale_models": (m("latent_upscale_models"), set(pt)),
        "custom_nodes": ([os.path.join(base, "custom_nodes")], set()),
        "hypernetworks": (m("hypernetworks"), set(pt)),
        "photomaker": (m("photomaker"), set(pt)),
        "classifiers": (m("classifiers"), {""}),
        "model_patches": (m("model_patches"), set(pt)),
        "audio_encoders": (m("audio_encoders"), set(pt)),
    }


def set_base_path(path: str) -> None:
    """Re-root everything (models/, custom_nodes/, input/, output/, temp/, user/) at `path`."""
    global base_path, models_dir, output_directory, input_directory, temp_directory, user_directory
    with _lock:
        base_path = os.path.abspath(path)
        models_dir = os.path.join(base_path, "models")
        folder_names_and_paths.clear()
        folder_names_and_paths.update(_model_folders(models_dir, base_path))
        output_directory = os.path.join(base_path, "output")
        input_directory = os.path.join(base_path, "input")
        temp_directory = os.path.join(base_path, "temp")
        user_directory = os.path.join(base_path, "user")
        _filename_cache.clear()


set_base_path(base_path)


# -- directories -----------------------------------------------------------------------------
def set_output_directory(path: str) -> None:
    global output_directory
    output_directory = os.path.abspath(path)


def set_input_directory(path: str) -> None:
    global input_directory
    input_directory = os.path.abspath(path)


def set_temp_directory(path: str) -> None:
    global temp_directory
    temp_directory = os.path.abspath(path)


def set_user_directory(path: str) -> None:
    global user_directory
    user_directory = os.path.abspath(path)


def get_output_directory() -> str:
    return output_directory


def get_input_directory() -> str:
    return input_directory


def get_temp_directory() -> str:
    return temp_directory


def get_user_directory() -> str:
    return user_directory


def get_directory_by_type(type_name: str) -> Optional[str]:
    return {"output": output_directory, "input": input_directory,
            "temp": temp_directory}.get(type_name)


# -- model folders ---------------------------------------------------------------------------
def map_legacy(key: str) -> str:
    return LEGACY_KEYS.get(key, key)


def get_folder_paths(key: str) -> list:
    key = map_legacy(key)
    if key not in folder_names_and_paths:
        raise KeyError(f"unknown model folder {key!r}; known: {', '.join(sorted(folder_names_and_paths))}")
    return list(folder_names_and_paths[key][0])


def add_model_folder_path(key: str, path: str, is_default: bool = False) -> None:
    key = map_legacy(key)
    with _lock:
        paths, exts = folder_names_and_paths.setdefault(key, ([], set()))
        if path in paths:
            # a known path keeps its place (it decides which same-named file wins) unless made default
            if is_default and paths[0] != path:
                paths.remove(path)
                paths.insert(0, path)
        elif is_default:
            paths.insert(0, path)
        else:
            paths.append(path)
        _filename_cache.pop(key, None)


# Model kinds that nodes can write into the output folder (CheckpointSave, LoraSave, …) and where.
OUTPUT_MODEL_FOLDERS = (("checkpoints", "checkpoints"), ("text_encoders", "clip"), ("vae", "vae"),
                        ("diffusion_models", "diffusion_models"), ("loras", "loras"))


def add_output_model_paths() -> None:
    """Also look for models under <output>/checkpoints, clip, vae, diffusion_models and loras, so a
    model saved by a workflow can be loaded by the next one (as ComfyUI's start-up does)."""
    out = get_output_directory()
    for key, sub in OUTPUT_MODEL_FOLDERS:
        add_model_folder_path(key, os.path.join(out, sub))


def _scan(roots: list, exts: set) -> tuple[list, dict]:
    """Relative file paths under roots (recursive, following symlinks, skipping .git) and the
    mtimes of every directory scanned, for cache invalidation."""
    found: set = set()
    dir_mtimes: dict = {}
    for root in roots:
        if not os.path.isdir(root):
            dir_mtimes[root] = None
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            try:
                dir_mtimes[dirpath] = os.path.getmtime(dirpath)
            except OSError:
                dir_mtimes[dirpath] = None
            for fn in filenames:
                if exts and os.path.splitext(fn)[1].lower() not in exts:
                    continue
                found.add(os.path.relpath(os.path.join(dirpath, fn), root))
    return sorted(found), dir_mtimes


def _cache_valid(dir_mtimes: dict) -> bool:
    for d, mtime in dir_mtimes.items():
        try:
            now = os.path.getmtime(d) if os.path.isdir(d) else None
        except OSError:
            now = None
        if now != mtime:
            return False
    return True


def get_filename_list(key: str) -> list:
    """Sorted relative paths of the files of a model folder key (cached until a directory changes)."""
    key = map_legacy(key)
    with _lock:
        roots, exts = folder_names_and_paths[key]
        # plugins edit folder_names_and_paths in place, so the roots and extensions are part of the key
        scanned_for = (tuple(roots), frozenset(e.lower() for e in exts))
        cached = _filename_cache.get(key)
        if cached is not None and cached[2] == scanned_for and _cache_valid(cached[1]):
            return list(cached[0])
        # a non-empty set filters even when it names no real extension: {"folder"} lists no files
        files, mtimes = _scan(list(roots), set(scanned_for[1]))
        _filename_cache[key] = (files, mtimes, scanned_for)
        return list(files)


def _inside(root: str, path: str) -> bool:
    root = os.path.realpath(root)
    path = os.path.realpath(path)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def get_full_path(key: str, filename: str) -> Optional[str]:
    """First existing file `<folder>/<filename>` for the key; names that escape return None."""
    key = map_legacy(key)
    if key not in folder_names_and_paths or not filename:
        return None
    rel = os.path.normpath(filename)
    if os.path.isabs(rel) or rel.startswith(".."):
        return None
    for root in folder_names_and_paths[key][0]:
        # normpath removed every "..": the name stays under root (symlinks inside the folder
        # are followed on purpose, as scanning does).
        full = os.path.join(root, rel)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(key: str, filename: str) -> str:
    full = get_full_path(key, filename)
    if full is None:
        raise FileNotFoundError(f"model in folder '{key}' with filename '{filename}' not found")
    return full


# -- annotated input names: "name.png [output]" ------------------------------------------------
_ANNOTATION = re.compile(r"^(.*) \[(output|input|temp)\]$")


def annotated_filepath(name: str) -> tuple[str, Optional[str]]:
    m = _ANNOTATION.match(name)
    if m is None:
        return name, None
    return m.group(1), get_directory_by_type(m.group(2))


def get_annotated_filepath(name: str, default_dir: Optional[str] = None) -> str:
    name, base = annotated_filepath(name)
    if base is None:
        base = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base, name)


def exists_annotated_filepath(name: str) -> bool:
    return os.path.exists(get_annotated_filepath(name))


def safe_annotated_filepath(name: str) -> Optional[str]:
    """Like get_annotated_filepath but None if the result escapes its directory."""
    plain, base = annotated_filepath(name)
    base = base if base is not None else get_input_directory()
    full = os.path.join(base, plain)
    return full if _inside(base, full) else None


# -- saving ------------------------------------------------------------------------------------
_DATE_TOKENS = re.compile(r"yyyy|yy|MM|M|dd|d|hh|h|mm|m|ss|s")
_REFERENCE = re.compile(r"%([^%]+)%")


def format_date(pattern: str, when: time.struct_time) -> str:
    """The editor's `%date:FORMAT%` tokens: yyyy, yy, MM/M, dd/d, hh/h (24-hour), mm/m, ss/s."""
    values = {"y": when.tm_year, "M": when.tm_mon, "d": when.tm_mday, "h": when.tm_hour,
              "m": when.tm_min, "s": when.tm_sec}

    def one(match):
        token = match.group(0)
        if token == "yyyy":
            return f"{values['y']:04d}"
        if token == "yy":
            return f"{values['y'] % 100:02d}"
        value = values[token[0]]
        return f"{value:02d}" if len(token) == 2 else str(value)

    return _DATE_TOKENS.sub(one, pattern)


def resolve_text_references(text: str, prompt: dict | None) -> str:
    """What the editor does to a filename prefix before queueing (ComfyUI does it in the browser,
    so API and headless users got the text verbatim): `%date:FORMAT%` becomes the local time and
    `%Title.input%` (a node's title, else its class) the constant value of that input in `prompt`.
    Anything else, e.g. `%width%`, is left for `get_save_image_path`."""
    now = time.localtime()

    def one(match):
        body = match.group(1)
        if body.startswith("date:"):
            return format_date(body[5:], now)
        node, dot, name = body.partition(".")
        if not dot or not isinstance(prompt, dict):
            return match.group(0)
        by_title = [n for n in prompt.values() if isinstance(n, dict)
                    and (n.get("_meta") or {}).get("title") == node]
        candidates = by_title or [n for n in prompt.values() if isinstance(n, dict)
                                  and n.get("class_type") == node]
        for entry in candidates:
            value = (entry.get("inputs") or {}).get(name)
            if value is not None and not isinstance(value, (list, dict)):
                return re.sub(r"[/\\]", "_", str(value))  # a value never adds folders
        return match.group(0)

    return _REFERENCE.sub(one, text)


def _expand_prefix(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {"width": str(width), "height": str(height), "year": str(now.tm_year),
              "month": f"{now.tm_mon:02d}", "day": f"{now.tm_mday:02d}",
              "hour": f"{now.tm_hour:02d}", "minute": f"{now.tm_min:02d}",
              "second": f"{now.tm_sec:02d}"}
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    return prefix


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """(full_output_folder, filename, counter, subfolder, filename_prefix) for saving a file.

    The counter is one more than the highest `<filename>_<NNNNN>_...` already in the folder.
    Raises ValueError when the prefix would save outside output_dir.
    """
    filename_prefix = _expand_prefix(filename_prefix, image_width, image_height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    full_output_folder = os.path.join(output_dir, subfolder)
    if not _inside(output_dir, full_output_folder) or os.path.isabs(subfolder):
        raise ValueError(f"Saving image outside the output folder is not allowed: "
                         f"filename_prefix {filename_prefix!r} resolves to {full_output_folder}")
    os.makedirs(full_output_folder, exist_ok=True)
    pattern = re.compile(re.escape(filename) + r"_(\d+)_")
    highest = 0
    for existing in os.listdir(full_output_folder):
        m = pattern.match(existing)
        if m:
            highest = max(highest, int(m.group(1)))
    return full_output_folder, filename, highest + 1, subfolder, filename_prefix


def filter_files_content_types(files: list, content_types: list) -> list:
    """Keep files whose guessed mimetype's top level (image, video, audio, model…) is one of
    content_types; files with no known mimetype are dropped (as ComfyUI does)."""
    out = []
    for f in files:
        mime = mimetypes.guess_type(f, strict=False)[0]
        if mime and mime.split("/")[0] in content_types:
            out.append(f)
    return out
