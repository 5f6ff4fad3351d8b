"""The KL autoencoder ("first stage model") of SD1/SD2/SDXL and the `VAE` runtime object.

Module names follow the original single-file checkpoint layout (the keys under `first_stage_model.`),
so a state dict with that prefix stripped loads directly:

    encoder.conv_in  encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}
    encoder.down.{i}.downsample.conv  encoder.mid.{block_1,attn_1,block_2}  encoder.norm_out/conv_out
    quant_conv  post_quant_conv
    decoder.conv_in  decoder.mid.*  decoder.up.{i}.block.{j}.*  decoder.up.{i}.upsample.conv
    decoder.norm_out/conv_out

The sizes are read out of the keys and shapes (`diffusion.loading.config.detect_vae_config`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from diffusion import memory
from diffusion.models import tiling
from diffusion.loading.config import VAEConfig, VAEError, detect_vae_config
from diffusion.loading.keymaps import vae_weights
from diffusion.models.attention import attention

log = logging.getLogger(__name__)

DOWNSCALE_RATIO = 8


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over all pixels, one head of width C, with 1x1 conv projections."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (p(n).flatten(2).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = attention(q, k, v, 1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right/bottom only) as the original network was trained with.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: a list of resnet blocks plus an optional resampler (named like the keys)."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g = cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, mult in enumerate(cfg.ch_mult):
            cout = cfg.ch * mult
            level = Level([ResnetBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks)])
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
            cin = cout
        self.mid = MidBlock(cin, g)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        g = cfg.norm_groups
        cin = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = MidBlock(cin, g)
        levels: list[Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            cout = cfg.ch * cfg.ch_mult[i]
            level = Level([ResnetBlock(cin if j == 0 else cout, cout, g) for j in range(cfg.num_res_blocks + 1)])
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)  # `up.{i}` is indexed by resolution level, run deepest first
            cin = cout
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Encoder + decoder with the 1x1 quant convs between them and the latent space."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in -1..1 [B,3,H,W] -> posterior mean (= mode of the diagonal Gaussian)."""
        moments = self.quant_conv(self.encoder(x))
        return moments[:, : self.config.embed_dim]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B,embed_dim,h,w] -> pixels roughly in -1..1 [B,out_ch,8h,8w]."""
        return self.decoder(self.post_quant_conv(z))

    def conv_dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype


def check_latent(samples: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise VAEError(f"{what} expects latents [B,C,h,w], got "
                       f"{getattr(samples, 'shape', type(samples).__name__)}")
    if samples.shape[1] != channels:
        raise VAEError(f"{what} expects {channels} latent channels, got {samples.shape[1]} "
                       f"(latent shape {list(samples.shape)})")
    return samples


def pixels_to_image(pixels: torch.Tensor) -> torch.Tensor:
    """Network output [B,3,H,W] in -1..1 -> IMAGE [B,H,W,3] in 0..1."""
    return ((pixels + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def image_to_pixels(image: torch.Tensor, ratio: int, channels: int, what: str) -> torch.Tensor:
    """IMAGE [B,H,W,C] 0..1 -> [B,channels,H',W'] in -1..1, centre-cropped to multiples of `ratio`.

    Extra channels (alpha) are dropped.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise VAEError(f"{what} expects an IMAGE [B,H,W,C], got "
                       f"{getattr(image, 'shape', type(image).__name__)}")
    if image.shape[-1] < channels:
        raise VAEError(f"{what} expects {channels} colour channels, got {image.shape[-1]}")
    h, w = (image.shape[1] // ratio) * ratio, (image.shape[2] // ratio) * ratio
    if h == 0 or w == 0:
        raise VAEError(f"{what} needs an image of at least {ratio}x{ratio} pixels, got "
                       f"{image.shape[2]}x{image.shape[1]}")
    top, left = (image.shape[1] % ratio) // 2, (image.shape[2] % ratio) // 2
    image = image[:, top:top + h, left:left + w, :channels]
    return image.permute(0, 3, 1, 2).float() * 2.0 - 1.0


def inpaint_inputs(pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6,
                   ratio: int = DOWNSCALE_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """VAEEncodeForInpaint's preparation (COMPAT §9): (pixels to encode, noise_mask).

    The mask (1 = repaint) is resized bilinearly to the image, both are centre-cropped to multiples of
    `ratio`, masked pixels become 0.5 grey so the encoder sees no trace of them, and the noise mask is
    the rounded mask grown by a `grow_mask_by`-square box, shape [B,1,H,W].
    """
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        raise VAEError(f"VAEEncodeForInpaint expects pixels as an IMAGE [B,H,W,C], got "
                       f"{getattr(pixels, 'shape', type(pixels).__name__)}")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        raise VAEError(f"VAEEncodeForInpaint expects a MASK [B,H,W] or [H,W], got "
                       f"{getattr(mask, 'shape', type(mask).__name__)}")
    if grow_mask_by < 0:
        raise VAEError(f"VAEEncodeForInpaint grow_mask_by must be >= 0, got {grow_mask_by}")
    _, h, w, _ = pixels.shape
    m = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(), size=(h, w),
                      mode="bilinear")
    hc, wc = h // ratio * ratio, w // ratio * ratio
    top, left = (h % ratio) // 2, (w % ratio) // 2
    pixels = pixels[:, top:top + hc, left:left + wc].float()
    m = m[:, :, top:top + hc, left:left + wc].round()
    keep = (1.0 - m).permute(0, 2, 3, 1)  # [B,H,W,1]
    grey = pixels.clone()
    grey[..., :3] = (pixels[..., :3] - 0.5) * keep + 0.5
    if grow_mask_by == 0:
        grown = m
    else:
        # Box dilation: a window of grow_mask_by pixels, one more before the pixel than after when even.
        pad = grow_mask_by // 2  # = ceil((grow_mask_by - 1) / 2)
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        grown = F.conv2d(m, kernel, padding=pad)[:, :, :hc, :wc].clamp(0, 1)
    return grey, grown.round()


def available_memory(device: torch.device) -> int:
    """Bytes a new allocation may use on `device` now (a seam tests can replace)."""
    return memory.get_free_memory(device)


class VAE:
    """The VAE runtime object the nodes use (docs/contracts.md).

    `decode`/`encode` take and return CPU float32 in the COMPAT §1.6 conventions; samples are in
    unscaled VAE space. Work runs on `device` in `dtype` and falls back to fp32 when a half-precision
    pass produces NaN/inf (the SD VAEs are known to overflow fp16 on some images).
    """

    downscale_ratio = DOWNSCALE_RATIO
    # Tile and overlap in pixels used when a whole-image pass would not fit in memory.
    fallback_tile = (512, 64)

    def __init__(self, model: AutoencoderKL, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None):
        self.device = torch.device(device) if device is not None else memory.get_torch_device()
        self.dtype = dtype if dtype is not None else memory.vae_dtype(self.device)
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.downscale_ratio = model.config.downscale_ratio
        self.latent_channels = model.config.embed_dim
        self._work: tuple[torch.dtype, AutoencoderKL] | None = None

    @classmethod
    def from_state_dict(cls, sd: dict, device=None, dtype=None, norm_groups: int = 32) -> "VAE":
        """Build from original-layout keys (prefix `first_stage_model.` already stripped)."""
        cfg = detect_vae_config(sd, norm_groups=norm_groups)
        if cfg.ch % norm_groups:
            raise VAEError(f"VAE base width {cfg.ch} (encoder.conv_in) is not divisible by "
                           f"norm_groups={norm_groups}")
        with torch.device("meta"):
            model = AutoencoderKL(cfg)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        weights = vae_weights(sd, cfg, expected)
        # assign=True adopts the given tensors (e.g. memory-mapped safetensors) without a second copy.
        model.load_state_dict(weights, strict=True, assign=True)
        model.to(torch.float32)
        return cls(model, device=device, dtype=dtype)

    # ---- placement -------------------------------------------------------------------------------
    def _working_model(self, dtype: torch.dtype) -> AutoencoderKL:
        """The network on `device` in `dtype`; `self.model` stays the untouched float32 master copy.

        A cast copy (not an in-place `.to`) so that falling back to fp32 gets the exact weights back.
        """
        if self.device.type == "cpu" and dtype == self.model.conv_dtype():
            return self.model
        if self._work is None or self._work[0] != dtype:
            with torch.device("meta"):
                work = AutoencoderKL(self.config)
            weights = {k: v.to(self.device, dtype) for k, v in self.model.state_dict().items()}
            work.load_state_dict(weights, assign=True)
            self._work = (dtype, work.eval())
        return self._work[1]

    def _run(self, fn, x: torch.Tensor) -> torch.Tensor:
        """Run `fn(model, x)` in the working dtype; redo in fp32 if half precision overflowed."""
        with torch.inference_mode():
            out = fn(self._working_model(self.dtype), x.to(self.device, self.dtype))
            if self.dtype != torch.float32 and not torch.isfinite(out).all():
                log.warning("VAE produced non-finite values in %s; using float32 from now on", self.dtype)
                self.dtype = torch.float32
                self._work = None
                out = fn(self._working_model(torch.float32), x.to(self.device, torch.float32))
        return out.to("cpu", torch.float32)

    # ---- memory estimate -------------------------------------------------------------------------
    def memory_per_sample(self, height: int, width: int, dtype: torch.dtype | None = None) -> int:
        """Rough peak bytes to decode (or encode) one image of height x width pixels.

        The peak is a few full-size activations at the widest level plus the mid-block attention
        matrix at latent resolution (worst case: a kernel that materialises it).
        """
        cfg = self.config
        elem = torch.finfo(dtype or self.dtype).bits // 8
        widest = 0
        for i, mult in enumerate(cfg.ch_mult):
            deeper = cfg.ch_mult[i + 1] if i + 1 < len(cfg.ch_mult) else mult
            pixels = (height >> i) * (width >> i)
            widest = max(widest, cfg.ch * max(mult, deeper) * pixels)
        tokens = (height // self.downscale_ratio) * (width // self.downscale_ratio)
        return 5 * widest * elem + tokens * tokens * 4

    def _make_room(self, height: int, width: int) -> None:
        """On a GPU, ask the model manager to unload idle models (e.g. the UNet) to fit one image."""
        if self.device.type != "cuda":
            return
        needed = self.memory_per_sample(height, width)
        if self._work is None:
            needed += memory.module_size(self.model) * torch.finfo(self.dtype).bits // 32
        memory.free_memory(needed, self.device)

    def unload(self) -> None:
        """Drop the working copy on the GPU (the float32 master on the CPU stays)."""
        self._work = None
        self._empty_cache()

    def _batch_size(self, n: int, height: int, width: int) -> int:
        per = self.memory_per_sample(height, width)
        return max(1, min(n, int(available_memory(self.device) * 0.8) // max(per, 1)))

    def _fits(self, height: int, width: int) -> bool:
        return self.memory_per_sample(height, width) < available_memory(self.device) * 0.8

    def _batched_or_tiled(self, what: str, x: torch.Tensor, height: int, width: int, net_fn, finish, tiled):
        """`finish(net_fn over x)` in batches that fit in memory; `tiled()` instead when one image of
        height x width pixels does not fit, or when the device runs out of memory on the way."""
        self._make_room(height, width)
        if not self._fits(height, width):
            log.info("VAE %s of %dx%d does not fit in memory; %sing in tiles", what, width, height, what[:-1])
            return tiled()
        step = self._batch_size(x.shape[0], height, width)
        try:
            return finish(torch.cat([self._run(net_fn, chunk) for chunk in x.split(step)]))
        except torch.cuda.OutOfMemoryError:
            log.warning("VAE %s ran out of memory; retrying in tiles", what)
            self._empty_cache()
            return tiled()

    # ---- public API ------------------------------------------------------------------------------
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        """Latents [B,C,h,w] (unscaled) -> IMAGE [B,8h,8w,3] float32 0..1 on CPU."""
        samples = check_latent(samples, self.latent_channels, "VAE decode")
        h, w = samples.shape[2] * self.downscale_ratio, samples.shape[3] * self.downscale_ratio
        return self._batched_or_tiled("decode", samples, h, w, AutoencoderKL.decode, pixels_to_image,
                                      lambda: self.decode_tiled(samples, *self.fallback_tile))

    def decode_tiled(self, samples: torch.Tensor, tile: int = 512, overlap: int = 64,
                     progress=None) -> torch.Tensor:
        """Decode in overlapping tiles of `tile` pixels (VAEDecodeTiled semantics), blending seams."""
        samples = check_latent(samples, self.latent_channels, "VAE decode")
        r = self.downscale_ratio
        tile_l, overlap_l = tiling.tile_params(tile, overlap, r, what="VAE decode tile")
        pixels = tiling.tiled_map(samples, lambda t: self._run(AutoencoderKL.decode, t), tile_l, overlap_l,
                                  up=r, down=1, out_channels=self.config.out_ch, progress=progress)
        return pixels_to_image(pixels)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """IMAGE [B,H,W,C] 0..1 -> latents [B,C,H/8,W/8] (posterior mode, unscaled), float32 CPU."""
        x = image_to_pixels(image, self.downscale_ratio, self.config.in_channels, "VAE encode")
        return self._batched_or_tiled("encode", x, x.shape[2], x.shape[3], AutoencoderKL.encode_mode,
                                      lambda latents: latents, lambda: self.encode_tiled(image, *self.fallback_tile))

    def encode_tiled(self, image: torch.Tensor, tile: int = 512, overlap: int = 64,
                     progress=None) -> torch.Tensor:
        """Encode in overlapping tiles of `tile` pixels (VAEEncodeTiled semantics), blending seams."""
        x = image_to_pixels(image, self.downscale_ratio, self.config.in_channels, "VAE encode")
        r = self.downscale_ratio
        tile_p, overlap_p = tiling.tile_params(tile, overlap, 1, what="VAE encode tile", align=r)
        return tiling.tiled_map(x, lambda t: self._run(AutoencoderKL.encode_mode, t), tile_p, overlap_p,
                                up=1, down=r, out_channels=self.latent_channels, progress=progress)

    def _empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
