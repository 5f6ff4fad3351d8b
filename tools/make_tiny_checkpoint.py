"""Build small random-weight Stable Diffusion checkpoints with our own networks.

    python tools/make_tiny_checkpoint.py [--out PATH] [--arch sd1|sdxl] [--seed N] [--force]

The default writes models/checkpoints/latentgraph-tiny-sd1.safetensors: the SD1 architecture (UNet,
KL autoencoder, CLIP-L text model) scaled down to a few MB, stored in the original single-file key
layout (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`), so it
loads through the same loader as a released checkpoint. `--arch sdxl` writes the SDXL layout
(`conditioner.embedders.0.transformer.*` CLIP-L and `conditioner.embedders.1.model.*` bigG);
`--arch sdxl_refiner` the SDXL refiner layout (bigG alone under `conditioner.embedders.0.model.*`,
a four-level UNet whose ADM input is pooled text + five size/aesthetic embeddings).

The weights are random (seeded, so the file is the same on every machine): the pictures it makes are
noise. It exists to run workflows end to end without downloading anything. Sizes are small `Tiny*`
dataclasses below; tests pass their own to build even smaller variants.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from diffusion.loading.config import ClipTextConfig, UNetConfig, VAEConfig  # noqa: E402
from diffusion.models.clip import ClipTextModel  # noqa: E402
from diffusion.models.unet import UNetModel  # noqa: E402
from diffusion.models.vae import AutoencoderKL  # noqa: E402

DEFAULT_NAME = "latentgraph-tiny-sd1.safetensors"
DEFAULT_PATH = ROOT / "models" / "checkpoints" / DEFAULT_NAME
# SDXL's ADM input: pooled text (bigG projection) + six 256-wide size embeddings; refiner: five.
SIZE_EMBED_WIDTH = 256
VOCAB_SIZE = 49408  # the bundled CLIP tokenizer's vocabulary
CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class TinySD1:
    """Sizes of the tiny SD1 model. Widths are multiples of 32 (the GroupNorm group count)."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    clip_width: int = 32  # also the UNet's cross-attention context width
    clip_layers: int = 2
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2)  # four levels: the 8x downscale of the real VAE
    unet_in_channels: int = 4  # 9: an inpainting UNet (latent + mask + masked-image latent)
    num_res_blocks: int = 1  # per level; 2 with four levels gives SD1's input-block layout (T2I-Adapters)


