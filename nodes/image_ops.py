"""Image nodes that transform pixels: scaling, cropping, blending, filters, palettes, layout, batches.

Interfaces as ComfyUI 0.8 reports them (COMPAT §9): ImageScale, ImageScaleBy and ImageBatch live in
its nodes.py; the others in comfy_extras (nodes_images, nodes_post_processing, nodes_mask), which
/object_info names as their python_module. ImageBatchGrid is ours. The maths is in
diffusion/image_ops.py; each node unpacks its inputs and calls one function there.
"""
from __future__ import annotations

import functools

from diffusion import image_ops as ops
from nodes.spec import (MAX_RESOLUTION, Boolean, Combo, Float, Int, Link, Out, mappings, node)


def names_errors(execute):
    """Prefix an ImageOpError from the maths with the node's name, so the user sees which node
    and input it is about."""
    @functools.wraps(execute)
    def wrapper(self, *args, **kwargs):
        try:
            return execute(self, *args, **kwargs)
        except ops.ImageOpError as e:
            raise ops.ImageOpError(f"{type(self).__name__}: {e}") from None
    return wrapper


def comfy_extras(module: str, *classes) -> None:
    """Report these classes under ComfyUI's extras module in /object_info (COMPAT §4, §7)."""
    for cls in classes:
        cls.RELATIVE_PYTHON_MODULE = f"comfy_extras.{module}"


def _size(name: str, default: int, minimum: int) -> object:
    return Int(name, default, min=minimum, max=MAX_RESOLUTION, step=1)


_METHOD = Combo("upscale_method", list(ops.UPSCALE_METHODS))


@node(category="image/upscaling", display_name="Upscale Image", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), _METHOD, _size("width", 512, 0), _size("height", 512, 0),
    Combo("crop", list(ops.CROP_METHODS))])
class ImageScale:
    @names_errors
    def execute(self, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        width, height = ops.aspect_size(image.shape[1], image.shape[2], width, height)
        return (ops.resize_image(image, width, height, upscale_method, crop),)


@node(category="image/upscaling", display_name="Upscale Image By", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), _METHOD, Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01)])
class ImageScaleBy:
    @names_errors
    def execute(self, image, upscale_method, scale_by):
        width, height = ops.scaled_size(image.shape[1], image.shape[2], scale_by)
        return (ops.resize_image(image, width, height, upscale_method),)


@node(category="image/upscaling", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), _METHOD, Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
    Int("resolution_steps", 1, min=1, max=256)])
class ImageScaleToTotalPixels:
    @names_errors
    def execute(self, image, upscale_method, megapixels, resolution_steps):
        width, height = ops.total_pixels_size(image.shape[1], image.shape[2], megapixels,
                                              resolution_steps)
        return (ops.resize_image(image, width, height, upscale_method),)


@node(category="image", display_name="Batch Images", deprecated=True, outputs=[Out("IMAGE")],
      inputs=[Link("image1", "IMAGE"), Link("image2", "IMAGE")])
class ImageBatch:
    @names_errors
    def execute(self, image1, image2):
        return (ops.batch_images(image1, image2),)


@node(category="image/transform", display_name="Image Crop", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), _size("width", 512, 1), _size("height", 512, 1), _size("x", 0, 0),
    _size("y", 0, 0)])
class ImageCrop:
    def execute(self, image, width, height, x, y):
        return (ops.crop(image, width, height, x, y),)


@node(category="image/postprocessing", outputs=[Out("IMAGE")], inputs=[
    Link("image1", "IMAGE"), Link("image2", "IMAGE"),
    Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01), Combo("blend_mode", list(ops.BLEND_MODES))])
class ImageBlend:
    @names_errors
    def execute(self, image1, image2, blend_factor, blend_mode):
        return (ops.blend(image1, image2, blend_factor, blend_mode),)


@node(category="image/postprocessing", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), Int("blur_radius", 1, min=1, max=31, step=1),
    Float("sigma", 1.0, min=0.1, max=10.0, step=0.1)])
class ImageBlur:
    @names_errors
    def execute(self, image, blur_radius, sigma):
        return (ops.blur(image, blur_radius, sigma),)


@node(category="image/postprocessing", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), Int("sharpen_radius", 1, min=1, max=31, step=1),
    Float("sigma", 1.0, min=0.1, max=10.0, step=0.01), Float("alpha", 1.0, min=0.0, max=5.0, step=0.01)])
class ImageSharpen:
    @names_errors
    def execute(self, image, sharpen_radius, sigma, alpha):
        return (ops.sharpen(image, sharpen_radius, sigma, alpha),)


