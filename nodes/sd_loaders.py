"""Core model-file loaders: CheckpointLoaderSimple, CheckpointLoader, VAELoader, and the separate-file
loaders CLIPLoader, DualCLIPLoader (text encoders) and UNETLoader (diffusion models).

Files are looked up in the model folders (nodes/folder_paths.py, COMPAT §8) and read by
diffusion/loading/checkpoint.py, which detects the architecture from the keys and shapes. Loaders are ordinary
cached nodes (COMPAT §3.4): an unchanged loader is not re-run, so a file is read once per change.
"""
from __future__ import annotations

import os

import torch

from diffusion.loading import taesd
from diffusion.loading.checkpoint import load_checkpoint, load_text_encoders, load_unet, load_vae
from diffusion.models.pixel_space import PixelSpaceVAE
from nodes import folder_paths
from nodes.spec import Combo, Out, mappings, node

# VAELoader offers these names when both halves of the tiny autoencoder are in models/vae_approx
# (ComfyUI 0.8: `nodes.py:VAELoader.vae_list`); name -> (encoder file stem, decoder file stem).
TAESD_VARIANTS = {
    "taesd": ("taesd_encoder", "taesd_decoder"),
    "taesdxl": ("taesdxl_encoder", "taesdxl_decoder"),
    "taesd3": ("taesd3_encoder", "taesd3_decoder"),
    "taef1": ("taef1_encoder", "taef1_decoder"),
}
PIXEL_SPACE = "pixel_space"


