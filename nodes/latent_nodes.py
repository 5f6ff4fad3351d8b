"""The classic latent nodes: resize, composite, transform, batch, arithmetic, files, inpaint prep.

nodes.py classes (python_module "nodes"): LatentUpscale, LatentUpscaleBy, LatentComposite, LatentBlend,
LatentRotate, LatentFlip, LatentCrop, LatentFromBatch, RepeatLatentBatch, SaveLatent, LoadLatent,
SetLatentNoiseMask, VAEEncodeForInpaint, ImagePadForOutpaint. comfy_extras classes: LatentCompositeMasked
(nodes_mask), LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentBatch,
LatentBatchSeedBehavior (nodes_latent). Inputs follow COMPAT §9. Each node returns a copy of its LATENT
dict with new tensors (noise_mask / batch_index carried along); the maths is diffusion/latent_ops.py,
diffusion/latent_batch.py, diffusion/outpaint.py, diffusion/loading/latent_files.py and
diffusion/models/vae.py:inpaint_inputs.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from diffusion import latent_batch, latent_ops, resample
from diffusion.latent_ops import LATENT_RATIO, UPSCALE_METHODS
from diffusion.loading.latent_files import load_latent, save_latent
from diffusion.models.vae import inpaint_inputs
from diffusion.outpaint import pad_for_outpaint
from nodes import folder_paths, image_nodes
from nodes.spec import (MAX_RESOLUTION, Boolean, Combo, Float, Int, Link, Out, String, mappings,
                        node)

_LATENT = [Out("LATENT")]


def _with_samples(latent: dict, samples: torch.Tensor) -> tuple[dict]:
    out = dict(latent)
    out["samples"] = samples
    return (out,)


def _position(name: str, default: int = 0, step: int = 8):
    return Int(name, default, min=0, max=MAX_RESOLUTION, step=step)


# -- resize ------------------------------------------------------------------------------------------

@node(category="latent", display_name="Upscale Latent", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Combo("upscale_method", list(UPSCALE_METHODS)),
    Int("width", 512, min=0, max=MAX_RESOLUTION, step=8), Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
    Combo("crop", list(latent_ops.CROP_METHODS))])
class LatentUpscale:
    def execute(self, samples, upscale_method, width, height, crop):
        size = latent_ops.upscale_size(samples["samples"].shape, width, height)
        if size is None:  # 0x0: nothing to do
            return (samples,)
        w, h = size
        return _with_samples(samples, latent_ops.resize(
            samples["samples"], w // LATENT_RATIO, h // LATENT_RATIO, upscale_method, crop))


@node(category="latent", display_name="Upscale Latent By", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Combo("upscale_method", list(UPSCALE_METHODS)),
    Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01)])
class LatentUpscaleBy:
    def execute(self, samples, upscale_method, scale_by):
        s = samples["samples"]
        width, height = round(s.shape[-1] * scale_by), round(s.shape[-2] * scale_by)
        if width < 1 or height < 1:
            raise ValueError(f"LatentUpscaleBy: scale_by {scale_by} shrinks the {s.shape[-1]}x{s.shape[-2]} "
                             f"latent to {width}x{height}; use a larger scale")
        return _with_samples(samples, latent_ops.resize(s, width, height, upscale_method))


# -- composite and blend -------------------------------------------------------------------------------

@node(category="latent", display_name="Latent Composite", outputs=_LATENT, inputs=[
    Link("samples_to", "LATENT"), Link("samples_from", "LATENT"), _position("x"), _position("y"),
    _position("feather")])
class LatentComposite:
    def execute(self, samples_to, samples_from, x, y, feather):
        r = LATENT_RATIO
        composed = latent_ops.composite_feathered(samples_to["samples"], samples_from["samples"],
                                                  x // r, y // r, feather // r)
        return _with_samples(samples_to, composed)


@node(category="latent", outputs=_LATENT, inputs=[
    Link("destination", "LATENT"), Link("source", "LATENT"), _position("x"), _position("y"),
    Boolean("resize_source", False), Link("mask", "MASK", optional=True)])
class LatentCompositeMasked:
    def execute(self, destination, source, x, y, resize_source, mask=None):
        composed = resample.composite_masked(destination["samples"], source["samples"], x, y, mask,
                                               LATENT_RATIO, resize_source)
        return _with_samples(destination, composed)


@node(category="_for_testing", display_name="Latent Blend", outputs=_LATENT, inputs=[
    Link("samples1", "LATENT"), Link("samples2", "LATENT"),
    Float("blend_factor", 0.5, min=0, max=1, step=0.01)])
class LatentBlend:
    def execute(self, samples1, samples2, blend_factor):
        return _with_samples(samples1, latent_ops.blend(samples1["samples"], samples2["samples"], blend_factor))


# -- transforms ----------------------------------------------------------------------------------------

_ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}


@node(category="latent/transform", display_name="Rotate Latent", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Combo("rotation", list(_ROTATIONS))])
class LatentRotate:
    def execute(self, samples, rotation):
        # clockwise quarter turns (rot90 from the width axis towards the height axis)
        return _with_samples(samples, torch.rot90(samples["samples"], k=_ROTATIONS[rotation], dims=[3, 2]))


_FLIP_DIMS = {"x-axis: vertically": 2, "y-axis: horizontally": 3}


@node(category="latent/transform", display_name="Flip Latent", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Combo("flip_method", list(_FLIP_DIMS))])
class LatentFlip:
    def execute(self, samples, flip_method):
        return _with_samples(samples, torch.flip(samples["samples"], dims=[_FLIP_DIMS[flip_method]]))


@node(category="latent/transform", display_name="Crop Latent", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Int("width", 512, min=64, max=MAX_RESOLUTION, step=8),
    Int("height", 512, min=64, max=MAX_RESOLUTION, step=8), _position("x"), _position("y")])
class LatentCrop:
    def execute(self, samples, width, height, x, y):
        r = LATENT_RATIO
        return _with_samples(samples, latent_ops.crop(samples["samples"], x // r, y // r, width // r, height // r))


# -- arithmetic (comfy_extras.nodes_latent) ----------------------------------------------------------

_TWO_LATENTS = [Link("samples1", "LATENT"), Link("samples2", "LATENT")]


@node(category="latent/advanced", outputs=_LATENT, inputs=_TWO_LATENTS)
class LatentAdd:
    def execute(self, samples1, samples2):
        s1 = samples1["samples"]
        return _with_samples(samples1, s1 + latent_ops.reshape_like(s1.shape, samples2["samples"]))


@node(category="latent/advanced", outputs=_LATENT, inputs=_TWO_LATENTS)
class LatentSubtract:
    def execute(self, samples1, samples2):
        s1 = samples1["samples"]
        return _with_samples(samples1, s1 - latent_ops.reshape_like(s1.shape, samples2["samples"]))


@node(category="latent/advanced", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)])
class LatentMultiply:
    def execute(self, samples, multiplier):
        return _with_samples(samples, samples["samples"] * multiplier)


@node(category="latent/advanced", outputs=_LATENT, inputs=[
    *_TWO_LATENTS, Float("ratio", 1.0, min=0.0, max=1.0, step=0.01)])
class LatentInterpolate:
    def execute(self, samples1, samples2, ratio):
        mixed = latent_ops.interpolate_normalized(samples1["samples"], samples2["samples"], ratio)
        return _with_samples(samples1, mixed)


# -- batches -------------------------------------------------------------------------------------------

@node(category="latent/batch", outputs=_LATENT, inputs=_TWO_LATENTS)
class LatentBatch:
    def execute(self, samples1, samples2):
        return (latent_batch.concat(samples1, samples2),)


@node(category="latent/advanced", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Combo("seed_behavior", list(latent_batch.SEED_BEHAVIORS), "fixed")])
class LatentBatchSeedBehavior:
    def execute(self, samples, seed_behavior):
        return (latent_batch.seed_behavior(samples, seed_behavior),)


@node(category="latent/batch", display_name="Latent From Batch", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Int("batch_index", 0, min=0, max=63), Int("length", 1, min=1, max=64)])
class LatentFromBatch:
    def execute(self, samples, batch_index, length):
        return (latent_batch.from_batch(samples, batch_index, length),)


@node(category="latent/batch", display_name="Repeat Latent Batch", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Int("amount", 1, min=1, max=64)])
class RepeatLatentBatch:
    def execute(self, samples, amount):
        return (latent_batch.repeat_batch(samples, amount),)


# -- files ---------------------------------------------------------------------------------------------

@node(category="_for_testing", output_node=True, hidden=image_nodes.SAVE_HIDDEN, inputs=[
    Link("samples", "LATENT"), String("filename_prefix", "latents/ComfyUI")])
class SaveLatent:
    def execute(self, samples, filename_prefix="latents/ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix = folder_paths.resolve_text_references(filename_prefix, prompt)
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        metadata = None
        if not image_nodes.DISABLE_METADATA:  # --disable-metadata, read at run time
            metadata = {"prompt": "" if prompt is None else json.dumps(prompt)}
            metadata.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
        name = f"{filename}_{counter:05}_.latent"
        save_latent(os.path.join(folder, name), samples["samples"], metadata)
        return {"ui": {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


def _input_latents() -> list:
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder)
                  if f.endswith(".latent") and os.path.isfile(os.path.join(folder, f)))


def _latent_path(latent: str) -> str:
    """Resolve "name.latent" or "name.latent [output]"; refuse anything escaping its folder."""
    path = folder_paths.safe_annotated_filepath(latent)
    if path is None:
        raise ValueError(f"LoadLatent: latent path {latent!r} escapes its folder")
    return path


@node(category="_for_testing", outputs=_LATENT, inputs=[Combo("latent", _input_latents)])
class LoadLatent:
    def execute(self, latent):
        return ({"samples": load_latent(_latent_path(latent))},)

    @classmethod
    def IS_CHANGED(cls, latent):
        with open(_latent_path(latent), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, latent):
        # also accepts "name [output]" and sub/paths (hence no combo check), never a path escaping
        path = folder_paths.safe_annotated_filepath(latent)
        return True if path is not None and os.path.isfile(path) else f"Invalid latent file: {latent}"


# -- inpainting and outpainting --------------------------------------------------------------------

@node(category="latent/inpaint", display_name="Set Latent Noise Mask", outputs=_LATENT, inputs=[
    Link("samples", "LATENT"), Link("mask", "MASK")])
class SetLatentNoiseMask:
    def execute(self, samples, mask):
        out = dict(samples)
        out["noise_mask"] = mask.reshape(-1, 1, *mask.shape[-2:])
        return (out,)


@node(category="latent/inpaint", display_name="VAE Encode (for Inpainting)", outputs=_LATENT, inputs=[
    Link("pixels", "IMAGE"), Link("vae", "VAE"), Link("mask", "MASK"),
    Int("grow_mask_by", 6, min=0, max=64, step=1)])
class VAEEncodeForInpaint:
    def execute(self, pixels, vae, mask, grow_mask_by=6):
        ratio = getattr(vae, "downscale_ratio", LATENT_RATIO)
        grey, noise_mask = inpaint_inputs(pixels, mask, grow_mask_by, ratio=ratio)
        return ({"samples": vae.encode(grey), "noise_mask": noise_mask},)


@node(category="image", display_name="Pad Image for Outpainting", outputs=[Out("IMAGE"), Out("MASK")],
      inputs=[Link("image", "IMAGE"), _position("left"), _position("top"), _position("right"),
              _position("bottom"), Int("feathering", 40, min=0, max=MAX_RESOLUTION, step=1)])
class ImagePadForOutpaint:
    def execute(self, image, left, top, right, bottom, feathering):
        return pad_for_outpaint(image, left, top, right, bottom, feathering)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    LatentUpscale, LatentUpscaleBy, LatentComposite, LatentCompositeMasked, LatentBlend, LatentRotate,
    LatentFlip, LatentCrop, LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentBatch,
    LatentBatchSeedBehavior, LatentFromBatch, RepeatLatentBatch, SaveLatent, LoadLatent,
    SetLatentNoiseMask, VAEEncodeForInpaint, ImagePadForOutpaint)
# Where ComfyUI defines them, which /object_info reports as python_module (COMPAT §4, §7).
LatentCompositeMasked.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"
for _cls in (LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentBatch, LatentBatchSeedBehavior):
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_latent"
del _cls
