"""Load model files: split a single-file checkpoint into its parts, detect the
architecture, and build the runtime objects (MODEL, CLIP, VAE).

Files are read by diffusion/loading/files.py (memory-mapped safetensors, weights-only pickles).

Architecture (`detect_arch` / `UNetConfig.arch`): from the UNet's structure, see diffusion/loading/config.py.
Prediction type: SD1 and SDXL are eps. SD2 files carry no reliable flag, so `prediction="auto"`
decides in this order: safetensors metadata `modelspec.prediction_type` / `prediction_type`; a
`v_pred` marker key; the known signature of trained SD2 v-models (their last output block's first
norm1 bias has a standard deviation above 0.09, eps models stay below; 9-channel inpainting UNets
are eps, so the signature is not consulted for them); otherwise eps. Pass
`prediction="eps"` or `"v_prediction"` to overrule it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from diffusion import memory
from diffusion.loading.config import ConfigError, UNetConfig, detect_unet_config
from diffusion.loading.files import CheckpointError, assign_weights, read_state_dict
from diffusion.loading.text_encoders import clip_from_state_dict, clip_from_text_encoder_files
from diffusion.loading.vision import clip_vision_from_state_dict
from diffusion.model_patcher import ModelPatcher
from diffusion.models import weight_cast
from diffusion.models.unet import UNetModel
from diffusion.models.vae import VAE

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
UNCLIP_VISION_PREFIX = "embedder.model.visual."  # SD2.1-unCLIP's image embedder (open_clip layout)


@dataclass
class LoadedCheckpoint:
    model: Any
    clip: Any
    vae: Any
    arch: str
    clip_vision: Any = None  # CLIP_VISION of an unCLIP checkpoint, when asked for


    def __iter__(self):  # so `model, clip, vae, arch = load_checkpoint(...)` works
        return iter((self.model, self.clip, self.vae, self.arch))


# ---------------------------------------------------------------------------------------------
# Splitting and detection

def split_state_dict(sd: dict) -> dict[str, dict]:
    """Parts of a single-file checkpoint: "unet" and "vae" with their prefix stripped, "clip" with
    the original prefixes kept (the text-encoder loader needs them to tell encoders apart)."""
    parts = {"unet": {}, "vae": {}, "clip": {}}
    for k, v in sd.items():
        if k.startswith(UNET_PREFIX):
            parts["unet"][k[len(UNET_PREFIX):]] = v
        elif k.startswith(VAE_PREFIX):
            parts["vae"][k[len(VAE_PREFIX):]] = v
        elif k.startswith(CLIP_PREFIXES):
            parts["clip"][k] = v
    return parts


def _unet_part(sd: dict, path) -> dict:
    """The UNet tensors of a UNet-only file, in whichever of the usual layouts it comes."""
    if any(k.startswith(UNET_PREFIX) for k in sd):
        return split_state_dict(sd)["unet"]
    if "input_blocks.0.0.weight" in sd:
        return sd
    if "conv_in.weight" in sd and any(k.startswith("down_blocks.") for k in sd):
        raise CheckpointError(path, "is a UNet in diffusers' layout; only the original single-file "
                                    "layout (input_blocks/middle_block/output_blocks) is supported")
    raise CheckpointError(path, "holds no UNet weights (no 'model.diffusion_model.*' or 'input_blocks.*' keys)")


def detect_prediction(unet_sd: dict, config: UNetConfig, metadata: dict, sd: dict | None = None,
                      prediction: str = "auto") -> str:
    """'eps' or 'v_prediction'; see the module docstring for the rule."""
    if prediction in ("eps", "v_prediction"):
        return prediction
    if prediction not in ("auto", "v", None):
        raise ValueError(f"prediction must be 'auto', 'eps' or 'v_prediction', got {prediction!r}")
    if prediction == "v":
        return "v_prediction"
    for key in ("modelspec.prediction_type", "prediction_type"):
        value = str(metadata.get(key, "")).lower()
        if value.startswith("v"):
            return "v_prediction"
        if value.startswith("eps") or value == "epsilon":
            return "eps"
    if sd is not None and "v_pred" in sd:
        return "v_prediction"
    if config.arch == "sd2" and config.adm_in_channels is not None:
        return "v_prediction"  # SD2.1-unCLIP models are v-prediction (ComfyUI's SD21UNCLIP default)
    if config.arch == "sd2" and config.in_channels == 4:  # SD2 inpainting models (9 channels) are eps
        last = len(config.transformer_depth_output) - 1
        bias = unet_sd.get(f"output_blocks.{last}.1.transformer_blocks.0.norm1.bias")
        if bias is not None and bias.numel() > 1 and float(bias.float().std()) > 0.09:
            return "v_prediction"
    return "eps"


def detect_arch(sd: dict, metadata: dict | None = None, path="state dict") -> str:
    """Architecture of a checkpoint or UNet file: "sd1" | "sd2" | "sdxl" | "sdxl_refiner"."""
    return _detect_config(_unet_part(sd, path), metadata or {}, path).arch


def _detect_config(unet_sd, metadata, path) -> UNetConfig:
    try:
        return detect_unet_config(unet_sd, metadata, where=str(path))
    except ConfigError as e:
        raise CheckpointError(path, f"unrecognised UNet: {e}") from None


# ---------------------------------------------------------------------------------------------
# Building runtime objects

def build_unet(unet_sd: dict, config: UNetConfig, dtype: torch.dtype, device, path="state dict"):
    """A UNetModel whose parameters are the given tensors (cast to `dtype`/`device` only if needed)."""
    with torch.device("meta"):
        model = UNetModel(config)
    sd = {k: _to(v, dtype, device) for k, v in unet_sd.items()}
    assign_weights(model, sd, f"UNet ({config.arch})", path, hint="; truncated export?")
    return model.eval().requires_grad_(False)


def _to(t: torch.Tensor, dtype, device) -> torch.Tensor:
    if t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device) if t.device != torch.device(device) else t


def _make_model(unet_sd, metadata, path, full_sd=None, prediction="auto", settings=None, weight_dtype=None):
    config = _detect_config(unet_sd, metadata, path)
    pred = detect_prediction(unet_sd, config, metadata, full_sd, prediction)
    device = memory.unet_device(settings)
    dtype = memory.unet_dtype(device, settings, stored=_stored_dtype(unet_sd))
    unet = build_unet(unet_sd, config, weight_dtype or dtype, memory.offload_device(settings), path)
    if weight_dtype is not None and weight_dtype != dtype:
        weight_cast.compute_in(unet, dtype)  # stored in weight_dtype (fp8), computed in dtype
    return ModelPatcher(unet, arch=config.arch, prediction=pred, load_device=device,
                        offload_device=memory.offload_device(settings), settings=settings)


def _stored_dtype(sd: dict):
    for v in sd.values():
        if v.is_floating_point():
            return v.dtype
    return torch.float32


def _make_vae(vae_sd, path):
    try:
        return VAE.from_state_dict(vae_sd)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(path, f"VAE weights unusable: {e}") from e


def _make_clip(clip_sd, arch, path, embedding_dirs):
    try:
        return clip_from_state_dict(clip_sd, arch, embedding_dirs=embedding_dirs)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(path, f"text encoder weights unusable: {e}") from e


def load_checkpoint(path, embedding_dirs=(), prediction: str = "auto", settings=None,
                    output_vae: bool = True, output_clip: bool = True,
                    output_clip_vision: bool = False) -> LoadedCheckpoint:
    """MODEL, CLIP and VAE of a single-file SD1/SD2/SDXL checkpoint; with `output_clip_vision` also
    the CLIP vision tower an unCLIP checkpoint embeds (`embedder.model.visual.*`)."""
    sd, metadata = read_state_dict(path)
    parts = split_state_dict(sd)
    if not parts["unet"]:
        raise CheckpointError(path, "holds no UNet ('model.diffusion_model.*'); is it a VAE, LoRA or "
                                    "text-encoder file? Use the matching loader")
    model = _make_model(parts["unet"], metadata, path, sd, prediction, settings)
    clip = vae = None
    if output_clip:
        if not parts["clip"]:
            raise CheckpointError(path, "holds no text encoder weights ('cond_stage_model.*' or "
                                        "'conditioner.embedders.*')")
        clip = _make_clip(parts["clip"], model.arch, path, embedding_dirs)
    if output_vae:
        if not parts["vae"]:
            raise CheckpointError(path, "holds no VAE weights ('first_stage_model.*')")
        vae = _make_vae(parts["vae"], path)
    clip_vision = None
    if output_clip_vision:
        tower = {k: v for k, v in sd.items() if k.startswith(UNCLIP_VISION_PREFIX)}
        if not tower:
            raise CheckpointError(path, f"holds no CLIP vision tower ('{UNCLIP_VISION_PREFIX}*'); "
                                        "is it an unCLIP checkpoint?")
        clip_vision = clip_vision_from_state_dict(tower, where=path)
    return LoadedCheckpoint(model, clip, vae, model.arch, clip_vision)


def load_unet(path, prediction: str = "auto", settings=None, weight_dtype: torch.dtype | None = None):
    """MODEL from a UNet-only file (original layout, with or without 'model.diffusion_model.').

    `weight_dtype` (e.g. torch.float8_e4m3fn): store the weights in it and compute in the usual dtype.
    """
    sd, metadata = read_state_dict(path)
    return _make_model(_unet_part(sd, path), metadata, path, sd, prediction, settings, weight_dtype)


def load_vae(path):
    """VAE from a VAE-only file (keys 'encoder.*'/'decoder.*', or a checkpoint's 'first_stage_model.*')."""
    sd, _ = read_state_dict(path)
    if any(k.startswith(VAE_PREFIX) for k in sd):
        sd = split_state_dict(sd)["vae"]
    if not any(k.startswith(("decoder.", "encoder.")) for k in sd):
        raise CheckpointError(path, "holds no VAE weights (no 'decoder.*'/'encoder.*' keys)")
    return _make_vae(sd, path)


def load_text_encoders(paths, kind: str, embedding_dirs=(), *, dtype=None, device=None, compute_dtype=None):
    """CLIPLoader / DualCLIPLoader: CLIP from one or more text-encoder files.

    `kind` is a CLIPLoader type name or an arch ("stable_diffusion", "sd1", "sd2", "sdxl",
    "sdxl_refiner"; see `diffusion.loading.text_encoders.clip_from_text_encoder_files`). Unreadable
    files raise `CheckpointError` naming the file.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("load_text_encoders: no files given")
    state_dicts = []
    for p in paths:
        sd, _ = read_state_dict(p)
        if not sd:
            raise CheckpointError(p, "holds no tensors")
        state_dicts.append(sd)
    return clip_from_text_encoder_files(state_dicts, kind, embedding_dirs, dtype=dtype, device=device,
                                        compute_dtype=compute_dtype, names=[os.fspath(p) for p in paths])
