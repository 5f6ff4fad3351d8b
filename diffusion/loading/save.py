"""Writing models back to files: a checkpoint in the original single-file layout (CheckpointSave) and
plain tensor files (LoRAs).

A checkpoint holds what the loader reads (diffusion/loading/checkpoint.py): the UNet under
`model.diffusion_model.`, the text encoders under their architecture's prefixes in the layout their
file had (`cond_stage_model.transformer.` hf, `conditioner.embedders.1.model.` open_clip, ...), the VAE
under `first_stage_model.`. Patches (LoRA, merges) are applied into the saved tensors without patching
the live modules. Metadata follows ComfyUI's save_checkpoint: `modelspec.*` for SDXL, the prediction
(`modelspec.predict_key`, and a `v_pred` marker tensor for v models, which loaders read), plus ours:
the UNet's head layout, which the weights of a scaled-down model cannot tell.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from diffusion.loading.checkpoint import UNET_PREFIX, VAE_PREFIX
from diffusion.loading.keymaps import network_to_file

MODELSPEC_ARCH = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


class SaveError(ValueError):
    """A model that cannot be written as asked; the message says which part and why."""


def unet_state_dict(model) -> dict[str, torch.Tensor]:
    """MODEL's UNet weights, patches applied, under `model.diffusion_model.`."""
    return {UNET_PREFIX + k: v for k, v in model.patched_state_dict().items()}


def clip_state_dict(clip) -> dict[str, torch.Tensor]:
    """CLIP's text encoders, patches applied, under their checkpoint prefixes in their file layout."""
    net = clip.patcher.patched_state_dict()
    out = {}
    for spec in clip.specs:
        root = f"clip_{spec.key}.transformer."
        sd = {k[len(root):]: v for k, v in net.items() if k.startswith(root)}
        network_to_file(sd, clip.encoders[spec.key].key_map)
        out.update({spec.prefix + k: v for k, v in sd.items()})
    return out


def vae_state_dict(vae) -> dict[str, torch.Tensor]:
    model = getattr(vae, "model", None)
    if model is None or not hasattr(vae, "config") or not hasattr(model, "encoder"):
        raise SaveError(f"the VAE ({type(vae).__name__}) is not a KL autoencoder and cannot go into a checkpoint")
    return {VAE_PREFIX + k: v for k, v in model.state_dict().items()}


def checkpoint_metadata(model, title: str = "") -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(safetensors metadata, extra marker tensors) describing MODEL, as ComfyUI writes them."""
    metadata, extra = {}, {}
    if model.arch in MODELSPEC_ARCH:
        metadata.update({"modelspec.architecture": MODELSPEC_ARCH[model.arch], "modelspec.sai_model_spec": "1.0.0",
                         "modelspec.implementation": "sgm", "modelspec.title": title})
    prediction = getattr(model, "prediction", "eps")
    if prediction == "v_prediction":
        metadata["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
    elif prediction == "eps":
        metadata["modelspec.predict_key"] = "epsilon"
    config = getattr(model.model, "config", None)
    if config is not None and hasattr(config, "head_metadata"):
        metadata.update(config.head_metadata())
    return metadata, extra


def checkpoint_state_dict(model, clip=None, vae=None) -> dict[str, torch.Tensor]:
    sd = unet_state_dict(model)
    if clip is not None:
        sd.update(clip_state_dict(clip))
    if vae is not None:
        sd.update(vae_state_dict(vae))
    return sd


def save_checkpoint(path, model, clip=None, vae=None, metadata: dict | None = None, title: str = "") -> Path:
    """Write MODEL (+ CLIP, VAE) as one original-layout safetensors checkpoint; `metadata` (e.g. the
    prompt and workflow) is added to the model's own."""
    sd = checkpoint_state_dict(model, clip, vae)
    meta, extra = checkpoint_metadata(model, title)
    sd.update(extra)
    meta.update(metadata or {})
    return save_tensors(sd, path, meta)


def save_tensors(sd: dict[str, torch.Tensor], path, metadata: dict | None = None) -> Path:
    """safetensors file of `sd` (CPU, contiguous, no shared storage), written atomically so a model
    folder never lists a half-written file."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for k, v in sd.items():
        v = v.detach().to("cpu").contiguous()
        if v.numel():
            if v.untyped_storage().data_ptr() in seen:
                v = v.clone()  # safetensors refuses tensors that share memory (views of one mapped file)
            seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)
    return path
