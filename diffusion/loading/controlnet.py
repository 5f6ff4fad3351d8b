"""Loading ControlNet and T2I-Adapter files into CONTROL_NET values (diffusion/models/controlnet.py).

One entry point, `load_controlnet(path, model=None)`, reads what ComfyUI's ControlNetLoader reads:
- ControlNets in the original "cldm" layout, bare (`input_blocks.*`, `zero_convs.*`,
  `input_hint_block.*`, `middle_block_out.*`) or under `control_model.` (lllyasviel's .pth files);
- ControlNets in diffusers' layout (`controlnet_cond_embedding.*`, `down_blocks.*`,
  `controlnet_down_blocks.*`), renamed here to the cldm layout;
- "diff" ControlNets (a `difference` key): the file holds ControlNet minus the UNet, so the given
  MODEL's UNet weights (patched, as they are sampled) are added where the names match;
- T2I-Adapters, full / light / XL, in TencentARC's layout or diffusers' (`adapter.*`).
The sizes come from the keys and shapes: a ControlNet is the UNet's encoder, so its config is the
UNet's detection (`detect_unet_config(encoder_only=True)`) and a scaled-down file loads by the same code.
Control-LoRA and Stable Cascade ControlNets are recognised and refused with a clear error.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from diffusion import memory
from diffusion.loading.config import ConfigError, detect_unet_config
from diffusion.loading.diffusers_layout import UNET_RESNET, UNET_TOP
from diffusion.loading.files import CheckpointError, assign_weights, read_state_dict
from diffusion.model_patcher import ModelPatcher
from diffusion.models.controlnet import ControlNet, ControlNetModel
from diffusion.models.t2i_adapter import T2IAdapter, T2IAdapterConfig, T2IAdapterModel

log = logging.getLogger(__name__)

CLDM_PREFIX = "control_model."
DIFF_MARKER = "difference"

# diffusers ControlNetModel names -> cldm: the UNet's (its encoder half) plus the control-only layers
_RESNET = UNET_RESNET
_TOP = {**{k: v for k, v in UNET_TOP.items() if not k.startswith(("conv_norm_out", "conv_out"))},
        "controlnet_mid_block": "middle_block_out.0", "controlnet_cond_embedding.conv_in": "input_hint_block.0"}
_DIFFUSERS_BLOCK = re.compile(r"^(down_blocks|mid_block)\.(?:(\d+)\.)?(resnets|attentions|downsamplers)\.(\d+)\.(.*)$")


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    if head not in _RESNET:
        raise KeyError(head)
    return f"{_RESNET[head]}.{tail}"


def diffusers_controlnet_key(key: str, layers_per_block: int, hint_blocks: int) -> str | None:
    """The cldm name of a diffusers ControlNetModel key, or None for a key the network lacks."""
    n = layers_per_block
    for src, dst in _TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    if m := re.match(r"^controlnet_down_blocks\.(\d+)\.(.*)$", key):
        return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
    if m := re.match(r"^controlnet_cond_embedding\.blocks\.(\d+)\.(.*)$", key):
        return f"input_hint_block.{2 * (int(m.group(1)) + 1)}.{m.group(2)}"
    if key.startswith("controlnet_cond_embedding.conv_out."):
        return f"input_hint_block.{2 * (hint_blocks + 1)}.{key.rsplit('.', 1)[1]}"
    m = _DIFFUSERS_BLOCK.match(key)
    if m is None:
        return None
    where, level, kind, j, rest = m.group(1), int(m.group(2) or 0), m.group(3), int(m.group(4)), m.group(5)
    try:
        if where == "mid_block":
            return f"middle_block.{2 * j}.{_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
        block = 1 + level * (n + 1) + j
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{block}.1.{rest}"
        return f"input_blocks.{(level + 1) * (n + 1)}.0.op.{rest.split('.', 1)[1]}"  # downsamplers.0.conv.*
    except KeyError:
        return None


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in keys if (m := rx.match(k))})


def diffusers_controlnet_to_cldm(sd: dict) -> tuple[dict, list[str]]:
    """(cldm-layout state dict, diffusers keys that have no place in it)."""
    n = _count(sd, r"^down_blocks\.0\.resnets\.(\d+)\.")
    hint_blocks = _count(sd, r"^controlnet_cond_embedding\.blocks\.(\d+)\.")
    out, leftover = {}, []
    for key, value in sd.items():
        new = diffusers_controlnet_key(key, n, hint_blocks)
        if new is None:
            leftover.append(key)
        else:
            out[new] = value
    return out, leftover


# ---------------------------------------------------------------------------------------------
# T2I-Adapters

def diffusers_adapter_to_original(sd: dict) -> dict:
    """diffusers' T2IAdapter names (`adapter.body.i.resnets.j.*`) -> TencentARC's (`body.k.*`)."""
    light = "adapter.body.0.out_conv.weight" in sd
    n = _count(sd, r"^adapter\.body\.0\.resnets\.(\d+)\.")
    out = {}
    for key, value in sd.items():
        new = key[len("adapter."):] if key.startswith("adapter.") else key
        if m := re.match(r"^body\.(\d+)\.resnets\.(\d+)\.(.*)$", new):
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            new = f"body.{i}.body.{j}.{rest}" if light else f"body.{i * n + j}.{rest}"
        elif not light and (m := re.match(r"^body\.(\d+)\.in_conv\.(.*)$", new)):
            new = f"body.{int(m.group(1)) * n}.in_conv.{m.group(2)}"
        out[new] = value
    return out


def is_t2i_adapter(sd: dict) -> bool:
    return any(k in sd for k in ("conv_in.weight", "body.0.out_conv.weight", "adapter.conv_in.weight",
                                 "adapter.body.0.out_conv.weight"))


def detect_t2i_config(sd: dict, where: str = "state dict") -> T2IAdapterConfig:
    """The adapter's sizes from TencentARC-layout keys. Full adapters have four levels (as released;
    the width alone cannot tell where one ends since the last two are equally wide)."""
    blocks = _count(sd, r"^body\.(\d+)\.")
    if "body.0.out_conv.weight" in sd:
        return T2IAdapterConfig(
            kind="light", in_channels=sd["body.0.in_conv.weight"].shape[1],
            channels=tuple(sd[f"body.{i}.out_conv.weight"].shape[0] for i in range(blocks)),
            num_res_blocks=_count(sd, r"^body\.0\.body\.(\d+)\."))
    if "conv_in.weight" not in sd or blocks % 4:
        raise CheckpointError(where, f"unrecognised T2I-Adapter layout ({blocks} body blocks; a full "
                                     "adapter has 4 levels of equal block counts)")
    per_level = blocks // 4
    cin = sd["conv_in.weight"].shape[1]
    return T2IAdapterConfig(
        kind="full", in_channels=cin,
        channels=tuple(sd[f"body.{level * per_level}.block1.weight"].shape[0] for level in range(4)),
        num_res_blocks=per_level, ksize=sd["body.0.block2.weight"].shape[2],
        skip_conv="body.0.skep.weight" in sd, down_conv=any(k.endswith("down_opt.op.weight") for k in sd),
        # ComfyUI's rule: SDXL adapters unshuffle by 16, so 1 or 3 hint channels give 256 or 768
        xl=cin in (256, 768))


# ---------------------------------------------------------------------------------------------
# Building

def _assign(net: torch.nn.Module, sd: dict, what: str, where) -> list[str]:
    """assign_weights, with unexpected keys logged (adapter files often carry extras)."""
    unexpected = assign_weights(net, sd, what, where)
    if unexpected:
        log.warning("%s: %s ignores %d unexpected keys, e.g. %s", where, what, len(unexpected), unexpected[:3])
    return unexpected


def _cast(sd: dict, dtype, device) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v).to(device) for k, v in sd.items()}


def build_controlnet_model(sd: dict, where="state dict", dtype=torch.float32, device="cpu"):
    """(ControlNetModel, unexpected keys) from a cldm-layout state dict without prefix."""
    try:
        config = detect_unet_config(sd, where=str(where), encoder_only=True)
    except ConfigError as e:
        raise CheckpointError(where, f"unrecognised ControlNet: {e}") from None
    if "input_hint_block.0.weight" not in sd:
        raise CheckpointError(where, "ControlNet has no 'input_hint_block.0.weight'")
    with torch.device("meta"):
        net = ControlNetModel(config, hint_channels=sd["input_hint_block.0.weight"].shape[1])
    unexpected = _assign(net, _cast(sd, dtype, device), "ControlNet", where)
    return net.eval().requires_grad_(False), unexpected


def build_t2i_adapter_model(sd: dict, where="state dict", device="cpu"):
    """(T2IAdapterModel, unexpected keys) from a TencentARC-layout state dict. Kept in float32:
    like ComfyUI it runs in the sampler's dtype, once per hint."""
    config = detect_t2i_config(sd, where)
    with torch.device("meta"):
        net = T2IAdapterModel(config)
    unexpected = _assign(net, _cast(sd, torch.float32, device), "T2I-Adapter", where)
    return net.eval().requires_grad_(False), unexpected


