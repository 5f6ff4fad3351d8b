"""Model merging and saving (comfy_extras.nodes_model_merging): ModelMergeSimple, ModelMergeBlocks,
ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple, CLIPMergeSubtract, CLIPMergeAdd, CheckpointSave.

A merge is a set of patches on a clone of the first model: every weight of the second model (with its
own patches) is added with ComfyUI's strengths, w = w1 · strength_model + w2 · strength_patch
(diffusion/model_patcher.py), so nothing is copied until the merged model is loaded, and the loaders'
models stay as they were. Simple: (1 - ratio, ratio) keeps `ratio` of model1; Add: (1, 1);
Subtract: (-multiplier, multiplier) gives (w1 - w2) · multiplier.
"""
from __future__ import annotations

import json
import os

from diffusion.loading.save import save_checkpoint
from nodes import folder_paths, image_nodes
from nodes.spec import Float, Link, Out, String, mappings, node

CATEGORY = "advanced/model_merging"


def _ratio(name: str):
    return Float(name, 1.0, min=0.0, max=1.0, step=0.01)


def _multiplier():
    return Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)


def merge_models(model1, model2, strength_patch, strength_model):
    """Clone of model1 with all of model2's weights added; the strengths may be a function of the
    parameter name (ModelMergeBlocks)."""
    merged = model1.clone()
    for key, value in model2.merge_patches().items():
        sp = strength_patch(key) if callable(strength_patch) else strength_patch
        sm = strength_model(key) if callable(strength_model) else strength_model
        merged.add_patches({key: value}, sp, sm)
    return merged


def merge_clips(clip1, clip2, strength_patch, strength_model):
    merged = clip1.clone()
    for key, value in clip2.patcher.merge_patches().items():
        merged.add_patches({key: value}, strength_patch, strength_model)
    return merged


@node(category=CATEGORY, outputs=[Out("MODEL")],
      inputs=[Link("model1", "MODEL"), Link("model2", "MODEL"), _ratio("ratio")])
class ModelMergeSimple:
    def execute(self, model1, model2, ratio):
        return (merge_models(model1, model2, 1.0 - ratio, ratio),)


@node(category=CATEGORY, outputs=[Out("MODEL")],
      inputs=[Link("model1", "MODEL"), Link("model2", "MODEL"), _ratio("input"), _ratio("middle"), _ratio("out")])
class ModelMergeBlocks:
    """One ratio per part of the UNet by name prefix: input_blocks, middle_block, output_blocks (the
    longest matching prefix wins); weights outside them (time embedding, conv_in/out) take `input`'s,
    the first ratio, as in ComfyUI."""

    def execute(self, model1, model2, input, middle, out):
        ratios = {"input": input, "middle": middle, "out": out}

        def ratio(key):
            best, size = input, 0
            for prefix, r in ratios.items():
                if key.startswith(prefix) and len(prefix) > size:
                    best, size = r, len(prefix)
            return best

        return (merge_models(model1, model2, lambda k: 1.0 - ratio(k), ratio),)


@node(category=CATEGORY, outputs=[Out("MODEL")],
      inputs=[Link("model1", "MODEL"), Link("model2", "MODEL"), _multiplier()])
class ModelMergeSubtract:
    def execute(self, model1, model2, multiplier):
        return (merge_models(model1, model2, -multiplier, multiplier),)


@node(category=CATEGORY, outputs=[Out("MODEL")], inputs=[Link("model1", "MODEL"), Link("model2", "MODEL")])
class ModelMergeAdd:
    def execute(self, model1, model2):
        return (merge_models(model1, model2, 1.0, 1.0),)


@node(category=CATEGORY, outputs=[Out("CLIP")], inputs=[Link("clip1", "CLIP"), Link("clip2", "CLIP"), _ratio("ratio")])
class CLIPMergeSimple:
    def execute(self, clip1, clip2, ratio):
        return (merge_clips(clip1, clip2, 1.0 - ratio, ratio),)


@node(category=CATEGORY, outputs=[Out("CLIP")], inputs=[Link("clip1", "CLIP"), Link("clip2", "CLIP"), _multiplier()])
class CLIPMergeSubtract:
    def execute(self, clip1, clip2, multiplier):
        return (merge_clips(clip1, clip2, -multiplier, multiplier),)


@node(category=CATEGORY, outputs=[Out("CLIP")], inputs=[Link("clip1", "CLIP"), Link("clip2", "CLIP")])
class CLIPMergeAdd:
    def execute(self, clip1, clip2):
        return (merge_clips(clip1, clip2, 1.0, 1.0),)


@node(category=CATEGORY, display_name="Save Checkpoint", output_node=True, hidden=image_nodes.SAVE_HIDDEN,
      inputs=[Link("model", "MODEL"), Link("clip", "CLIP"), Link("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI")])
class CheckpointSave:
    """MODEL + CLIP + VAE (patches and merges applied) as one original-layout checkpoint in the output
    folder, with the prompt and workflow as metadata unless --disable-metadata."""

    def execute(self, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        filename_prefix = folder_paths.resolve_text_references(filename_prefix, prompt)
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        metadata = {}
        if not image_nodes.DISABLE_METADATA:
            metadata["prompt"] = "" if prompt is None else json.dumps(prompt)
            metadata.update({k: json.dumps(v) for k, v in (extra_pnginfo or {}).items()})
        path = os.path.join(folder, f"{filename}_{counter:05}_.safetensors")
        try:
            save_checkpoint(path, model, clip, vae, metadata, title=f"{filename} {counter}")
        except ValueError as e:
            raise ValueError(f"CheckpointSave: {e}") from e
        return {}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple, CLIPMergeSubtract,
    CLIPMergeAdd, CheckpointSave)
for _cls in NODE_CLASS_MAPPINGS.values():
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_merging"
