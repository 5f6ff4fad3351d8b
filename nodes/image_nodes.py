"""Image nodes without models: EmptyImage, ImageInvert, LoadImage, SaveImage, PreviewImage.

COMPAT §9 inputs, §1.6 conventions (IMAGE float32 [B,H,W,C] 0..1, MASK [B,H,W], mask = 1 - alpha),
§2.3 PNG text chunks and §7 file naming. Nodes never modify their input tensors (the cache shares
outputs between nodes and prompts); they always return new tensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import string

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from graph.progress import current_node
from nodes import folder_paths
from nodes.spec import MAX_RESOLUTION, Combo, Int, Link, Out, String, mappings, node

# Set by the server's --disable-metadata: no prompt/workflow text chunks in saved PNGs.
DISABLE_METADATA = False
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


@node(category="image", outputs=[Out("IMAGE")], inputs=[
    Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
    Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
    Int("batch_size", 1, min=1, max=4096),
    Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color")])
class EmptyImage:
    def execute(self, width, height, batch_size=1, color=0):
        rgb = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        image = torch.tensor(rgb, dtype=torch.float32).expand(batch_size, height, width, 3)
        return (image.contiguous(),)


@node(category="image", display_name="Invert Image", outputs=[Out("IMAGE")],
      inputs=[Link("image", "IMAGE")])
class ImageInvert:
    def execute(self, image):
        return (1.0 - image,)


def _input_images() -> list:
    folder = folder_paths.get_input_directory()
    if not os.path.isdir(folder):
        return []
    names = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    # Listed by mimetype, as ComfyUI does (so .avif, .jfif … appear); any existing file validates.
    return sorted(folder_paths.filter_files_content_types(names, ["image"]))


def _image_path(image: str) -> str:
    """Resolve "name.png", "sub/name.png" or "name.png [output]"; refuse anything escaping."""
    path = folder_paths.safe_annotated_filepath(image)
    if path is None:
        raise ValueError(f"image path {image!r} escapes its folder")
    return path


def load_image_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(IMAGE [B,H,W,3], MASK [B,H,W]) from a file: EXIF-rotated, equal-size frames stacked."""
    img = Image.open(path)
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        elif rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])
        if "A" in frame.getbands():
            alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
            masks.append((1.0 - torch.from_numpy(alpha))[None])
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
            masks.append((1.0 - torch.from_numpy(alpha))[None])
        else:
            masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
        if img.format == "MPO":
            break  # the other MPO frames are depth/stereo views, not a batch
    return torch.cat(images, 0), torch.cat(masks, 0)


@node(category="image", display_name="Load Image", outputs=[Out("IMAGE"), Out("MASK")],
      inputs=[Combo("image", _input_images, image_upload=True)])
class LoadImage:
    def execute(self, image):
        return load_image_file(_image_path(image))

    @classmethod
    def IS_CHANGED(cls, image):
        digest = hashlib.sha256()
        with open(_image_path(image), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @classmethod
    def VALIDATE_INPUTS(cls, image):
        try:
            path = _image_path(image)
        except ValueError as e:
            return str(e)
        if not os.path.isfile(path):
            return f"Invalid image file: {image}"
        return True


# The PNG text chunks of the prompt being run: every Save/PreviewImage of one prompt embeds the same
# prompt and workflow, and serializing a 2,000-node prompt once per image cost more than the rest of
# such a run. One entry, valid for one run (prompt id) and the very same objects.
_chunk_memo: dict = {}


def _metadata_texts(prompt, extra_pnginfo) -> list[tuple[str, str]]:
    run = current_node()
    key = (run.prompt_id if run is not None else None, id(prompt), id(extra_pnginfo))
    memo = _chunk_memo.get("entry")
    if (run is not None and memo is not None and memo[0] == key and memo[1] is prompt
            and memo[2] is extra_pnginfo):
        return memo[3]
    texts = [("prompt", json.dumps(prompt))] if prompt is not None else []
    texts += [(k, json.dumps(v)) for k, v in (extra_pnginfo or {}).items()]
    _chunk_memo["entry"] = (key, prompt, extra_pnginfo, texts)
    return texts


def save_png_batch(images, filename_prefix: str, output_dir: str, folder_type: str,
                   compress_level: int, prompt=None, extra_pnginfo=None) -> list:
    """Write each image of the batch as `<name>_<counter:05>_.png`; returns the UI entries."""
    height, width = int(images[0].shape[0]), int(images[0].shape[1])
    filename_prefix = folder_paths.resolve_text_references(filename_prefix, prompt)
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, output_dir, width, height)
    results = []
    for batch_number, image in enumerate(images):
        pixels = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
        metadata = None
        if not DISABLE_METADATA:
            metadata = PngInfo()
            for key, text in _metadata_texts(prompt, extra_pnginfo):
                metadata.add_text(key, text)
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        Image.fromarray(pixels).save(os.path.join(full_folder, name), pnginfo=metadata,
                                     compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results


@node(category="image", display_name="Save Image", output_node=True, hidden=SAVE_HIDDEN,
      description="Writes the images to the output folder, with the workflow embedded.",
      inputs=[Link("images", "IMAGE", tooltip="Images to write as PNG files."),
              String("filename_prefix", "ComfyUI",
                     tooltip="File name start, optionally with sub-folders (a/b/name); "
                             "%width%, %height%, %year% ..., %date:yyyy-MM-dd% and "
                             "%NodeTitle.input% are replaced.")])
class SaveImage:
    def execute(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        results = save_png_batch(images, filename_prefix, folder_paths.get_output_directory(),
                                 "output", 4, prompt, extra_pnginfo)
        return {"ui": {"images": results}}


@node(category="image", display_name="Preview Image", output_node=True, hidden=SAVE_HIDDEN,
      description="Writes the images to the temp folder for display in the editor.",
      inputs=[Link("images", "IMAGE")])
class PreviewImage:
    def execute(self, images, prompt=None, extra_pnginfo=None):
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        results = save_png_batch(images, f"ComfyUI_temp_{suffix}", folder_paths.get_temp_directory(),
                                 "temp", 1, prompt, extra_pnginfo)
        return {"ui": {"images": results}}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    EmptyImage, ImageInvert, LoadImage, SaveImage, PreviewImage)