def _add_model_weights(sd: dict, model, where) -> dict:
    """A diff ControlNet made whole: each tensor plus the UNet weight of the same name."""
    if model is None:
        raise CheckpointError(where, "is a diff ControlNet (it stores the difference to a UNet); load it "
                                     "with DiffControlNetLoader and connect the model it was made for")
    memory.load_models([model])  # the weights as they are sampled, patches included
    unet = model.model.state_dict()
    out = {}
    for key, value in sd.items():
        base = unet.get(key)
        if base is not None and base.shape == value.shape and value.is_floating_point():
            value = (value.float() + base.to(value.device, torch.float32)).to(value.dtype)
        out[key] = value
    return out


def controlnet_from_state_dict(sd: dict, where="state dict", model=None, settings=None,
                               global_average_pooling: bool = False):
    """A CONTROL_NET (ControlNet or T2IAdapter) from any supported layout."""
    if "lora_controlnet" in sd:
        raise CheckpointError(where, "is a Control-LoRA; Control-LoRA files are not supported yet")
    if any(k.startswith("backbone.") for k in sd):
        raise CheckpointError(where, "is a Stable Cascade ControlNet; only SD1/SD2/SDXL ControlNets and "
                                     "T2I-Adapters are supported")
    device = memory.unet_device(settings)
    offload = memory.offload_device(settings)
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        sd, leftover = diffusers_controlnet_to_cldm(sd)
        if leftover:
            log.warning("%s: %d diffusers ControlNet keys have no place in the network, e.g. %s",
                        where, len(leftover), leftover[:3])
    elif any(k.startswith(CLDM_PREFIX) for k in sd):
        diff = DIFF_MARKER in sd
        sd = {k[len(CLDM_PREFIX):]: v for k, v in sd.items() if k.startswith(CLDM_PREFIX)}
        if diff:
            sd = _add_model_weights(sd, model, where)
    elif "zero_convs.0.0.weight" not in sd:
        if not is_t2i_adapter(sd):
            raise CheckpointError(where, "holds neither a ControlNet ('zero_convs', 'input_hint_block') nor a "
                                         "T2I-Adapter ('conv_in', 'body'); is it another kind of model?")
        if "adapter.conv_in.weight" in sd or "adapter.body.0.out_conv.weight" in sd:
            sd = diffusers_adapter_to_original(sd)
        net, _ = build_t2i_adapter_model(sd, where, offload)
        return T2IAdapter(ModelPatcher(net, arch="t2i_adapter", load_device=device, offload_device=offload))
    dtype = memory.unet_dtype(device, settings, stored=next(v.dtype for v in sd.values() if v.is_floating_point()))
    net, _ = build_controlnet_model(sd, where, dtype, offload)
    patcher = ModelPatcher(net, arch=net.config.arch, load_device=device, offload_device=offload)
    return ControlNet(patcher, global_average_pooling=global_average_pooling)


def load_controlnet(path, model=None, settings=None):
    """CONTROL_NET from a file; `model` (MODEL) is needed for diff ControlNets only."""
    sd, _ = read_state_dict(path)
    stem = Path(path).stem
    # ComfyUI's rule: the "shuffle" ControlNet is recognised by its file name
    shuffle = stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")
    return controlnet_from_state_dict(sd, path, model=model, settings=settings, global_average_pooling=shuffle)