@node(category="image/postprocessing", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), Int("colors", 256, min=1, max=256, step=1),
    Combo("dither", list(ops.DITHER_METHODS))])
class ImageQuantize:
    @names_errors
    def execute(self, image, colors, dither):
        return (ops.quantize(image, colors, dither),)


@node(category="image", outputs=[Out("IMAGE")], inputs=[
    Link("destination", "IMAGE"), Link("source", "IMAGE"), _size("x", 0, 0), _size("y", 0, 0),
    Boolean("resize_source", False), Link("mask", "MASK", optional=True)])
class ImageCompositeMasked:
    def execute(self, destination, source, x, y, resize_source, mask=None):
        return (ops.composite_images(destination, source, x, y, mask, resize_source),)


@node(category="image/transform", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"])])
class ImageFlip:
    def execute(self, image, flip_method):
        return (ops.flip(image, flip_method[0]),)


_ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]


@node(category="image/transform", outputs=[Out("IMAGE")],
      inputs=[Link("image", "IMAGE"), Combo("rotation", _ROTATIONS)])
class ImageRotate:
    def execute(self, image, rotation):
        return (ops.rotate(image, _ROTATIONS.index(rotation)),)


@node(category="image/transform", display_name="Image Stitch", outputs=[Out("IMAGE")],
      description="Stitches image2 to image1 in the specified direction.\n"
                  "If image2 is not provided, returns image1 unchanged.\n"
                  "Optional spacing can be added between images.",
      inputs=[Link("image1", "IMAGE"), Combo("direction", list(ops.STITCH_DIRECTIONS), "right"),
              Boolean("match_image_size", True), Int("spacing_width", 0, min=0, max=1024, step=2),
              Combo("spacing_color", list(ops.STITCH_COLORS), "white"),
              Link("image2", "IMAGE", optional=True)])
class ImageStitch:
    @names_errors
    def execute(self, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        return (ops.stitch(image1, image2, direction, match_image_size, spacing_width, spacing_color),)


@node(category="image/batch", outputs=[Out("IMAGE")],
      inputs=[Link("image", "IMAGE"), Int("amount", 1, min=1, max=4096)])
class RepeatImageBatch:
    def execute(self, image, amount):
        return (image.repeat((amount, 1, 1, 1)),)


@node(category="image/batch", outputs=[Out("IMAGE")], inputs=[
    Link("image", "IMAGE"), Int("batch_index", 0, min=0, max=4095), Int("length", 1, min=1, max=4096)])
class ImageFromBatch:
    def execute(self, image, batch_index, length):
        return (ops.from_batch(image, batch_index, length),)


@node(category="image", display_name="Get Image Size",
      description="Returns width and height of the image, and passes it through unchanged.",
      outputs=[Out("INT", "width"), Out("INT", "height"), Out("INT", "batch_size")],
      inputs=[Link("image", "IMAGE")], hidden={"unique_id": "UNIQUE_ID"})
class GetImageSize:
    def execute(self, image, unique_id=None):
        return (int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


def _rgb(color: int) -> tuple:
    return tuple(((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0))


@node(category="image", display_name="Image Grid (Batch)", outputs=[Out("IMAGE")],
      description="Tiles a batch of images into one image, row by row: `columns` images per row "
                  "and `gap` pixels of `gap_color` between them (and in the empty cells of the "
                  "last row). Not ComfyUI's dataset node ImageGrid, which takes a list.",
      inputs=[Link("images", "IMAGE"), Int("columns", 4, min=1, max=4096, step=1),
              Int("gap", 0, min=0, max=1024, step=1),
              Int("gap_color", 0xFFFFFF, min=0, max=0xFFFFFF, step=1, display="color")])
class ImageBatchGrid:
    @names_errors
    def execute(self, images, columns, gap, gap_color):
        return (ops.grid(images, columns, gap, _rgb(gap_color)),)


comfy_extras("nodes_images", ImageCrop, ImageFlip, ImageRotate, ImageStitch, RepeatImageBatch,
             ImageFromBatch, GetImageSize)
comfy_extras("nodes_post_processing", ImageBlend, ImageBlur, ImageSharpen, ImageQuantize,
             ImageScaleToTotalPixels)
comfy_extras("nodes_mask", ImageCompositeMasked)

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImageBatch, ImageCrop, ImageBlend, ImageBlur,
    ImageSharpen, ImageQuantize, ImageCompositeMasked, ImageFlip, ImageRotate, ImageStitch,
    RepeatImageBatch, ImageFromBatch, GetImageSize, ImageBatchGrid)
