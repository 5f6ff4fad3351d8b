"""Core model-file loaders: CheckpointLoaderSimple, CheckpointLoader, VAELoader.

Files are looked up in the model folders (nodes/folder_paths.py, COMPAT §8) and read by
diffusion/loading/checkpoint.py, which detects the architecture from the keys and shapes. Loaders are ordinary
cached nodes (COMPAT §3.4): an unchanged loader is not re-run, so a file is read once per change.
"""
from __future__ import annotations

import os

from diffusion.loading import taesd
from diffusion.loading.checkpoint import load_checkpoint, load_vae
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


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(CheckpointLoaderSimple, CheckpointLoader, VAELoader)
