"""Loaders beyond the single-file checkpoint: DiffusersLoader (a diffusers pipeline folder).

Folders are found under the "diffusers" model folders (models/diffusers, COMPAT §8): every directory
holding a model_index.json, named relative to its root. The folder is read by
diffusion/loading/diffusers_folder.py, which gives the same MODEL, CLIP and VAE as the same weights in
one checkpoint file.
"""
from __future__ import annotations

import os

from diffusion.loading.diffusers_folder import is_pipeline_folder, load_diffusers, pipeline_folders
from nodes import folder_paths
from nodes.spec import Combo, Out, mappings, node


def _diffusers_names() -> list[str]:
    return pipeline_folders(folder_paths.get_folder_paths("diffusers"))


def diffusers_folder(model_path: str) -> str:
    """Full path of a pipeline folder named by DiffusersLoader's model_path; refuses names that leave
    the diffusers folders."""
    rel = os.path.normpath(model_path) if isinstance(model_path, str) and model_path else None
    if rel is None or os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        raise ValueError(f"DiffusersLoader: model_path must be a folder name inside the diffusers model "
                         f"folders, got {model_path!r}")
    roots = folder_paths.get_folder_paths("diffusers")
    for root in roots:
        path = os.path.join(root, rel)
        if is_pipeline_folder(path):
            return path
    raise FileNotFoundError(f"DiffusersLoader: model_path '{model_path}' is not a diffusers pipeline folder "
                            f"(a folder with model_index.json) in {', '.join(roots) or '(no diffusers folders)'}")


@node(category="advanced/loaders/deprecated", outputs=[Out("MODEL"), Out("CLIP"), Out("VAE")],
      inputs=[Combo("model_path", _diffusers_names)])
class DiffusersLoader:
    def execute(self, model_path):
        loaded = load_diffusers(diffusers_folder(model_path),
                                embedding_dirs=folder_paths.get_folder_paths("embeddings"))
        return loaded.model, loaded.clip, loaded.vae


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(DiffusersLoader)
