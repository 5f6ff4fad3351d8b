"""Textual-inversion embeddings: finding ``embedding:name`` files and reading their vectors.

File formats read (safetensors, or pickles through ``torch.load(weights_only=True)`` only):
- A1111 / SD-webui: ``{"string_to_param": {"*": tensor[n, dim]}, ...}``
- a list of dicts of tensors (old diffusers exports): every tensor whose last dim fits, concatenated
- SDXL pairs: ``{"clip_l": tensor[n, 768], "clip_g": tensor[n, 1280]}``, picked by ``key``
- embeddings bundled in a LoRA file: ``bundle_emb.<name>.string_to_param.*`` or ``bundle_emb.<name>.<key>``
- ``{"emb_params": tensor}`` (NovelAI style) and any other dict: its first tensor
- a plain tensor ``[n, dim]`` or ``[dim]``
The precedence is ComfyUI's (`comfy/sd1_clip.py:load_embed`). Pickles that weights-only loading
refuses are not read (ComfyUI falls back to scraping the zip's raw float storage; we refuse to guess).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import torch

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = (".safetensors", ".pt", ".bin")


def _search_dirs(dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Each root followed by its subfolders (depth first, sorted) so bare names find nested files.

    ComfyUI gathers the same folders in a set, so which of two same-named files wins is arbitrary
    there; here the first root, then the shallowest-and-alphabetically-first folder, wins.
    """
    out: list[str] = []
    seen_real: set[str] = set()  # symlinked folders are followed; a link cycle is walked once, not to the path-length limit
    for root in dirs:
        root = os.path.abspath(os.fspath(root))
        if root not in out:
            out.append(root)
        for current, subdirs, _files in os.walk(root, followlinks=True):
            real = os.path.realpath(current)
            if real in seen_real:
                subdirs.clear()
                continue
            seen_real.add(real)
            subdirs.sort()
            if current not in out:
                out.append(current)
    return out


def _load_file(path: str):
    if path.lower().endswith(".safetensors"):
        import safetensors.torch

        return safetensors.torch.load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _bundled(data: dict, suffix_match) -> torch.Tensor | None:
    found = [v for k, v in data.items() if k.startswith("bundle_emb.") and suffix_match(k)]
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in found], dim=0) if found else None


def extract_vectors(data, embedding_dim: int, key: str | None = None) -> torch.Tensor | None:
    """The embedding tensor inside a loaded file (any shape yet), following ComfyUI's precedence."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, (list, tuple)):
        parts = [
            t.reshape(-1, t.shape[-1])
            for entry in data
            if isinstance(entry, dict)
            for t in entry.values()
            if isinstance(t, torch.Tensor) and t.shape[-1] == embedding_dim
        ]
        return torch.cat(parts, dim=0) if parts else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        return next(iter(data["string_to_param"].values()))
    if key is not None and key in data:
        return data[key]
    bundled = _bundled(data, lambda k: ".string_to_param." in k)
    if bundled is None and key is not None:
        bundled = _bundled(data, lambda k: k.endswith("." + key))
    if bundled is not None:
        return bundled
    if "emb_params" in data:
        return data["emb_params"]
    return next((v for v in data.values() if isinstance(v, torch.Tensor)), None)


class EmbeddingLookup:
    """Finds ``embedding:name`` references in embedding folders and returns ``[n_vectors, dim]``.

    ``name`` may carry its extension or not and may name a subfolder (``style/foo``); a bare name is
    also looked for in every subfolder. Names that resolve outside the folders are refused.
    Calling the lookup returns None, silently, when no file matches (the caller reports the missing
    reference); it returns None with a logged warning when a file exists but cannot be read or its
    vectors are not ``embedding_dim`` wide (ComfyUI also drops such vectors with a warning).
    Loaded tensors are cached per file, keyed by modification time and size.
    """

    def __init__(self, dirs, embedding_dim: int, key: str | None = None):
        if isinstance(dirs, (str, os.PathLike)):
            dirs = [dirs]
        self.roots = [os.fspath(d) for d in dirs]
        self.embedding_dim = int(embedding_dim)
        self.key = key
        self._cache: dict[str, tuple[tuple[int, int], torch.Tensor | None]] = {}

    def find(self, name: str) -> Path | None:
        """The file ``name`` refers to, or None."""
        if not name:
            return None
        for folder in _search_dirs(self.roots):
            candidate = os.path.abspath(os.path.join(folder, name))
            try:
                if os.path.commonpath((folder, candidate)) != folder:
                    continue  # "../x" or an absolute path: outside the embeddings folder
            except ValueError:
                continue
            if os.path.isfile(candidate):
                return Path(candidate)
            for ext in EMBEDDING_EXTENSIONS:
                if os.path.isfile(candidate + ext):
                    return Path(candidate + ext)
        return None

    def __call__(self, name: str) -> torch.Tensor | None:
        path = self.find(name)
        if path is None:
            return None
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        vectors = self._read(path, name)
        self._cache[str(path)] = (stamp, vectors)
        return vectors

    def _read(self, path: Path, name: str) -> torch.Tensor | None:
        try:
            data = _load_file(str(path))
        except Exception as exc:  # a corrupt or unsafe file must not stop the prompt
            log.warning("error loading embedding %r from %s, skipping it: %s", name, path, exc)
            return None
        vectors = extract_vectors(data, self.embedding_dim, self.key)
        if not isinstance(vectors, torch.Tensor) or vectors.ndim == 0:
            log.warning("embedding %r (%s) holds no embedding tensor, ignoring it", name, path)
            return None
        vectors = vectors.reshape(-1, vectors.shape[-1]) if vectors.ndim != 1 else vectors.reshape(1, -1)
        if vectors.shape[-1] != self.embedding_dim:
            log.warning(
                "embedding %r (%s) has vectors of width %d but this text encoder needs %d, ignoring it",
                name, path, vectors.shape[-1], self.embedding_dim,
            )
            return None
        return vectors.detach().to(torch.float32)
