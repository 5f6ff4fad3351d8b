"""Hypernetworks (the A1111 format): per context width, two small MLPs that add a residual to the
keys' and the values' inputs of every attention: k += strength * mlp_k(k), v += strength * mlp_v(v).

A file is a torch pickle: {width: [state_dict_k, state_dict_v], "activation_func", "is_layer_norm",
"use_dropout", "activate_output", "last_layer_dropout", ...}; each state dict holds `linear.N.weight`
/`.bias` (and LayerNorm weights after each linear when is_layer_norm). Inference only: dropout is
left out (it is the identity in eval mode).
"""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign,
               "mish": nn.Mish}


def _mlp(sd: dict, activation: str, layer_norm: bool, activate_output: bool, where: str) -> nn.Sequential:
    names = [k[:-len(".weight")] for k in sd if k.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        # as ComfyUI counts it: with layer norms the last linear is not the last name, so it is
        # activated too
        last = i == len(names) - 1
        w, b = sd[names[i] + ".weight"], sd.get(names[i] + ".bias")
        if w.ndim != 2 or b is None:
            raise ValueError(f"{where}: {names[i]} is not a linear layer (weight {tuple(w.shape)})")
        linear = nn.Linear(w.shape[1], w.shape[0])
        linear.load_state_dict({"weight": w, "bias": b})
        layers.append(linear)
        if activation != "linear" and (not last or activate_output):
            layers.append(ACTIVATIONS[activation]())
        if layer_norm:
            i += 1
            if i >= len(names):
                raise ValueError(f"{where}: is_layer_norm is set but {names[i - 1]} has no layer norm after it")
            lw, lb = sd[names[i] + ".weight"], sd[names[i] + ".bias"]
            norm = nn.LayerNorm(lw.shape[0])
            norm.load_state_dict({"weight": lw, "bias": lb})
            layers.append(norm)
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


class HypernetworkPatch:
    """An attn1/attn2 patch fn(n, context, value, extra) -> (n, context', value')."""

    def __init__(self, networks: dict[int, tuple[nn.Module, nn.Module]], strength: float):
        self.networks = networks
        self.strength = float(strength)

    def __call__(self, n, context, value, extra):
        nets = self.networks.get(int(context.shape[-1]))
        if nets is None:
            return n, context, value
        mlp_k, mlp_v = nets
        with torch.inference_mode():
            mlp_k.to(context.device, context.dtype)
            mlp_v.to(value.device, value.dtype)
            return n, context + mlp_k(context) * self.strength, value + mlp_v(value) * self.strength


def load_hypernetwork(sd: dict, strength: float, where: str = "hypernetwork") -> HypernetworkPatch:
    activation = sd.get("activation_func", "linear")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: unsupported activation_func {activation!r} "
                         f"(supported: {', '.join(ACTIVATIONS)})")
    layer_norm = bool(sd.get("is_layer_norm", False))
    activate_output = bool(sd.get("activate_output", False))
    networks = {}
    for key, pair in sd.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError(f"{where}: entry {key} must hold two state dicts (keys, values)")
        networks[width] = tuple(_mlp(part, activation, layer_norm, activate_output, f"{where} [{width}]")
                                for part in pair)
    if not networks:
        raise ValueError(f"{where}: no per-width networks found (is this a hypernetwork file?)")
    return HypernetworkPatch(networks, strength)


def read_hypernetwork_file(path) -> dict:
    """The file's dict (nested state dicts and options) through torch.load(weights_only=True)."""
    from diffusion.loading.files import CheckpointError

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if type(e).__name__ == "UnpicklingError" or "weights_only" in str(e):
            raise CheckpointError(path, "contains pickled Python objects other than tensors and plain "
                                        "values; refusing to load it") from None
        raise CheckpointError(path, f"cannot be read as a hypernetwork ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a hypernetwork dict")
    return obj
