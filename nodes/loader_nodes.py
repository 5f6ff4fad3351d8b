"""Loaders beyond the single-file checkpoint and the input folder.

DiffusersLoader: a diffusers pipeline folder. Folders are found under the "diffusers" model folders
(models/diffusers, COMPAT §8): every directory holding a model_index.json, named relative to its root.
diffusion/loading/diffusers_folder.py reads it into the same MODEL, CLIP and VAE as the same weights in
one checkpoint file.

LoadImageOutput: LoadImage's loading (nodes/image_nodes.py) from the output folder. Its options are not
listed in /object_info: the editor fetches them from /internal/files/output (plain names, newest first)
and an upload into the output folder comes back as "name.png [output]"; both name a file in output/.
"""
from __future__ import annotations

import hashlib
import os

from diffusion.loading.diffusers_folder import is_pipeline_folder, load_diffusers, pipeline_folders
from nodes import folder_paths
from nodes.image_nodes import load_image_file
from nodes.spec import Combo, In, Out, mappings, node


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


OUTPUT_ANNOTATION = " [output]"
# the editor's combo: options fetched from this route, uploads go to (and previews come from) output/
OUTPUT_IMAGE_WIDGET = {"image_upload": True, "image_folder": "output",
                       "remote": {"route": "/internal/files/output", "refresh_button": True,
                                  "control_after_refresh": "first"}}


def output_image_path(image) -> str:
    """Path in the output folder of "name.png", "sub/name.png" or "name.png [output]"; a name that
    leaves the output folder or points at another folder is refused."""
    if not isinstance(image, str) or not image.strip():
        raise ValueError(f"LoadImageOutput: input 'image' must be a file name in the output folder, got {image!r}")
    plain, base = folder_paths.annotated_filepath(image)
    if base is not None and not image.endswith(OUTPUT_ANNOTATION):
        raise ValueError(f"LoadImageOutput: input 'image' {image!r} names another folder; this node loads "
                         f"from the output folder only (use LoadImage for input files)")
    path = folder_paths.safe_annotated_filepath(plain + OUTPUT_ANNOTATION)
    if path is None:
        raise ValueError(f"LoadImageOutput: input 'image' {image!r} escapes the output folder")
    return path


@node(category="image", display_name="Load Image (from Outputs)", experimental=True,
      description="Loads an image that a workflow saved into the output folder, with its alpha as the mask; "
                  "refreshing the list selects the newest file.",
      outputs=[Out("IMAGE"), Out("MASK")], inputs=[In("image", "COMBO", hints=dict(OUTPUT_IMAGE_WIDGET))])
class LoadImageOutput:
    def execute(self, image):
        return load_image_file(output_image_path(image))

    @classmethod
    def IS_CHANGED(cls, image):
        with open(output_image_path(image), "rb") as f:  # the content, as LoadImage: a rewrite re-runs
            return hashlib.file_digest(f, "sha256").hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            exists = os.path.isfile(output_image_path(image))
        except ValueError as e:
            return str(e)
        return True if exists else f"Invalid image file: {image} (not in the output folder)"


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(DiffusersLoader, LoadImageOutput)
