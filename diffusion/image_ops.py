"""Pixel operations on IMAGE tensors [B,H,W,C] (0..1) and channel-first batches [B,C,H,W].

The maths behind the image nodes (ImageScale…, ImageBlend, ImageBlur, ImageSharpen, ImageQuantize,
ImageCompositeMasked, ImageStitch, the batch grid), written to give ComfyUI 0.8's numbers
(`comfy/utils.py:common_upscale`, `comfy_extras/nodes_post_processing.py`, `nodes_images.py`,
`nodes_mask.py`). Functions never modify their inputs: node outputs are cached and shared.
Bad arguments raise ImageOpError naming the argument; nodes prefix their own name.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffusion import resample
from diffusion.resample import repeat_to_batch

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "soft_light", "difference")
DITHER_METHODS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")
STITCH_DIRECTIONS = ("right", "down", "left", "up")
STITCH_COLORS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0), "red": (1.0, 0.0, 0.0),
                 "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


class ImageOpError(ValueError):
    """An argument an image operation cannot work with; the message names it."""


# ---------------------------------------------------------------------------------------------
# Resizing


def resize(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"):
    """Resize a [B,C,H,W] batch to width x height with one of UPSCALE_METHODS (the image nodes'
    choice); crop "center" first cuts the centred region with the target's aspect ratio."""
    if method not in UPSCALE_METHODS:
        raise ImageOpError(f"upscale_method must be one of {', '.join(UPSCALE_METHODS)}, got {method!r}")
    if crop not in CROP_METHODS:
        raise ImageOpError(f"crop must be one of {', '.join(CROP_METHODS)}, got {crop!r}")
    if width < 1 or height < 1:
        raise ImageOpError(f"the target size {width}x{height} (width x height) is empty; "
                           f"each side must be at least 1 pixel")
    return resample.resize(samples, width, height, method, crop)


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled"):
    """resize() for an IMAGE [B,H,W,C]."""
    return resize(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def aspect_size(height: int, width: int, target_width: int, target_height: int) -> tuple[int, int]:
    """(width, height) where a 0 side follows the image's aspect ratio (ImageScale's rule)."""
    if target_width == 0:
        target_width = max(1, round(width * target_height / height))
    elif target_height == 0:
        target_height = max(1, round(height * target_width / width))
    return target_width, target_height


def scaled_size(height: int, width: int, scale_by: float) -> tuple[int, int]:
    """(width, height) of an image scaled by a factor, rounded as ImageScaleBy does."""
    return round(width * scale_by), round(height * scale_by)


def total_pixels_size(height: int, width: int, megapixels: float, steps: int = 1) -> tuple[int, int]:
    """(width, height) with about `megapixels` * 1024² pixels, the aspect kept, each side a multiple
    of `steps` (ImageScaleToTotalPixels)."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return (int(round(width * scale / steps) * steps), int(round(height * scale / steps) * steps))


# ---------------------------------------------------------------------------------------------
# Batches and channels


def match_channels(destination: torch.Tensor, source: torch.Tensor):
    """Give source the destination's channel count on the last axis: an alpha channel is dropped,
    or added as fully opaque (node_helpers.image_alpha_fix, as fixed upstream)."""
    c_dst, c_src = destination.shape[-1], source.shape[-1]
    if c_dst < c_src:
        source = source[..., :c_dst]
    elif c_dst > c_src:
        source = F.pad(source, (0, c_dst - c_src), value=1.0)
    return destination, source


def _broadcast_batches(a: torch.Tensor, b: torch.Tensor, what: str):
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ImageOpError(f"{what} have batch sizes {a.shape[0]} and {b.shape[0]}; they must be "
                           f"equal or one of them 1")


def crop(image: torch.Tensor, width: int, height: int, x: int, y: int) -> torch.Tensor:
    """The width x height region at (x, y); the corner is clamped into the image and the region to
    its edges (ImageCrop)."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width].clone()


def from_batch(batch: torch.Tensor, index: int, length: int) -> torch.Tensor:
    """`length` items from `index`, both clamped into the batch (ImageFromBatch)."""
    index = min(batch.shape[0] - 1, index)
    length = min(batch.shape[0] - index, length)
    return batch[index:index + length].clone()


def rotate(image: torch.Tensor, quarter_turns: int) -> torch.Tensor:
    """Rotate clockwise by quarter turns (ImageRotate)."""
    return torch.rot90(image, k=quarter_turns, dims=[2, 1])


def flip(image: torch.Tensor, axis: str) -> torch.Tensor:
    """Mirror across the x axis (upside down) or the y axis (left-right)."""
    return torch.flip(image, dims=[1] if axis == "x" else [2])


def batch_images(image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
    """image2 appended to image1; image2 is first resized to image1's size (bilinear, centre crop),
    and a missing alpha channel is added as opaque (ImageBatch)."""
    if image1.shape[-1] < image2.shape[-1]:
        image2, image1 = match_channels(image2, image1)
    else:
        image1, image2 = match_channels(image1, image2)
    if image1.shape[1:3] != image2.shape[1:3]:
        image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
    return torch.cat((image1, image2), dim=0)


# ---------------------------------------------------------------------------------------------
# Compositing and blending


def composite_images(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                     mask: torch.Tensor | None = None, resize_source: bool = False) -> torch.Tensor:
    """composite() for IMAGEs [B,H,W,C] at pixel positions (ImageCompositeMasked)."""
    destination, source = match_channels(destination, source)
    return resample.composite_masked(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, 1,
                                     resize_source).movedim(1, -1)


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend_layers(base: torch.Tensor, layer: torch.Tensor, mode: str) -> torch.Tensor:
    """The blend mode's result for base (image1) under layer (image2), before mixing.
    "difference" is base − layer (then clamped by blend()), as ComfyUI defines it."""
    if mode == "normal":
        return layer
    if mode == "multiply":
        return base * layer
    if mode == "screen":
        return 1 - (1 - base) * (1 - layer)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * layer, 1 - 2 * (1 - base) * (1 - layer))
    if mode == "soft_light":  # the W3C compositing formula
        return torch.where(layer <= 0.5, base - (1 - 2 * layer) * base * (1 - base),
                           base + (2 * layer - 1) * (_soft_light_g(base) - base))
    if mode == "difference":
        return base - layer
    raise ImageOpError(f"blend_mode must be one of {', '.join(BLEND_MODES)}, got {mode!r}")


def blend(image1: torch.Tensor, image2: torch.Tensor, factor: float, mode: str) -> torch.Tensor:
    """image1·(1−factor) + mode(image1, image2)·factor, clamped to 0..1 (ImageBlend). image2 is
    resized to image1 (bicubic, centre crop) when their sizes differ."""
    image1, image2 = match_channels(image1, image2)
    _broadcast_batches(image1, image2, "image1 and image2")
    if image1.shape[1:] != image2.shape[1:]:
        image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    blended = blend_layers(image1, image2, mode)
    return torch.clamp(image1 * (1 - factor) + blended * factor, 0, 1)


# ---------------------------------------------------------------------------------------------
# Filters


def gaussian_kernel(size: int, sigma: float, dtype=torch.float32) -> torch.Tensor:
    """A size x size Gaussian, normalised to sum 1, whose coordinates run from −1 to 1 across the
    kernel: sigma is in units of the radius, not of pixels (ComfyUI's definition)."""
    x, y = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int, what: str) -> torch.Tensor:
    """Convolve each channel with kernel over the image reflected at its borders."""
    _, h, w, c = image.shape
    if radius >= h or radius >= w:
        raise ImageOpError(f"{what} {radius} needs an image larger than {radius} pixels on each side "
                           f"(this one is {w}x{h})")
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    weight = kernel.to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=c).movedim(1, -1)


def blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Gaussian blur with a (2·radius+1)² kernel (ImageBlur)."""
    if radius == 0:
        return image
    return _filter(image, gaussian_kernel(2 * radius + 1, sigma), radius, "blur_radius")


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp-style sharpening: the negated Gaussian scaled by 10·alpha, its centre raised so the
    kernel sums to 1; result clamped to 0..1 (ImageSharpen)."""
    if radius == 0:
        return image
    size = 2 * radius + 1
    kernel = gaussian_kernel(size, sigma, image.dtype) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    return torch.clamp(_filter(image, kernel, radius, "sharpen_radius"), 0, 1)


# ---------------------------------------------------------------------------------------------
# Palette reduction


def bayer_matrix(order: int) -> np.ndarray:
    """The order x order ordered-dither (Bayer) threshold matrix, centred on zero, in units of one
    palette step (built recursively from the 2x2 pattern)."""
    m = np.zeros((1, 1), np.float64)
    for n in range(1, int(math.log2(order)) + 1):
        q = 4 ** n
        m = q * m
        m = np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q
    return m


def _quantize_one(pixels: np.ndarray, colors: int, dither: str) -> np.ndarray:
    im = Image.fromarray(pixels, mode="RGB")
    # Pillow picks the palette first (median cut); dithering against it is a second pass.
    palette = im.quantize(colors=colors)
    if dither == "none":
        out = im.quantize(palette=palette, dither=Image.Dither.NONE)
    elif dither == "floyd-steinberg":
        out = im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    else:
        order = int(dither.split("-")[1])
        spread = 2 * 256 / (len(palette.getpalette()) // 3)
        threshold = spread * bayer_matrix(order) + 0.5
        h, w = pixels.shape[:2]
        tiled = np.tile(threshold, (math.ceil(h / order), math.ceil(w / order)))[:h, :w, None]
        shifted = pixels.astype(np.float32)
        shifted += tiled
        shifted = np.clip(shifted, 0, 255).astype(np.uint8)
        out = Image.fromarray(shifted, mode="RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    return np.asarray(out.convert("RGB"))


def quantize(image: torch.Tensor, colors: int, dither: str) -> torch.Tensor:
    """Reduce each image to at most `colors` colours with Pillow (ImageQuantize); an alpha channel
    is kept as it is."""
    if dither not in DITHER_METHODS:
        raise ImageOpError(f"dither must be one of {', '.join(DITHER_METHODS)}, got {dither!r}")
    if not 1 <= colors <= 256:
        raise ImageOpError(f"colors must be between 1 and 256, got {colors}")
    if image.shape[-1] < 3:
        raise ImageOpError(f"needs an RGB image, got {image.shape[-1]} channel(s)")
    out = image.detach().cpu().float().clone()
    for b in range(out.shape[0]):
        # (x·255) truncated to 8 bits, as ComfyUI does.
        pixels = (out[b, ..., :3].clamp(0, 1) * 255).to(torch.uint8).numpy()
        out[b, ..., :3] = torch.from_numpy(_quantize_one(pixels, colors, dither).astype(np.float32) / 255)
    return out.to(image.device, image.dtype)


# ---------------------------------------------------------------------------------------------
# Layout


def _pad_centered(image: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    """Pad `image` along `dim` to `size`, half before and half (rounded up) after."""
    missing = size - image.shape[dim]
    if missing <= 0:
        return image
    spec = [0, 0] * (image.ndim - dim)  # F.pad lists the last axis first
    spec[-2], spec[-1] = missing // 2, missing - missing // 2
    return F.pad(image, tuple(spec), value=value)


def _fill(shape, color: tuple, like: torch.Tensor) -> torch.Tensor:
    """A block of `color` (RGB; an alpha channel opaque) with `like`'s channel count."""
    block = torch.zeros(*shape[:-1], like.shape[-1], dtype=like.dtype, device=like.device)
    for i, value in enumerate(color[:like.shape[-1]]):
        block[..., i] = value
    if like.shape[-1] == 4:
        block[..., 3] = 1.0
    return block


def stitch(image1: torch.Tensor, image2: torch.Tensor | None, direction: str, match_size: bool,
           spacing: int, spacing_color: str) -> torch.Tensor:
    """image2 placed on the `direction` side of image1 (ImageStitch, from KJNodes).

    Batches are evened out by repeating the shorter one's last image. With match_size, image2 is
    resized (Lanczos) to image1's height (left/right) or width (up/down), keeping its aspect;
    otherwise the smaller one is padded, centred, with the spacing colour (black for the coloured
    choices). An odd spacing is rounded up to even."""
    if image2 is None:
        return image1
    if direction not in STITCH_DIRECTIONS:
        raise ImageOpError(f"direction must be one of {', '.join(STITCH_DIRECTIONS)}, got {direction!r}")
    if spacing_color not in STITCH_COLORS:
        raise ImageOpError(f"spacing_color must be one of {', '.join(STITCH_COLORS)}, got {spacing_color!r}")
    batch = max(image1.shape[0], image2.shape[0])
    image1 = torch.cat([image1, image1[-1:].repeat(batch - image1.shape[0], 1, 1, 1)])
    image2 = torch.cat([image2, image2[-1:].repeat(batch - image2.shape[0], 1, 1, 1)])
    horizontal = direction in ("left", "right")
    if match_size:
        (h1, w1), (h2, w2) = image1.shape[1:3], image2.shape[1:3]
        if horizontal:
            size = (max(1, int(h1 * (w2 / h2))), h1)
        else:
            size = (w1, max(1, int(w1 / (w2 / h2))))
        image2 = resize_image(image2, size[0], size[1], "lanczos")
    else:
        color = STITCH_COLORS[spacing_color]
        pad_value = color[0] if len(set(color)) == 1 else 0.0
        axis = 1 if horizontal else 2
        size = max(image1.shape[axis], image2.shape[axis])
        image1 = _pad_centered(image1, axis, size, pad_value)
        image2 = _pad_centered(image2, axis, size, pad_value)
    channels = max(image1.shape[-1], image2.shape[-1])
    image1 = F.pad(image1, (0, channels - image1.shape[-1]), value=1.0)
    image2 = F.pad(image2, (0, channels - image2.shape[-1]), value=1.0)
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    if spacing > 0:
        spacing += spacing % 2
        if horizontal:
            shape = (batch, max(image1.shape[1], image2.shape[1]), spacing, channels)
        else:
            shape = (batch, spacing, max(image1.shape[2], image2.shape[2]), channels)
        parts.insert(1, _fill(shape, STITCH_COLORS[spacing_color], image1))
    return torch.cat(parts, dim=2 if horizontal else 1)


def grid(images: torch.Tensor, columns: int, gap: int = 0, color: tuple = (1.0, 1.0, 1.0)):
    """The batch tiled row by row into one image [1, H', W', C]: `columns` per row (at most the
    batch size), `gap` pixels of `color` between tiles; empty cells of the last row are `color`."""
    if columns < 1:
        raise ImageOpError(f"columns must be at least 1, got {columns}")
    if gap < 0:
        raise ImageOpError(f"gap must be >= 0, got {gap}")
    b, h, w, _ = images.shape
    columns = min(columns, b)
    rows = math.ceil(b / columns)
    out = _fill((1, rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, images.shape[-1]),
                color, images)
    for i in range(b):
        top, left = (i // columns) * (h + gap), (i % columns) * (w + gap)
        out[0, top:top + h, left:left + w] = images[i]
    return out
