"""T2I-Adapter (Mou et al. 2023): a small network that turns a hint image into features added to
the UNet's input blocks, computed once per hint (it sees neither the latent nor the timestep).

Three variants, in the original TencentARC key layout (`conv_in`, `body.N.*`) that ComfyUI loads:
- full (SD1/SD2): pixel-unshuffle by 8, `conv_in`, then per level `num_res_blocks` ResnetBlocks (the
  first of a level > 0 halves the size, by average pooling or a strided conv, and changes width by
  its `in_conv`); one feature per level, added after the UNet's input blocks 2, 5, 8 and 11.
- full XL (SDXL): pixel-unshuffle by 16 and only level 2 halves the size; features after input
  blocks 3, 5 and 8, and the last one after the middle block.
- light: per level an "extractor" (1x1 in, ResnetBlocks at a quarter of the width, 1x1 out), each
  level > 0 halving the size by average pooling; placed like the full variant.
The placement (which input block gets which level) is ComfyUI's, fixed for released UNets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusion.models.controlnet import Control, broadcast_hint


@dataclass(frozen=True)
class T2IAdapterConfig:
    kind: str                      # "full" | "light"
    in_channels: int               # after pixel unshuffle: hint channels x unshuffle**2
    channels: tuple[int, ...]      # width of each level's feature
    num_res_blocks: int
    ksize: int = 3                 # full: kernel of block2 / in_conv / skep
    skip_conv: bool = False        # full: every block has a `skep` conv (the original sk=False)
    down_conv: bool = False        # full: levels shrink by a strided conv (`down_opt.op`), else avg pool
    xl: bool = False

    @property
    def unshuffle(self) -> int:
        return 16 if self.xl else 8

    @property
    def hint_channels(self) -> int:
        return self.in_channels // (self.unshuffle * self.unshuffle)

    def level_changes(self, level: int) -> tuple[bool, bool]:
        """(halves the size, changes the width) for the first block of `level`."""
        if self.xl:
            return level == 2, level in (1, 2)
        return level > 0, level > 0


def _avg_down(x: torch.Tensor) -> torch.Tensor:
    # the original pads odd sizes by one on each side (count_include_pad), so 9 -> 5
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))


class ResnetBlock(nn.Module):
    def __init__(self, in_c: int, out_c: int, down: bool, cfg: T2IAdapterConfig):
        super().__init__()
        pad = cfg.ksize // 2
        self.down = down
        if down and cfg.down_conv:
            self.down_opt = nn.Module()
            self.down_opt.op = nn.Conv2d(in_c, in_c, 3, stride=2, padding=1)
        self.in_conv = nn.Conv2d(in_c, out_c, cfg.ksize, 1, pad) if (in_c != out_c or cfg.skip_conv) else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.block2 = nn.Conv2d(out_c, out_c, cfg.ksize, 1, pad)
        self.skep = nn.Conv2d(in_c, out_c, cfg.ksize, 1, pad) if cfg.skip_conv else None

    def forward(self, x):
        if self.down:
            x = self.down_opt.op(x) if hasattr(self, "down_opt") else _avg_down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        h = self.block2(F.relu(self.block1(x)))
        return h + (self.skep(x) if self.skep is not None else x)


class LightResnetBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block1 = nn.Conv2d(c, c, 3, 1, 1)
        self.block2 = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x):
        return self.block2(F.relu(self.block1(x))) + x


class Extractor(nn.Module):
    def __init__(self, in_c: int, out_c: int, num_res_blocks: int, down: bool):
        super().__init__()
        inter = out_c // 4
        self.down = down
        self.in_conv = nn.Conv2d(in_c, inter, 1)
        self.body = nn.Sequential(*[LightResnetBlock(inter) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(inter, out_c, 1)

    def forward(self, x):
        if self.down:
            x = _avg_down(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapterModel(nn.Module):
    """The adapter network; `forward(hint)` returns one feature per level."""

    def __init__(self, config: T2IAdapterConfig):
        super().__init__()
        self.config = cfg = config
        self.hint_channels = cfg.hint_channels
        ch = cfg.channels
        if cfg.kind == "light":
            self.body = nn.ModuleList(
                Extractor(cfg.in_channels if i == 0 else ch[i - 1], ch[i], cfg.num_res_blocks, down=i > 0)
                for i in range(len(ch)))
            return
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, 1, 1)
        blocks = []
        for level in range(len(ch)):
            down, widen = cfg.level_changes(level)
            for j in range(cfg.num_res_blocks):
                first = j == 0 and widen
                blocks.append(ResnetBlock(ch[level - 1] if first else ch[level], ch[level], down and j == 0, cfg))
        self.body = nn.ModuleList(blocks)

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        cfg = self.config
        x = F.pixel_unshuffle(hint, cfg.unshuffle)
        if cfg.kind == "light":
            features = []
            for block in self.body:
                x = block(x)
                features.append(x)
            return features
        x = self.conv_in(x)
        features = []
        for level in range(len(cfg.channels)):
            for j in range(cfg.num_res_blocks):
                x = self.body[level * cfg.num_res_blocks + j](x)
            features.append(x)
        return features


# Input blocks each level's feature follows, and the length of the None-padded list (ComfyUI's
# layout, whose positions are the UNet's input blocks; chained controls add up position by
# position). XL: the last feature goes after the middle block instead.
FEATURE_BLOCKS, FEATURE_SLOTS = (2, 5, 8, 11), 12
FEATURE_BLOCKS_XL, FEATURE_SLOTS_XL = (3, 5, 8), 10


def unet_control(features: list[torch.Tensor], xl: bool) -> dict:
    """The UNet's control dict for adapter features: "input" in the hook's pop-from-the-end order."""
    blocks, slots = (FEATURE_BLOCKS_XL, FEATURE_SLOTS_XL) if xl else (FEATURE_BLOCKS, FEATURE_SLOTS)
    placed = [None] * slots
    for block, feature in zip(blocks, features):
        placed[block] = feature
    middle = features[len(blocks):len(blocks) + 1] if xl else []
    return {"input": placed[::-1], "middle": middle}


class T2IAdapter(Control):
    """CONTROL_NET for a T2I-Adapter. Its features depend on the hint only: computed once per run,
    hint size and batch, then scaled by the strength on every forward inside the percent range."""

    def check_hint(self, hint):
        if self.network.config.hint_channels != 1:  # one-channel adapters average the colours
            super().check_hint(hint)

    def hint_size(self, x):
        m = self.network.config.unshuffle
        width, height = super().hint_size(x)
        return math.ceil(width / m) * m, math.ceil(height / m) * m

    def _compute(self, x, sigma, model_sampling, context, y, batched_number, cache) -> dict:
        net = self.network
        key = ("t2i", id(self), *self.hint_size(x), x.shape[0], batched_number, x.device)
        if key not in cache:
            hint = self.prepared_hint(x, torch.float32, cache)
            if net.config.hint_channels == 1 and hint.shape[1] > 1:
                hint = hint.mean(dim=1, keepdim=True)  # depth/sketch adapters read one channel
            hint = broadcast_hint(hint, x.shape[0], batched_number)
            device = self.patcher.load_device
            with torch.inference_mode():
                features = net(hint.to(device, next(net.parameters()).dtype))
            cache[key] = unet_control([f.to(x.device, x.dtype) for f in features], net.config.xl)
        return cache[key]
