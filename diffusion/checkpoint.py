"""Load model files: read the tensors, split a single-file checkpoint into its parts, detect the
architecture, and build the runtime objects (MODEL, CLIP, VAE).

Reading
- .safetensors: the file is memory-mapped (private, copy-on-write) and every tensor is a view into
  that mapping, so loading allocates nothing until a tensor is converted; modules built on the meta
  device take these views as their parameters (`load_state_dict(assign=True)`): no second copy.
  Only a tensor whose offset is not aligned to its element size is copied.
- .ckpt/.pt/.pth/.bin: only `torch.load(weights_only=True, mmap=True)`: plain tensors and containers,
  never arbitrary pickled objects.
Storage dtypes fp32, fp16 and bf16 (and the usual integer/fp8 ones) are accepted; the dtype used
to compute is chosen by `diffusion/memory.py`.

Architecture (`detect_arch` / `UNetConfig.arch`): from the UNet's structure, see diffusion/config.py.
Prediction type: SD1 and SDXL are eps. SD2 files carry no reliable flag, so `prediction="auto"`
decides in this order: safetensors metadata `modelspec.prediction_type` / `prediction_type`; a
`v_pred` marker key; the known signature of trained SD2 v-models (their last output block's first
norm1 bias has a standard deviation above 0.09, eps models stay below); otherwise eps. Pass
`prediction="eps"` or `"v_prediction"` to overrule it.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, UNetConfig, detect_unet_config

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIXES = ("cond_stage_model.", "conditioner.embedders.")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_DTYPES.update({name: getattr(torch, attr) for name, attr in
                   (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")) if hasattr(torch, attr)})


class CheckpointError(Exception):
    """A model file cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass
class LoadedCheckpoint:
    model: Any
    clip: Any
    vae: Any
    arch: str

    def __iter__(self):  # so `model, clip, vae, arch = load_checkpoint(...)` works
        return iter((self.model, self.clip, self.vae, self.arch))


# ---------------------------------------------------------------------------------------------
# Reading files

def read_safetensors(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors of a .safetensors file as views into a private memory map, and its metadata."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CheckpointError(path, f"file is {size} bytes, too short to be safetensors (truncated?)")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100_000_000:
            raise CheckpointError(path, f"header claims {header_len} bytes but the file has {size}; "
                                        "the file is truncated or not safetensors")
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"header is not valid safetensors JSON ({e}); file corrupt?") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_len = size - data_start

    entries = []
    for name, info in header.items():
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except KeyError as e:
            raise CheckpointError(path, f"tensor {name!r}: unsupported or missing field {e}") from None
        except (TypeError, ValueError):
            raise CheckpointError(path, f"tensor {name!r}: malformed header entry {info!r}") from None
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(path, f"tensor {name!r}: offsets {begin}..{end} do not fit shape "
                                        f"{shape} of {info['dtype']}")
        if end > data_len:
            raise CheckpointError(path, f"tensor {name!r} ends at byte {data_start + end} but the file "
                                        f"has {size} bytes: the file is truncated")
        entries.append((name, dtype, shape, begin, end))

    tensors: dict[str, torch.Tensor] = {}
    if not entries:
        return tensors, metadata
    # shared=False maps the file MAP_PRIVATE: pages come from the page cache on first touch and are
    # never written back; an accidental in-place edit copies just that page.
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    raw_bytes = torch.empty(0, dtype=torch.uint8).set_(storage)
    for name, dtype, shape, begin, end in entries:
        item = torch.empty((), dtype=dtype).element_size()
        offset = data_start + begin
        if offset % item == 0:
            t = torch.empty(0, dtype=dtype).set_(storage, offset // item, shape)
        else:  # unaligned writer: this tensor alone is copied
            t = raw_bytes[offset:offset + (end - begin)].clone().view(dtype).reshape(shape)
        tensors[name] = t
    return tensors, metadata


def read_pickle(path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e).lower():
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:
        if type(e).__name__ == "UnpicklingError" or "weights_only" in str(e):
            raise CheckpointError(path, "contains pickled Python objects other than tensors; refusing to "
                                        "load it (convert it to .safetensors)") from None
        raise CheckpointError(path, f"cannot be read as a PyTorch checkpoint ({type(e).__name__}: "
                                    f"{e}); truncated or corrupt?") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, "holds no tensors")
    return tensors