@dataclass(frozen=True)
class TinySDXL:
    """Sizes of the tiny SDXL model: CLIP-L + bigG side by side, first level without attention."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    clip_l_width: int = 32
    clip_g_width: int = 64
    clip_g_projection: int = 64  # pooled width
    clip_layers: int = 3  # SDXL reads the penultimate layer
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2)


@dataclass(frozen=True)
class TinySDXLRefiner:
    """Sizes of the tiny SDXL refiner: bigG only, four levels with attention in the middle two only."""

    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 1, 2, 2)  # four levels: detection tells it from the base by this
    clip_g_width: int = 64  # also the UNet's context width (1280 in the release)
    clip_g_projection: int = 64
    clip_layers: int = 3  # the refiner reads the penultimate layer
    vae_ch: int = 32
    vae_ch_mult: tuple[int, ...] = (1, 1, 2, 2)


def _unet_config_sd1(t: TinySD1) -> UNetConfig:
    levels, n = len(t.channel_mult), t.num_res_blocks
    return UNetConfig(
        in_channels=t.unet_in_channels,
        model_channels=t.model_channels, channel_mult=t.channel_mult, num_res_blocks=(n,) * levels,
        transformer_depth=(1,) * (n * levels), transformer_depth_output=(1,) * ((n + 1) * levels),
        transformer_depth_middle=1, context_dim=t.clip_width, num_heads=8, num_head_channels=-1,
        use_linear_in_transformer=False, adm_in_channels=None)


def _unet_config_sdxl(t: TinySDXL) -> UNetConfig:
    levels = len(t.channel_mult)
    # As in SDXL the top level has no transformer; deeper levels have one.
    depth_in = tuple(0 if level == 0 else 1 for level in range(levels))
    depth_out = tuple(d for d in reversed(depth_in) for _ in range(2))
    return UNetConfig(
        model_channels=t.model_channels, channel_mult=t.channel_mult, num_res_blocks=(1,) * levels,
        transformer_depth=depth_in, transformer_depth_output=depth_out, transformer_depth_middle=1,
        context_dim=t.clip_l_width + t.clip_g_width, num_heads=-1, num_head_channels=64,
        use_linear_in_transformer=True, adm_in_channels=t.clip_g_projection + 6 * SIZE_EMBED_WIDTH)


def _unet_config_sdxl_refiner(t: TinySDXLRefiner) -> UNetConfig:
    levels = len(t.channel_mult)
    # The released refiner: no transformer at the first and the last level.
    depth_in = tuple(0 if level in (0, levels - 1) else 1 for level in range(levels))
    depth_out = tuple(d for d in reversed(depth_in) for _ in range(2))
    return UNetConfig(
        model_channels=t.model_channels, channel_mult=t.channel_mult, num_res_blocks=(1,) * levels,
        transformer_depth=depth_in, transformer_depth_output=depth_out, transformer_depth_middle=1,
        context_dim=t.clip_g_width, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
        adm_in_channels=t.clip_g_projection + 5 * SIZE_EMBED_WIDTH)


def _clip_config(layout: str, width: int, layers: int, projection: int | None, activation: str,
                 heads: int | None = None) -> ClipTextConfig:
    return ClipTextConfig(layout=layout, width=width, layers=layers, heads=heads or max(1, width // 16),
                          vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH, projection_dim=projection,
                          activation=activation)


@torch.no_grad()
def _randomise_unet(unet: UNetModel) -> UNetModel:
    """PyTorch's default init, except that norms start at identity (as a trained model's roughly are).

    Default init keeps activations bounded through the network, so sampling stays finite.
    """
    for module in unet.modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            module.weight.fill_(1.0)
            module.bias.zero_()
    return unet


@torch.no_grad()
def randomise_clip(model: ClipTextModel, std: float = 0.02) -> ClipTextModel:
    """Random text-model weights (normal, std 0.02; norms at 1/0), in place.

    Drawn weight by weight in the file layout (`model.state_dict()`), so a seed gives the weights it
    gave when each layout had its own module tree.
    """
    weights = {}
    for name, current in model.state_dict().items():
        p = torch.empty(current.shape, dtype=current.dtype)
        if name.endswith(("layer_norm1.weight", "layer_norm2.weight", "ln_1.weight", "ln_2.weight",
                          "final_layer_norm.weight", "ln_final.weight")):
            p.fill_(1.0)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.normal_(0.0, std)
        weights[name] = p
    model.load_state_dict(weights, assign=True)  # the new tensors become the weights: no second copy
    return model


def new_clip(cfg: ClipTextConfig) -> ClipTextModel:
    """An untrained ClipTextModel whose construction draws the random numbers the file layout's own
    module tree drew, so a seeded checkpoint stays the same file. The open_clip tree initialised only
    its token Embedding and per block out_proj, c_fc and c_proj (in_proj, positions and projection
    were bare Parameters); the network itself is built on the meta device, drawing nothing."""
    if cfg.layout == "hf":
        return ClipTextModel(cfg)
    torch.nn.Embedding(cfg.vocab_size, cfg.width)
    for _ in range(cfg.layers):
        torch.nn.Linear(cfg.width, cfg.width)
        torch.nn.Linear(cfg.width, cfg.mlp_width)
        torch.nn.Linear(cfg.mlp_width, cfg.width)
    with torch.device("meta"):
        model = ClipTextModel(cfg)
    return model.to_empty(device="cpu")


def _prefixed(prefix: str, module: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # .to() returns the parameter itself when the dtype already matches: no copy of a full-size model.
    return {prefix + k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}


def build_state_dict(unet_cfg: UNetConfig, vae_cfg: VAEConfig, towers: list[tuple[str, ClipTextConfig]],
                     arch: str, seed: int = 0, dtype=torch.float16) -> tuple[dict, dict]:
    """(tensors, metadata) of a random checkpoint in the original single-file layout.

    `towers` lists (key prefix, config) of the text encoders. Stored in `dtype`: fp16 by default,
    which halves the file; the loaders pick the compute dtype themselves (fp32 on CPU).
    """
    sd = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd.update(_prefixed("model.diffusion_model.", _randomise_unet(UNetModel(unet_cfg)), dtype))
        sd.update(_prefixed("first_stage_model.", AutoencoderKL(vae_cfg), dtype))
        for prefix, cfg in towers:
            sd.update(_prefixed(prefix, randomise_clip(new_clip(cfg)), dtype))
    return sd, _metadata(unet_cfg, arch, seed)


def build_sd1_state_dict(sizes: TinySD1 = TinySD1(), seed: int = 0) -> tuple[dict, dict]:
    """(tensors, metadata) of a tiny SD1 checkpoint in the original single-file layout."""
    vae = VAEConfig(ch=sizes.vae_ch, ch_mult=sizes.vae_ch_mult, num_res_blocks=1)
    clip = _clip_config("hf", sizes.clip_width, sizes.clip_layers, None, "quick_gelu")
    return build_state_dict(_unet_config_sd1(sizes), vae, [("cond_stage_model.transformer.", clip)], "sd1", seed)


def build_sdxl_state_dict(sizes: TinySDXL = TinySDXL(), seed: int = 0) -> tuple[dict, dict]:
    """(tensors, metadata) of a tiny SDXL-base-architecture checkpoint in the original layout."""
    vae = VAEConfig(ch=sizes.vae_ch, ch_mult=sizes.vae_ch_mult, num_res_blocks=1)
    towers = [("conditioner.embedders.0.transformer.",
               _clip_config("hf", sizes.clip_l_width, sizes.clip_layers, None, "quick_gelu")),
              ("conditioner.embedders.1.model.",
               _clip_config("open_clip", sizes.clip_g_width, sizes.clip_layers, sizes.clip_g_projection, "gelu"))]
    return build_state_dict(_unet_config_sdxl(sizes), vae, towers, "sdxl", seed)


def build_sdxl_refiner_state_dict(sizes: TinySDXLRefiner = TinySDXLRefiner(), seed: int = 0) -> tuple[dict, dict]:
    """(tensors, metadata) of a tiny SDXL-refiner-architecture checkpoint in the original layout."""
    vae = VAEConfig(ch=sizes.vae_ch, ch_mult=sizes.vae_ch_mult, num_res_blocks=1)
    towers = [("conditioner.embedders.0.model.",
               _clip_config("open_clip", sizes.clip_g_width, sizes.clip_layers, sizes.clip_g_projection, "gelu"))]
    return build_state_dict(_unet_config_sdxl_refiner(sizes), vae, towers, "sdxl_refiner", seed)


def build_full_sd15_state_dict(seed: int = 0) -> tuple[dict, dict]:
    """A random checkpoint with the released SD1.5 sizes (about 4.3 GB, all fp32 like the pruned
    release files); for benchmarks/txt2img.py. Needs ~5 GB of RAM to build."""
    clip = _clip_config("hf", 768, 12, None, "quick_gelu", heads=12)
    return build_state_dict(UNetConfig(), VAEConfig(), [("cond_stage_model.transformer.", clip)], "sd1", seed,
                            dtype=torch.float32)


def _metadata(unet_cfg: UNetConfig, arch: str, seed: int) -> dict[str, str]:
    meta = {"latentgraph.random_weights": "built by tools/make_tiny_checkpoint.py",
            "latentgraph.arch": arch, "latentgraph.seed": str(seed)}
    # Head layouts of scaled-down models cannot be read from shapes; state them (diffusion/config.py).
    meta.update(unet_cfg.head_metadata())
    return meta


def save(sd: dict, metadata: dict, path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind a model folder's listing
    return path


def make_tiny_sd1(path=DEFAULT_PATH, seed: int = 0, sizes: TinySD1 = TinySD1()) -> Path:
    return save(*build_sd1_state_dict(sizes, seed), path)


def make_tiny_sdxl(path, seed: int = 0, sizes: TinySDXL = TinySDXL()) -> Path:
    return save(*build_sdxl_state_dict(sizes, seed), path)


def make_tiny_sdxl_refiner(path, seed: int = 0, sizes: TinySDXLRefiner = TinySDXLRefiner()) -> Path:
    return save(*build_sdxl_refiner_state_dict(sizes, seed), path)


MAKERS = {"sd1": make_tiny_sd1, "sdxl": make_tiny_sdxl, "sdxl_refiner": make_tiny_sdxl_refiner}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default {DEFAULT_PATH})")
    parser.add_argument("--arch", choices=tuple(MAKERS), default="sd1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    out = args.out or DEFAULT_PATH.with_name(DEFAULT_NAME.replace("sd1", args.arch.replace("_", "-")))
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to rebuild it")
        return 0
    path = MAKERS[args.arch](out, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
