"""Upscale models (ComfyUI's comfy_extras/nodes_upscale_model.py): UpscaleModelLoader, ImageUpscaleWithModel.

The file is read and the architecture detected by diffusion/loading/upscale_models.py (spandrel); the
tiled run with its out-of-memory fallback is diffusion/upscale.py. UPSCALE_MODEL is spandrel's
ImageModelDescriptor, as in ComfyUI, so plugin nodes that take one work unchanged.
"""
from __future__ import annotations

from diffusion.loading.upscale_models import load_upscale_model
from diffusion.upscale import upscale_image
from graph.progress import report_progress
from nodes import folder_paths
from nodes.sd_loaders import model_path
from nodes.spec import Combo, Link, Out, mappings, node


def _upscale_model_names() -> list:
    return folder_paths.get_filename_list("upscale_models")


@node(category="loaders", display_name="Load Upscale Model", outputs=[Out("UPSCALE_MODEL")],
      inputs=[Combo("model_name", _upscale_model_names, tooltip="A file in models/upscale_models.")])
class UpscaleModelLoader:
    def execute(self, model_name):
        return (load_upscale_model(model_path("upscale_models", model_name, "UpscaleModelLoader", "model_name")),)


@node(category="image/upscaling", display_name="Upscale Image (using Model)", outputs=[Out("IMAGE")],
      inputs=[Link("upscale_model", "UPSCALE_MODEL"), Link("image", "IMAGE")])
class ImageUpscaleWithModel:
    """Runs the model over 512 px tiles (32 px overlap, halved on out-of-memory down to 128); the
    result is clamped to 0..1."""

    def execute(self, upscale_model, image):
        if not callable(upscale_model) or not hasattr(upscale_model, "scale"):
            raise TypeError(f"ImageUpscaleWithModel: input 'upscale_model' must be an UPSCALE_MODEL (from "
                            f"UpscaleModelLoader), got {type(upscale_model).__name__}")
        try:
            return (upscale_image(upscale_model, image, progress=report_progress),)
        except ValueError as e:
            raise ValueError(f"ImageUpscaleWithModel: {e}") from e


for _cls in (UpscaleModelLoader, ImageUpscaleWithModel):
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_upscale_model"

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(UpscaleModelLoader, ImageUpscaleWithModel)