def read_state_dict(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a model file; raises CheckpointError for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or suffix == ".sft":
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return read_pickle(path), {}
    # Unknown extension: sniff. Zip (torch.save) starts with PK; anything else, try safetensors.
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"PK":
        return read_pickle(path), {}
    return read_safetensors(path)


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
    if config.arch == "sd2":
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
    from .unet import UNetModel

    with torch.device("meta"):
        model = UNetModel(config)
    sd = {k: _to(v, dtype, device) for k, v in unet_sd.items()}
    try:
        result = model.load_state_dict(sd, strict=False, assign=True)
    except RuntimeError as e:
        raise CheckpointError(path, f"UNet weights do not fit the detected {config.arch} layout: "
                                    f"{str(e).splitlines()[-1].strip()}") from None
    if result.missing_keys:
        raise CheckpointError(path, f"UNet is missing {len(result.missing_keys)} tensors, e.g. "
                                    f"{result.missing_keys[:3]}; truncated export?")
    return model.eval().requires_grad_(False)


def _to(t: torch.Tensor, dtype, device) -> torch.Tensor:
    if t.is_floating_point() and t.dtype != dtype:
        t = t.to(dtype)
    return t.to(device) if t.device != torch.device(device) else t


def _make_model(unet_sd, metadata, path, full_sd=None, prediction="auto", settings=None):
    from . import memory
    from .model_patcher import ModelPatcher

    config = _detect_config(unet_sd, metadata, path)
    pred = detect_prediction(unet_sd, config, metadata, full_sd, prediction)
    device = memory.unet_device(settings)
    dtype = memory.unet_dtype(device, settings, stored=_stored_dtype(unet_sd))
    unet = build_unet(unet_sd, config, dtype, memory.offload_device(settings), path)
    return ModelPatcher(unet, arch=config.arch, prediction=pred, load_device=device,
                        offload_device=memory.offload_device(settings), settings=settings)


def _stored_dtype(sd: dict):
    for v in sd.values():
        if v.is_floating_point():
            return v.dtype
    return torch.float32


def _make_vae(vae_sd, path):
    from .vae import VAE  # written by the VAE colleague; imported late so this module stands alone

    try:
        return VAE.from_state_dict(vae_sd)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(path, f"VAE weights unusable: {e}") from e


def _make_clip(clip_sd, arch, path, embedding_dirs):
    from .text_encoders import clip_from_state_dict  # CLIP colleague's module

    try:
        return clip_from_state_dict(clip_sd, arch, embedding_dirs=embedding_dirs)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(path, f"text encoder weights unusable: {e}") from e


def load_checkpoint(path, embedding_dirs=(), prediction: str = "auto", settings=None,
                    output_vae: bool = True, output_clip: bool = True) -> LoadedCheckpoint:
    """MODEL, CLIP and VAE of a single-file SD1/SD2/SDXL checkpoint."""
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
    return LoadedCheckpoint(model, clip, vae, model.arch)


def load_unet(path, prediction: str = "auto", settings=None):
    """MODEL from a UNet-only file (original layout, with or without 'model.diffusion_model.')."""
    sd, metadata = read_state_dict(path)
    return _make_model(_unet_part(sd, path), metadata, path, sd, prediction, settings)


def load_vae(path):
    """VAE from a VAE-only file (keys 'encoder.*'/'decoder.*', or a checkpoint's 'first_stage_model.*')."""
    sd, _ = read_state_dict(path)
    if any(k.startswith(VAE_PREFIX) for k in sd):
        sd = split_state_dict(sd)["vae"]
    if not any(k.startswith(("decoder.", "encoder.")) for k in sd):
        raise CheckpointError(path, "holds no VAE weights (no 'decoder.*'/'encoder.*' keys)")
    return _make_vae(sd, path)


def load_text_encoders(paths, kind: str, embedding_dirs=()):
    """CLIP from one or more text-encoder files; `kind` is the arch ("sd1", "sd2", "sdxl", ...)
    or a CLIPLoader type name, passed on to diffusion.text_encoders."""
    from . import text_encoders

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("load_text_encoders: no files given")
    state_dicts = []
    for p in paths:
        sd, _ = read_state_dict(p)
        if not sd:
            raise CheckpointError(p, "holds no tensors")
        state_dicts.append(sd)
    loader = getattr(text_encoders, "clip_from_text_encoder_files", None)
    if loader is not None:  # the CLIP module knows the standalone layouts
        return loader(state_dicts, kind, embedding_dirs=embedding_dirs)
    merged = {}
    for sd in state_dicts:
        merged.update(sd)
    return _make_clip(merged, kind, paths[0], embedding_dirs)
