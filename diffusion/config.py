"""UNet sizes as a dataclass, and their detection from a state dict's keys and shapes.

The network in `diffusion/unet.py` is built only from a `UNetConfig`; every number in it is read
from the weights (keys in the original CompVis/SGM single-file layout, prefix already stripped), so a
scaled-down model of any supported architecture loads by the same code as a released one.

What the weights cannot say, and how we decide it (documented in docs/contracts.md):
- Attention heads. A [inner, dim] projection does not tell how it is split into heads. Released
  models follow two conventions: SD1 (conv proj_in) uses 8 heads; SD2 and SDXL (linear proj_in) use
  64 channels per head. We apply those rules, fall back to a single head when 64 does not divide
  the width (only possible in scaled-down models), and let a file override them with the
  safetensors metadata keys in `HEAD_METADATA_KEYS` (see `UNetConfig.head_metadata`).
- Prediction type (eps or v) for SD2: see `diffusion/checkpoint.py:detect_prediction`.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

ARCHES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
HEAD_METADATA_KEYS = ("latentgraph.num_heads", "latentgraph.num_head_channels")


class ConfigError(ValueError):
    """The state dict does not describe a UNet we can build."""


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    # Transformer depth of each input block and each output block, in block order (0 = no attention).
    # Per block rather than per level, because SDXL-family files are free to differ per block.
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)
    transformer_depth_output: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    transformer_depth_middle: int = 1  # -1: middle block has no transformer
    context_dim: int = 768
    num_heads: int = 8  # -1 when num_head_channels decides
    num_head_channels: int = -1  # -1 when num_heads decides
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None  # SDXL "label_emb" input width (pooled text + size embeddings)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        levels = len(self.channel_mult)
        if len(self.num_res_blocks) != levels:
            raise ConfigError(f"num_res_blocks {self.num_res_blocks} needs one entry per level ({levels})")
        n_in = sum(self.num_res_blocks)
        if len(self.transformer_depth) != n_in:
            raise ConfigError(f"transformer_depth needs {n_in} entries (one per input res block)")
        n_out = sum(n + 1 for n in self.num_res_blocks)
        if len(self.transformer_depth_output) != n_out:
            raise ConfigError(f"transformer_depth_output needs {n_out} entries (one per output block)")
        if (self.num_heads > 0) == (self.num_head_channels > 0):
            raise ConfigError("set exactly one of num_heads and num_head_channels")

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, dim_head) of a transformer whose width is `channels`."""
        if self.num_heads > 0:
            heads = self.num_heads
        else:
            heads = max(1, channels // self.num_head_channels)
        if channels % heads:
            raise ConfigError(f"transformer width {channels} is not divisible into {heads} heads")
        return heads, channels // heads

    def head_metadata(self) -> dict[str, str]:
        """Safetensors metadata that makes detection recover this config's head layout exactly."""
        if self.num_heads > 0:
            return {HEAD_METADATA_KEYS[0]: str(self.num_heads)}
        return {HEAD_METADATA_KEYS[1]: str(self.num_head_channels)}

    @property
    def arch(self) -> str:
        """Architecture family, from the structure alone so scaled-down models classify too."""
        if self.adm_in_channels is None:
            return "sd2" if self.use_linear_in_transformer else "sd1"
        # Released sizes first; otherwise the refiner's shape: 4 levels where the base has 3.
        if self.adm_in_channels == 2816:
            return "sdxl"
        if self.adm_in_channels == 2560:
            return "sdxl_refiner"
        return "sdxl_refiner" if len(self.channel_mult) == 4 else "sdxl"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# ---------------------------------------------------------------------------------------------
# Detection

def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _depth(keys, block: str) -> int:
    """Number of transformer layers in the SpatialTransformer at `block` (e.g. 'input_blocks.1.1')."""
    ids = _indices(keys, re.escape(block) + r"\.transformer_blocks\.(\d+)\.")
    return len(ids)


def detect_unet_config(sd: dict, metadata: dict | None = None, where: str = "state dict") -> UNetConfig:
    """Read a UNetConfig from a UNet state dict in the original layout (no 'model.diffusion_model.').

    `sd` maps key -> tensor (or a shape tuple); `metadata` is the file's safetensors metadata.
    """
    keys = list(sd.keys())

    def shape(key):
        if key not in sd:
            raise ConfigError(f"{where}: expected UNet key '{key}' is missing")
        value = sd[key]
        return tuple(getattr(value, "shape", value))

    w_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = w_in[0], w_in[1]
    out_channels = shape("out.2.weight")[0]
    context_dim = None
    use_linear = False

    input_ids = _indices(keys, r"input_blocks\.(\d+)\.")
    output_ids = _indices(keys, r"output_blocks\.(\d+)\.")
    if not input_ids or not output_ids:
        raise ConfigError(f"{where}: no input_blocks/output_blocks keys; not a UNet")

    # Walk the input blocks: a ResBlock opens or continues a level, a Downsample ('.0.op') ends one.
    channel_mult, num_res_blocks, transformer_depth = [], [], []
    widths = []  # widths of the transformers found, to check a head layout against
    current = 0
    for i in input_ids[1:]:
        prefix = f"input_blocks.{i}."
        if prefix + "0.op.weight" in sd:
            num_res_blocks.append(current)
            current = 0
            continue
        if prefix + "0.in_layers.2.weight" not in sd:
            raise ConfigError(f"{where}: input block {i} is neither a ResBlock nor a Downsample")
        out_ch = shape(prefix + "0.in_layers.2.weight")[0]
        if current == 0:
            if out_ch % model_channels:
                raise ConfigError(f"{where}: input block {i} width {out_ch} is not a multiple of {model_channels}")
            channel_mult.append(out_ch // model_channels)
        current += 1
        depth = _depth(keys, prefix + "1")
        transformer_depth.append(depth)
        if depth:
            widths.append(out_ch)
            context_dim = shape(prefix + "1.transformer_blocks.0.attn2.to_k.weight")[1]
            use_linear = len(shape(prefix + "1.proj_in.weight")) == 2
    num_res_blocks.append(current)

    transformer_depth_output = [_depth(keys, f"output_blocks.{i}.1") for i in output_ids]
    for i, d in zip(output_ids, transformer_depth_output):
        if d:
            widths.append(shape(f"output_blocks.{i}.1.norm.weight")[0])
        if d and context_dim is None:
            context_dim = shape(f"output_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            use_linear = len(shape(f"output_blocks.{i}.1.proj_in.weight")) == 2

    middle_depth = _depth(keys, "middle_block.1") if "middle_block.2.in_layers.2.weight" in sd else -1
    if middle_depth > 0:
        widths.append(shape("middle_block.1.norm.weight")[0])
    if middle_depth > 0 and context_dim is None:
        context_dim = shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
        use_linear = len(shape("middle_block.1.proj_in.weight")) == 2
    if context_dim is None:
        raise ConfigError(f"{where}: UNet has no cross-attention layers; unsupported")

    adm = shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in sd else None

    num_heads, num_head_channels = _head_layout(use_linear, widths, metadata, where)

    try:
        return UNetConfig(
            in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
            channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
            transformer_depth=tuple(transformer_depth),
            transformer_depth_output=tuple(transformer_depth_output),
            transformer_depth_middle=middle_depth, context_dim=context_dim,
            num_heads=num_heads, num_head_channels=num_head_channels,
            use_linear_in_transformer=use_linear, adm_in_channels=adm)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _head_layout(use_linear: bool, widths: list[int], metadata: dict | None, where: str) -> tuple[int, int]:
    metadata = metadata or {}
    for key, is_heads in ((HEAD_METADATA_KEYS[0], True), (HEAD_METADATA_KEYS[1], False)):
        if key in metadata:
            try:
                value = int(metadata[key])
            except ValueError:
                raise ConfigError(f"{where}: metadata {key}={metadata[key]!r} is not an integer") from None
            if value <= 0:
                raise ConfigError(f"{where}: metadata {key}={value} must be positive")
            return (value, -1) if is_heads else (-1, value)
    if not use_linear:
        return 8, -1  # SD1 convention
    if all(w % 64 == 0 for w in widths):
        return -1, 64  # SD2 / SDXL convention
    # Only scaled-down models get here: one head per transformer, the whole width.
    return -1, max(widths) if widths else 64
