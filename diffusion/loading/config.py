"""The sizes of every network as small dataclasses, and their detection from a state dict's keys and shapes.

UNet, KL autoencoder (VAE), TAESD and CLIP text model: each network in diffusion/models/ is built only
from its config here.

UNet. The network in `diffusion/models/unet.py` is built only from a `UNetConfig`; every number in it is read
from the weights (keys in the original CompVis/SGM single-file layout, prefix already stripped), so a
scaled-down model of any supported architecture loads by the same code as a released one.

What the weights cannot say, and how we decide it (documented in docs/contracts.md):
- Attention heads. A [inner, dim] projection does not tell how it is split into heads. Released
  models follow two conventions: SD1 (conv proj_in) uses 8 heads; SD2 and SDXL (linear proj_in) use
  64 channels per head. We apply those rules, fall back to a single head when 64 does not divide
  the width (only possible in scaled-down models), and let a file override them with the
  safetensors metadata keys in `HEAD_METADATA_KEYS` (see `UNetConfig.head_metadata`).
- Prediction type (eps or v) for SD2: see `diffusion/loading/checkpoint.py:detect_prediction`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

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
        # SD2.1-unCLIP: an SD2 UNet whose ADM input takes a CLIP image embedding. SDXL-family UNets
        # never have attention at the first level; SD2's always does.
        if self.use_linear_in_transformer and self.transformer_depth[0] > 0:
            return "sd2"
        # Released sizes first; otherwise the refiner's shape: 4 levels where the base has 3.
        if self.adm_in_channels == 2816:
            return "sdxl"
        if self.adm_in_channels == 2560:
            return "sdxl_refiner"
        return "sdxl_refiner" if len(self.channel_mult) == 4 else "sdxl"



# ---------------------------------------------------------------------------------------------
# Detection

def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _depth(keys, block: str) -> int:
    """Number of transformer layers in the SpatialTransformer at `block` (e.g. 'input_blocks.1.1')."""
    ids = _indices(keys, re.escape(block) + r"\.transformer_blocks\.(\d+)\.")
    return len(ids)


def detect_unet_config(sd: dict, metadata: dict | None = None, where: str = "state dict",
                       encoder_only: bool = False) -> UNetConfig:
    """Read a UNetConfig from a UNet state dict in the original layout (no 'model.diffusion_model.').

    `sd` maps key -> tensor (or a shape tuple); `metadata` is the file's safetensors metadata.
    `encoder_only`: the weights hold only the input and middle blocks (a ControlNet); the decoder
    half of the config is then the usual mirror image with no attention and `out_channels` =
    `in_channels`, values nothing built from it reads.
    """
    keys = list(sd.keys())

    def shape(key):
        if key not in sd:
            raise ConfigError(f"{where}: expected UNet key '{key}' is missing")
        value = sd[key]
        return tuple(getattr(value, "shape", value))

    w_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = w_in[0], w_in[1]
    out_channels = in_channels if encoder_only else shape("out.2.weight")[0]
    context_dim = None
    use_linear = False

    input_ids = _indices(keys, r"input_blocks\.(\d+)\.")
    output_ids = _indices(keys, r"output_blocks\.(\d+)\.")
    if not input_ids or not (output_ids or encoder_only):
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
    if encoder_only:
        transformer_depth_output = [0] * sum(n + 1 for n in num_res_blocks)
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


# ---------------------------------------------------------------------------------------------
# KL autoencoder (VAE). Group-norm group count is not visible in the weights; the released
# architecture uses 32 and so do we unless told otherwise.

class VAEError(ValueError):
    """A VAE state dict that does not fit the KL autoencoder architecture."""


@dataclass(frozen=True)
class VAEConfig:
    """Sizes of a KL autoencoder. Defaults are the SD1/SD2/SDXL VAE."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32

    @property
    def downscale_ratio(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _require(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise VAEError(f"VAE state dict is missing key '{key}'")
    return sd[key]


def detect_vae_config(sd: dict, norm_groups: int = 32) -> VAEConfig:
    """Read the autoencoder sizes from a state dict (prefix already stripped)."""
    conv_in = _require(sd, "encoder.conv_in.weight")
    ch, in_channels = conv_in.shape[0], conv_in.shape[1]
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.down.")})
    if not levels or levels != list(range(len(levels))):
        raise VAEError(f"VAE state dict has no usable 'encoder.down.N' levels (found {levels})")
    ch_mult = []
    for i in levels:
        w = _require(sd, f"encoder.down.{i}.block.0.conv1.weight")
        if w.shape[0] % ch:
            raise VAEError(f"VAE weight 'encoder.down.{i}.block.0.conv1.weight' has {w.shape[0]} output "
                           f"channels, not a multiple of the base width {ch}")
        ch_mult.append(w.shape[0] // ch)
    num_res_blocks = len({k.split(".")[4] for k in sd if k.startswith("encoder.down.0.block.")})
    z2 = _require(sd, "encoder.conv_out.weight").shape[0]
    embed2 = _require(sd, "quant_conv.weight").shape[0]
    out_ch = _require(sd, "decoder.conv_out.weight").shape[0]
    return VAEConfig(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                     in_channels=in_channels, out_ch=out_ch, z_channels=z2 // 2,
                     embed_dim=embed2 // 2, norm_groups=norm_groups)


# ---------------------------------------------------------------------------------------------
# TAESD (the layer order is fixed; width and latent channels come from the weights)

class TAESDError(VAEError):
    """A TAESD state dict that does not fit the architecture."""


@dataclass(frozen=True)
class TAESDConfig:
    latent_channels: int = 4
    width: int = 64


# ---------------------------------------------------------------------------------------------
# CLIP text model. Two things the weights cannot say:
# - heads: released CLIP text models use 64 channels per head (L 768/12, H 1024/16, bigG 1280/20);
#   widths below 256 (only scaled-down test models) use 16 channels per head. Callers may override.
# - activation: OpenAI's CLIP-L uses quick_gelu, the LAION OpenCLIP models use exact gelu; which one a
#   tower is follows from where it sits in the checkpoint, so the caller passes it.

LAYOUTS = ("hf", "open_clip")
ACTIVATIONS = ("quick_gelu", "gelu")

_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")
_OPEN_CLIP_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.")


class ClipConfigError(ValueError):
    """A state dict does not hold a CLIP text transformer we can build."""


def heads_for_width(width: int) -> int:
    """Attention heads of a CLIP text model of this width (see the module docstring)."""
    head_width = 64 if width >= 256 else 16
    if width % head_width:
        raise ClipConfigError(f"CLIP text width {width} is not a multiple of {head_width}; pass heads explicitly")
    return width // head_width


@dataclass(frozen=True)
class ClipTextConfig:
    layout: str  # the file's key layout, "hf" | "open_clip": how weights load and save (keymaps.clip_key_map)
    width: int
    layers: int
    heads: int
    vocab_size: int
    context_length: int
    projection_dim: int | None  # None: the file has no text projection (identity for pooled)
    activation: str  # "quick_gelu" | "gelu"
    eps: float = 1e-5

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ClipConfigError(f"unknown CLIP layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.activation not in ACTIVATIONS:
            raise ClipConfigError(f"unknown CLIP activation {self.activation!r}; expected one of {ACTIVATIONS}")
        if self.width % self.heads:
            raise ClipConfigError(f"CLIP width {self.width} is not divisible by {self.heads} heads")

    @property
    def mlp_width(self) -> int:
        return 4 * self.width

    @classmethod
    def from_state_dict(cls, sd, activation: str, heads: int | None = None) -> "ClipTextConfig":
        """Read the sizes from `sd`, whose keys start where the text model starts (prefix stripped)."""
        layout = detect_layout(sd)
        if layout == "hf":
            token = sd["text_model.embeddings.token_embedding.weight"]
            context = sd["text_model.embeddings.position_embedding.weight"].shape[0]
            layer_re = _HF_LAYER
            proj = sd.get("text_projection.weight")
            projection_dim = None if proj is None else proj.shape[0]
            mlp_key = "text_model.encoder.layers.0.mlp.fc1.weight"
        else:
            token = sd["token_embedding.weight"]
            context = sd["positional_embedding"].shape[0]
            layer_re = _OPEN_CLIP_LAYER
            proj = sd.get("text_projection")
            projection_dim = None if proj is None else proj.shape[1]
            mlp_key = "transformer.resblocks.0.mlp.c_fc.weight"
        vocab_size, width = token.shape
        layer_ids = {int(m.group(1)) for k in sd for m in [layer_re.match(k)] if m}
        if not layer_ids:
            raise ClipConfigError(f"CLIP text model ({layout} layout) has no transformer layers")
        layers = max(layer_ids) + 1
        if layer_ids != set(range(layers)):
            raise ClipConfigError(f"CLIP text model is missing layers {sorted(set(range(layers)) - layer_ids)}")
        if mlp_key in sd and sd[mlp_key].shape[0] != 4 * width:
            raise ClipConfigError(f"CLIP MLP width {sd[mlp_key].shape[0]} is not 4 x {width}")
        return cls(
            layout=layout,
            width=width,
            layers=layers,
            heads=heads if heads is not None else heads_for_width(width),
            vocab_size=vocab_size,
            context_length=context,
            projection_dim=projection_dim,
            activation=activation,
        )


def detect_layout(sd) -> str:
    """"hf" or "open_clip" for a text-model state dict with its prefix stripped."""
    if "text_model.embeddings.token_embedding.weight" in sd:
        return "hf"
    if "token_embedding.weight" in sd and "positional_embedding" in sd:
        return "open_clip"
    sample = ", ".join(sorted(sd)[:3]) or "no keys"
    raise ClipConfigError(f"not a CLIP text model: no token embedding found (keys start: {sample})")
