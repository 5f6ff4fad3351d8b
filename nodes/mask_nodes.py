"""Mask nodes: LoadImageMask (ComfyUI's nodes.py) and the comfy_extras/nodes_mask family.

MASK is float32 [B,H,W] in 0..1 (COMPAT §1.6). The maths is in diffusion/mask_ops.py; files are
read with LoadImage's rules (nodes/image_nodes.py): same paths, same change detection.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

from diffusion import mask_ops
from nodes import folder_paths
from nodes.image_nodes import LoadImage, PreviewImage, SAVE_HIDDEN, _image_path
from nodes.image_ops import comfy_extras, names_errors
from nodes.spec import MAX_RESOLUTION, Boolean, Combo, Float, Int, Link, Out, mappings, node

MASK_CHANNELS = ["alpha", "red", "green", "blue"]


def _input_files() -> list:
    # LoadImageMask lists every top-level file of input/ (LoadImage lists only image types).
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))


def load_mask_file(path: str, channel: str) -> torch.Tensor:
    """One channel of the file's first frame as a MASK [1,H,W]: EXIF-rotated, 16-bit "I" images
    scaled by 1/255, converted to RGBA (an image without alpha is opaque); alpha is inverted so
    transparent pixels are 1 (COMPAT §9)."""
    if channel not in MASK_CHANNELS:
        raise ValueError(f"LoadImageMask: channel must be one of {', '.join(MASK_CHANNELS)}, "
                         f"got {channel!r}")
    img = ImageOps.exif_transpose(Image.open(path))
    if img.getbands() != ("R", "G", "B", "A"):
        if img.mode == "I":
            img = img.point(lambda v: v * (1 / 255))
        img = img.convert("RGBA")
    band = channel[0].upper()
    mask = torch.from_numpy(np.array(img.getchannel(band)).astype(np.float32) / 255.0)
    if band == "A":
        mask = 1.0 - mask
    return mask[None]


@node(category="mask", display_name="Load Image (as Mask)", outputs=[Out("MASK")],
      inputs=[Combo("image", _input_files, image_upload=True), Combo("channel", MASK_CHANNELS)])
class LoadImageMask:
    def execute(self, image, channel):
        return (load_mask_file(_image_path(image), channel),)

    @classmethod
    def IS_CHANGED(cls, image, channel):
        return LoadImage.IS_CHANGED(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        return LoadImage.VALIDATE_INPUTS(image)


@node(category="mask", display_name="Convert Mask to Image", outputs=[Out("IMAGE")],
      inputs=[Link("mask", "MASK")])
class MaskToImage:
    def execute(self, mask):
        return (mask_ops.to_image(mask),)


@node(category="mask", display_name="Convert Image to Mask", outputs=[Out("MASK")],
      inputs=[Link("image", "IMAGE"), Combo("channel", list(mask_ops.IMAGE_CHANNELS))])
class ImageToMask:
    @names_errors
    def execute(self, image, channel):
        return (mask_ops.from_image(image, channel),)


@node(category="mask", outputs=[Out("MASK")], inputs=[
    Link("image", "IMAGE"), Int("color", 0, min=0, max=0xFFFFFF, step=1, display="number")])
class ImageColorToMask:
    def execute(self, image, color):
        return (mask_ops.from_color(image, color),)


@node(category="mask", outputs=[Out("MASK")], inputs=[
    Float("value", 1.0, min=0.0, max=1.0, step=0.01),
    Int("width", 512, min=1, max=MAX_RESOLUTION, step=1), Int("height", 512, min=1, max=MAX_RESOLUTION, step=1)])
class SolidMask:
    def execute(self, value, width, height):
        return (mask_ops.solid(value, width, height),)


@node(category="mask", outputs=[Out("MASK")], inputs=[Link("mask", "MASK")])
class InvertMask:
    def execute(self, mask):
        return (1.0 - mask,)


def _coord(name: str, default: int = 0, minimum: int = 0):
    return Int(name, default, min=minimum, max=MAX_RESOLUTION, step=1)


@node(category="mask", outputs=[Out("MASK")], inputs=[
    Link("mask", "MASK"), _coord("x"), _coord("y"), _coord("width", 512, 1), _coord("height", 512, 1)])
class CropMask:
    def execute(self, mask, x, y, width, height):
        return (mask_ops.crop(mask, x, y, width, height),)


@node(category="mask", outputs=[Out("MASK")], inputs=[
    Link("destination", "MASK"), Link("source", "MASK"), _coord("x"), _coord("y"),
    Combo("operation", list(mask_ops.MASK_OPERATIONS))])
class MaskComposite:
    @names_errors
    def execute(self, destination, source, x, y, operation):
        return (mask_ops.composite(destination, source, x, y, operation),)


@node(category="mask", outputs=[Out("MASK")], inputs=[
    Link("mask", "MASK"), _coord("left"), _coord("top"), _coord("right"), _coord("bottom")])
class FeatherMask:
    def execute(self, mask, left, top, right, bottom):
        return (mask_ops.feather(mask, left, top, right, bottom),)


@node(category="mask", display_name="Grow Mask", outputs=[Out("MASK")], inputs=[
    Link("mask", "MASK"), Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
    Boolean("tapered_corners", True)])
class GrowMask:
    def execute(self, mask, expand, tapered_corners):
        return (mask_ops.grow(mask, expand, tapered_corners),)


@node(category="mask", outputs=[Out("MASK")],
      inputs=[Link("mask", "MASK"), Float("value", 0.5, min=0.0, max=1.0, step=0.01)])
class ThresholdMask:
    def execute(self, mask, value):
        return (mask_ops.threshold(mask, value),)


@node(category="mask", display_name="Preview Mask", output_node=True, hidden=SAVE_HIDDEN,
      description="Saves the input images to your ComfyUI output directory.",
      inputs=[Link("mask", "MASK")])
class MaskPreview:
    """The mask as a grey image, shown the way PreviewImage shows images."""

    def execute(self, mask, prompt=None, extra_pnginfo=None):
        return PreviewImage().execute(mask_ops.to_image(mask), prompt, extra_pnginfo)


comfy_extras("nodes_mask", MaskToImage, ImageToMask, ImageColorToMask, SolidMask, InvertMask,
             CropMask, MaskComposite, FeatherMask, GrowMask, ThresholdMask, MaskPreview)

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    LoadImageMask, MaskToImage, ImageToMask, ImageColorToMask, SolidMask, InvertMask, CropMask,
    MaskComposite, FeatherMask, GrowMask, ThresholdMask, MaskPreview)
