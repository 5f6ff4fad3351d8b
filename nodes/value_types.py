"""What a value of each built-in type looks like (DESIGN conventions, COMPAT §1.6).

The engine checks linked values against these before calling a node, and names the node and the
input when one is None or of the wrong kind; graph/ itself knows no torch. Every NodeRegistry
starts with these; plugin types are not listed, so they are not checked.
"""
from __future__ import annotations

import sys

from graph.contract import ValueType


def _tensor(value, *ndims: int) -> bool:
    # torch is imported by whatever made a tensor; without it no value can be one.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor) and (not ndims or value.ndim in ndims)


def _has_method(name: str):
    return lambda value: callable(getattr(value, name, None))


def _conditioning(value) -> bool:
    return isinstance(value, list) and all(isinstance(c, (list, tuple)) and len(c) == 2 for c in value)


def _latent(value) -> bool:
    return isinstance(value, dict) and _tensor(value.get("samples"))


_FROM_CHECKPOINT = "If it comes from a checkpoint loader, that checkpoint holds no {}; load one with {}."

BUILTIN_VALUE_TYPES = {
    "MODEL": ValueType(_has_method("apply_model"), "a MODEL (a diffusion model)",
                       "Connect a checkpoint or UNet loader."),
    "CLIP": ValueType(_has_method("tokenize"), "a CLIP (a text encoder)",
                      _FROM_CHECKPOINT.format("text encoder", "a CLIP loader node")),
    "VAE": ValueType(_has_method("decode"), "a VAE",
                     _FROM_CHECKPOINT.format("VAE", "VAELoader")),
    "CONDITIONING": ValueType(_conditioning, "CONDITIONING (a list of [tensor, dict] pairs)"),
    "LATENT": ValueType(_latent, "a LATENT (a dict with a 'samples' tensor)"),
    "IMAGE": ValueType(lambda v: _tensor(v, 4), "an IMAGE tensor [B,H,W,C]"),
    "MASK": ValueType(lambda v: _tensor(v, 2, 3), "a MASK tensor [B,H,W]"),
    "STRING": ValueType(lambda v: isinstance(v, str), "a string"),
    # custom sampling (nodes/custom_sampling.py)
    "SIGMAS": ValueType(lambda v: _tensor(v, 1), "SIGMAS (a 1-D tensor of noise levels)"),
    "SAMPLER": ValueType(_has_method("sample"), "a SAMPLER", "Connect KSamplerSelect or another sampler node."),
    "NOISE": ValueType(_has_method("generate_noise"), "a NOISE", "Connect RandomNoise or DisableNoise."),
    "GUIDER": ValueType(_has_method("sample"), "a GUIDER", "Connect CFGGuider or BasicGuider."),
    "CONTROL_NET": ValueType(_has_method("with_hint"), "a CONTROL_NET", "Connect a ControlNet loader."),
}