def model_path(folder: str, name: str, node: str, input_name: str) -> str:
    """Full path of `name` in model folder `folder`, or a FileNotFoundError a user can act on."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{node}: input '{input_name}' must be a file name, got {name!r}")
    path = folder_paths.get_full_path(folder, name)
    if path is None or not os.path.isfile(path):
        roots = ", ".join(folder_paths.get_folder_paths(folder)) or "(no folders configured)"
        raise FileNotFoundError(f"{node}: {input_name} '{name}' was not found in the '{folder}' model "
                                f"folders ({roots}). Put the file there or pick another.")
    return path


def load_checkpoint_file(ckpt_name: str, node: str):
    path = model_path("checkpoints", ckpt_name, node, "ckpt_name")
    loaded = load_checkpoint(path, embedding_dirs=folder_paths.get_folder_paths("embeddings"))
    return loaded.model, loaded.clip, loaded.vae


def _checkpoint_names() -> list:
    return folder_paths.get_filename_list("checkpoints")


def _config_names() -> list:
    return folder_paths.get_filename_list("configs")


@node(category="loaders", display_name="Load Checkpoint",
      description="Loads a single-file checkpoint: the diffusion model, its text encoder and its VAE.",
      outputs=[Out("MODEL", tooltip="The denoising model (UNet)."),
               Out("CLIP", tooltip="The text encoder that turns prompts into conditioning."),
               Out("VAE", tooltip="The autoencoder between pixels and latents.")],
      inputs=[Combo("ckpt_name", _checkpoint_names, tooltip="A file in models/checkpoints.")])
class CheckpointLoaderSimple:
    def execute(self, ckpt_name):
        return load_checkpoint_file(ckpt_name, "CheckpointLoaderSimple")


@node(category="advanced/loaders", display_name="Load Checkpoint With Config (DEPRECATED)", deprecated=True,
      outputs=[Out("MODEL"), Out("CLIP"), Out("VAE")],
      inputs=[Combo("config_name", _config_names), Combo("ckpt_name", _checkpoint_names)])
class CheckpointLoader:
    """Deprecated two-input form; the architecture is detected from the weights, the config unused."""

    def execute(self, config_name, ckpt_name):
        return load_checkpoint_file(ckpt_name, "CheckpointLoader")


def _taesd_names() -> list[str]:
    """TAESD variants whose encoder and decoder files are both in the vae_approx folders."""
    stems = {os.path.splitext(os.path.basename(f))[0] for f in folder_paths.get_filename_list("vae_approx")}
    return [name for name, (enc, dec) in TAESD_VARIANTS.items() if enc in stems and dec in stems]


def _approx_file(stem: str) -> str:
    for f in folder_paths.get_filename_list("vae_approx"):
        if os.path.splitext(os.path.basename(f))[0] == stem:
            return folder_paths.get_full_path("vae_approx", f)
    raise FileNotFoundError(f"VAELoader: models/vae_approx has no '{stem}.*' file")


def vae_list() -> list:
    """VAE files, then the TAESD variants that are present, then "pixel_space" (COMPAT §9)."""
    return list(folder_paths.get_filename_list("vae")) + _taesd_names() + [PIXEL_SPACE]


@node(category="loaders", display_name="Load VAE", outputs=[Out("VAE")],
      inputs=[Combo("vae_name", vae_list)])
class VAELoader:
    def execute(self, vae_name):
        if vae_name == PIXEL_SPACE:
            return (PixelSpaceVAE(),)
        if vae_name in TAESD_VARIANTS and vae_name in _taesd_names():
            enc, dec = TAESD_VARIANTS[vae_name]
            return (taesd.load_taesd_vae(_approx_file(enc), _approx_file(dec), variant=vae_name),)
        return (load_vae(model_path("vae", vae_name, "VAELoader", "vae_name")),)


# The type options of ComfyUI 0.8, in its order (COMPAT §9). The families this runtime has load; the
# others are refused by name. CLIPLoader's "stable_diffusion" takes CLIP-L (SD1), OpenCLIP-H (SD2) or
# bigG (SDXL refiner), told apart by the weights' sizes, as ComfyUI does.
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
              "ovis"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                   "kandinsky5", "kandinsky5_image", "ltxv", "newbie"]
SUPPORTED_CLIP_TYPES = {"stable_diffusion", "sdxl"}
DEVICES = ["default", "cpu"]
WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def _text_encoder_names() -> list:
    return folder_paths.get_filename_list("text_encoders")


def _device_input():
    return Combo("device", DEVICES, optional=True, advanced=True)


def load_clip_files(names: list, clip_type: str, device: str, node: str) -> tuple:
    if clip_type not in SUPPORTED_CLIP_TYPES:
        raise ValueError(f"{node}: type '{clip_type}' is not supported by this runtime (it loads SD1, SD2 and SDXL "
                         f"text encoders: {' or '.join(sorted(SUPPORTED_CLIP_TYPES))})")
    if device not in DEVICES:
        raise ValueError(f"{node}: device must be one of {DEVICES}, got {device!r}")
    inputs = ["clip_name"] if len(names) == 1 else [f"clip_name{i + 1}" for i in range(len(names))]
    paths = [model_path("text_encoders", n, node, i) for n, i in zip(names, inputs)]
    clip = load_text_encoders(paths, clip_type, embedding_dirs=folder_paths.get_folder_paths("embeddings"),
                              device=torch.device("cpu") if device == "cpu" else None)
    return (clip,)


@node(category="advanced/loaders", display_name="Load CLIP", outputs=[Out("CLIP")],
      description="Loads a text encoder file. stable_diffusion: CLIP-L (SD1.x), OpenCLIP-H (SD2.x) or "
                  "CLIP-bigG (SDXL refiner), recognised from the weights.",
      inputs=[Combo("clip_name", _text_encoder_names), Combo("type", CLIP_TYPES), _device_input()])
class CLIPLoader:
    def execute(self, clip_name, type="stable_diffusion", device="default"):
        return load_clip_files([clip_name], type, device, "CLIPLoader")


@node(category="advanced/loaders", display_name="DualCLIPLoader", outputs=[Out("CLIP")],
      description="Loads two text encoder files as one CLIP. sdxl: CLIP-L and CLIP-bigG, in either order.",
      inputs=[Combo("clip_name1", _text_encoder_names), Combo("clip_name2", _text_encoder_names),
              Combo("type", DUAL_CLIP_TYPES), _device_input()])
class DualCLIPLoader:
    def execute(self, clip_name1, clip_name2, type, device="default"):
        return load_clip_files([clip_name1, clip_name2], type, device, "DualCLIPLoader")


def _diffusion_model_names() -> list:
    return folder_paths.get_filename_list("diffusion_models")


def storage_dtype(weight_dtype: str, node: str = "UNETLoader"):
    """None for "default", else the float8 dtype weights are stored in (computed in the usual dtype)."""
    if weight_dtype == "default":
        return None
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{node}: weight_dtype must be one of {WEIGHT_DTYPES}, got {weight_dtype!r}")
    # fp8_e4m3fn_fast: ComfyUI multiplies in fp8 on GPUs that can; here it stores fp8 like fp8_e4m3fn.
    name = "float8_e5m2" if weight_dtype == "fp8_e5m2" else "float8_e4m3fn"
    dtype = getattr(torch, name, None)
    if dtype is None:
        raise ValueError(f"{node}: weight_dtype '{weight_dtype}' needs torch.{name}, which this torch "
                         f"({torch.__version__}) lacks; use 'default'")
    return dtype


@node(category="advanced/loaders", display_name="Load Diffusion Model", outputs=[Out("MODEL")],
      inputs=[Combo("unet_name", _diffusion_model_names), Combo("weight_dtype", WEIGHT_DTYPES)])
class UNETLoader:
    def execute(self, unet_name, weight_dtype):
        dtype = storage_dtype(weight_dtype)
        path = model_path("diffusion_models", unet_name, "UNETLoader", "unet_name")
        return (load_unet(path, weight_dtype=dtype),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(CheckpointLoaderSimple, CheckpointLoader, VAELoader,
                                                           CLIPLoader, DualCLIPLoader, UNETLoader)
