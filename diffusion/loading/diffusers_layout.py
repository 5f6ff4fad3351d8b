"""diffusers' key layouts -> the original single-file layouts our networks load (UNet, VAE).

A diffusers pipeline folder stores each network under the names of diffusers' modules; the UNet and
the VAE here keep the original CompVis/SGM names (diffusion/models/unet.py, vae.py). The two layouts
hold the same tensors, grouped differently:

UNet. diffusers groups a level's modules (`down_blocks.i.resnets.j`, `.attentions.j`,
`.downsamplers.0`); the original numbers every block of the network in order (`input_blocks.k`,
`middle_block.k`, `output_blocks.k`), a block holding a ResBlock at `.0` and its transformer at `.1`.
With `n` ResBlocks per level (n + 1 on the way up) the block number is a running count. Transformer
internals (`norm`, `proj_in`, `transformer_blocks.*`, `proj_out`) carry the same names in both.

VAE. Same idea; diffusers counts the decoder's `up_blocks` from the deepest level, the original
`decoder.up.i` from full resolution. Attention projections keep their values ([C, C] linear weights;
the loader reshapes them to 1x1 convs); both diffusers spellings (`to_q`..., and the older
`query`/`key`/`value`/`proj_attn`) are read.

Text encoders need no renaming: diffusers stores them in transformers' layout, which our CLIP network
uses (diffusion/models/clip.py).
"""
from __future__ import annotations

import re

from diffusion.loading.config import HEAD_METADATA_KEYS


class LayoutError(ValueError):
    """A state dict that is not in diffusers' layout of the network asked for."""


# diffusers -> original UNet names, shared with the ControlNet loader and (inverted) the LoRA key map:
# ResBlock parameters, and the top-level layers
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def _resnet(rest: str, names: dict, where: str) -> str:
    module, _, param = rest.partition(".")
    if module not in names:
        raise LayoutError(f"{where}: unknown ResBlock weight '{rest}'")
    return f"{names[module]}.{param}"


def _count(keys, pattern: str) -> dict[int, int]:
    """{level: number of distinct sub-indices} for keys matching `pattern` (two groups: level, index)."""
    rx = re.compile(pattern)
    seen: dict[int, set] = {}
    for k in keys:
        m = rx.match(k)
        if m:
            seen.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {level: len(ids) for level, ids in seen.items()}


def unet_layers_per_block(sd: dict) -> int:
    """ResBlocks per down level, which the original numbering needs; the same on every level in
    SD1, SD2 and SDXL (a UNet that differs per level has no single-file layout we load)."""
    counts = set(_count(sd, r"^down_blocks\.(\d+)\.resnets\.(\d+)\.").values())
    if len(counts) != 1:
        raise LayoutError(f"diffusers UNet: ResBlocks per down level are {sorted(counts) or 'absent'}; "
                          "expected one count on every level")
    return counts.pop()


def unet_to_original(sd: dict) -> dict:
    """A diffusers UNet2DConditionModel state dict under the original keys (no 'model.diffusion_model.')."""
    if "conv_in.weight" not in sd or not any(k.startswith("down_blocks.") for k in sd):
        raise LayoutError("not a diffusers UNet (no 'conv_in.weight' / 'down_blocks.*' keys)")
    n = unet_layers_per_block(sd)
    up_attention = {i for i in range(len(_count(sd, r"^up_blocks\.(\d+)\.resnets\.(\d+)\.")))
                    if any(k.startswith(f"up_blocks.{i}.attentions.") for k in sd)}
    out = {}
    for key, value in sd.items():
        out[_unet_key(key, n, up_attention)] = value
    return out


