"""Weights stored in one dtype and computed in another (UNETLoader's fp8 weight_dtype options).

float8 halves the memory of fp16 weights, but neither the CPU nor most GPUs convolve or multiply in
float8. So, like ComfyUI's "manual cast" layers, every layer keeps its float8 parameters and, for the
length of its own forward call, sees them upcast to the compute dtype: a forward pre-hook puts the
upcast copies in the module's parameter slots and a forward hook puts the stored ones back. Only one
layer's upcast weights exist at a time; state dicts, LoRA-style patches (ModelPatcher swaps the
stored parameter) and device moves all see the stored float8 tensors. The model's `compute_dtype`
attribute tells `UNetModel.dtype` what to cast inputs to.
"""
from __future__ import annotations

import torch
from torch import nn

FLOAT8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _upcast(module: nn.Module, args):
    dtype = module._lg_compute_dtype
    stored = {}
    for name, p in module._parameters.items():
        if p is not None and p.dtype != dtype:
            stored[name] = p
            # a plain tensor in the slot: the layer's forward reads it as `self.<name>`
            module._parameters[name] = p.to(dtype)
    module._lg_stored = stored


def _restore(module: nn.Module, args, output):
    module._parameters.update(module._lg_stored)
    module._lg_stored = {}


def compute_in(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Run `model` (parameters in a storage dtype such as float8) in `dtype`, layer by layer."""
    model.compute_dtype = dtype
    for module in model.modules():
        if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters(recurse=False)):
            module._lg_compute_dtype = dtype
            module._lg_stored = {}
            module.register_forward_pre_hook(_upcast)
            module.register_forward_hook(_restore)
    return model