def _unet_key(key: str, n: int, up_attention: set) -> str:
    for src, dst in UNET_TOP.items():
        if key.startswith(src + "."):
            return dst + key[len(src):]
    m = _BLOCK.match(key)
    if m:
        side, level, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
        if side == "down_blocks":
            # input_blocks.0 is conv_in; each level then has n ResBlock(+transformer) blocks and a Downsample
            first = 1 + level * (n + 1)
            if kind == "resnets":
                return f"input_blocks.{first + j}.0.{_resnet(rest, UNET_RESNET, key)}"
            if kind == "attentions":
                return f"input_blocks.{first + j}.1.{rest}"
            if kind == "downsamplers" and rest.startswith("conv."):
                return f"input_blocks.{first + n}.0.op.{rest[len('conv.'):]}"
        else:
            first = level * (n + 1)  # n + 1 ResBlocks per level on the way up; the last one upsamples
            if kind == "resnets":
                return f"output_blocks.{first + j}.0.{_resnet(rest, UNET_RESNET, key)}"
            if kind == "attentions":
                return f"output_blocks.{first + j}.1.{rest}"
            if kind == "upsamplers":
                slot = 2 if level in up_attention else 1
                return f"output_blocks.{first + n}.{slot}.{rest}"
    m = _MID.match(key)
    if m:
        kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet(rest, UNET_RESNET, key)}"
        return f"middle_block.1.{rest}"
    raise LayoutError(f"diffusers UNet: no original name for '{key}'")


def unet_head_metadata(config: dict, sd: dict) -> dict[str, str]:
    """Safetensors-style metadata (config.HEAD_METADATA_KEYS) that states the attention head layout
    a diffusers unet/config.json declares, so detection need not guess it; {} when the config does
    not pin one layout for every level.

    diffusers names the head count `attention_head_dim` in SD1/SD2/SDXL configs (a historical
    misnomer); `num_attention_heads`, when set, takes precedence, as in diffusers.
    """
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    widths = config.get("block_out_channels")
    if heads is None or not widths:
        return {}
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(widths)
    if len(heads) != len(widths):
        return {}
    levels = [i for i in range(len(widths)) if any(k.startswith(f"down_blocks.{i}.attentions.") for k in sd)]
    pairs = [(int(heads[i]), int(widths[i])) for i in levels] or [(int(heads[-1]), int(widths[-1]))]
    counts = {h for h, _ in pairs}
    if len(counts) == 1:
        return {HEAD_METADATA_KEYS[0]: str(counts.pop())}
    per_head = {w // h for h, w in pairs if h and w % h == 0}
    if len(per_head) == 1 and all(h and w % h == 0 for h, w in pairs):
        return {HEAD_METADATA_KEYS[1]: str(per_head.pop())}
    return {}


_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                  "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_VAE_BLOCK = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)"
                        r"\.(\d+)\.(.+)$")
_VAE_MID = re.compile(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$")


def vae_to_original(sd: dict) -> dict:
    """A diffusers AutoencoderKL state dict under the original keys (no 'first_stage_model.')."""
    if "encoder.conv_in.weight" not in sd or not any(k.startswith("decoder.up_blocks.") for k in sd):
        raise LayoutError("not a diffusers AutoencoderKL (no 'encoder.conv_in.weight' / 'decoder.up_blocks.*')")
    levels = len(_count(sd, r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."))
    return {_vae_key(key, levels): value for key, value in sd.items()}


def _vae_key(key: str, levels: int) -> str:
    if key.startswith(("quant_conv.", "post_quant_conv.", "encoder.conv_in.", "encoder.conv_out.",
                       "decoder.conv_in.", "decoder.conv_out.")):
        return key
    for part in ("encoder", "decoder"):
        if key.startswith(f"{part}.conv_norm_out."):
            return f"{part}.norm_out.{key.rsplit('.', 1)[1]}"
    m = _VAE_BLOCK.match(key)
    if m:
        part, _, level, kind, j, rest = m.groups()
        # the original numbers both halves from full resolution; diffusers' decoder starts deepest
        level = int(level) if part == "encoder" else levels - 1 - int(level)
        side = "down" if part == "encoder" else "up"
        if kind == "resnets":
            return f"{part}.{side}.{level}.block.{j}.{_resnet(rest, _VAE_RESNET, key)}"
        if rest.startswith("conv."):
            sample = "downsample" if kind == "downsamplers" else "upsample"
            return f"{part}.{side}.{level}.{sample}.{rest}"
    m = _VAE_MID.match(key)
    if m:
        part, kind, j, rest = m.groups()
        if kind == "resnets":
            return f"{part}.mid.block_{int(j) + 1}.{_resnet(rest, _VAE_RESNET, key)}"
        module, _, param = rest.rpartition(".")
        if module in _VAE_ATTENTION:
            return f"{part}.mid.attn_1.{_VAE_ATTENTION[module]}.{param}"
    raise LayoutError(f"diffusers VAE: no original name for '{key}'")
