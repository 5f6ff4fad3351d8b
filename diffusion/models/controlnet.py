"""ControlNet (Zhang et al. 2023) and the CONTROL_NET value shared by ControlNets and T2I-Adapters.

The network is the UNet's encoder half, built by `unet.build_encoder` from the same `UNetConfig`
(so its input blocks and middle block are the UNet's own module classes and key names), plus what
ControlNet adds in the original "cldm" layout: `input_hint_block` (a small conv stack that brings the
hint image down to the latent size, added after the first input block), one 1x1 `zero_convs.i` per
input block and `middle_block_out`. Its outputs are the residuals the UNet's `control` hook adds.

`Control` is the CONTROL_NET value: a network plus what ControlNetApply(Advanced) sets on a copy
(hint image, strength, start/end percent, the previous control in a chain). During sampling
`residuals(...)` gives the UNet's `control` dict for one batched forward, as ComfyUI's
`comfy/controlnet.py` does: {"output": [one per input block], "middle": [one]} for a ControlNet,
{"input": [...], "middle": [...]} for a T2I-Adapter, each scaled by its strength, and the previous
control's residuals added entry by entry.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from diffusion import memory
from diffusion.loading.config import UNetConfig
from diffusion.models.unet import Conv2d, TimestepBlock, build_encoder, timestep_embedding
from diffusion.resample import resize

# input_hint_block: conv widths of the released ControlNets (fixed by the architecture); strides 2
# after the 16-, 32- and 96-channel stages bring pixels to the latent size (8x smaller).
HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)
HINT_RESIZE = "nearest-exact"  # ComfyUI's ControlBase.upscale_algorithm, with a centre crop


def _hint_block(hint_channels: int, model_channels: int) -> TimestepBlock:
    layers, ch = [], hint_channels
    for width, stride in zip(HINT_WIDTHS, HINT_STRIDES):
        layers += [Conv2d(ch, width, 3, stride=stride, padding=1), nn.SiLU()]
        ch = width
    layers.append(Conv2d(ch, model_channels, 3, padding=1))
    return TimestepBlock(*layers)


class ControlNetModel(nn.Module):
    """The ControlNet network for a UNet config; `forward` returns the UNet's control residuals."""

    def __init__(self, config: UNetConfig, hint_channels: int = 3):
        super().__init__()
        self.config = config
        self.hint_channels = hint_channels
        self.time_embed, label_emb, self.input_blocks, self.middle_block, widths = build_encoder(config)
        if label_emb is not None:
            self.label_emb = label_emb
        self.zero_convs = nn.ModuleList(TimestepBlock(Conv2d(w, w, 1)) for w in widths)
        self.input_hint_block = _hint_block(hint_channels, config.model_channels)
        self.middle_block_out = TimestepBlock(Conv2d(widths[-1], widths[-1], 1))

    @property
    def dtype(self) -> torch.dtype:
        return self.input_hint_block[0].weight.dtype

    def forward(self, x, hint, timesteps, context, y=None, transformer_options=None) -> dict:
        cfg = self.config
        if (y is None) != (cfg.adm_in_channels is None):
            raise ValueError(f"{cfg.arch} ControlNet: y (pooled/size conditioning) must be "
                             f"{'given' if cfg.adm_in_channels else 'None'}")
        dtype = self.dtype
        options = transformer_options or {}
        x, context, hint = x.to(dtype), context.to(dtype), hint.to(dtype)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(dtype))
        guided_hint = self.input_hint_block(hint, emb, context, options)
        if y is not None:  # as cldm: the hint block sees the time embedding alone
            emb = emb + self.label_emb(y.to(dtype))

        outputs = []
        h = x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context, options)
            if i == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h, emb, context, options))
        h = self.middle_block(h, emb, context, options)
        return {"output": outputs, "middle": [self.middle_block_out(h, emb, context, options)]}


def broadcast_hint(hint: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """The hint for a forward of `batch` rows made of `batched_number` conditionings side by side
    (ComfyUI's broadcast_image_to): each conditioning's rows get the hint's first items, cycled."""
    if hint.shape[0] == 1 or hint.shape[0] == batch:
        return hint
    per = batch // batched_number
    one = hint[:per]
    if per > one.shape[0]:
        one = torch.cat([one] * (per // one.shape[0]) + [one[:per % one.shape[0]]], dim=0)
    return one if one.shape[0] == batch else torch.cat([one] * batched_number, dim=0)


def merge_residuals(own: dict, strength: float, previous: dict | None) -> dict:
    """`own` scaled by `strength`, plus the previous control's residuals entry by entry (a missing
    or None entry on either side takes the other's)."""
    out = {}
    for key in ("input", "middle", "output"):
        values = [None if v is None else v * strength for v in own.get(key) or []]
        for i, prev in enumerate((previous or {}).get(key) or []):
            if i >= len(values):
                values.append(prev)
            elif prev is not None:
                values[i] = prev if values[i] is None else values[i] + prev
        out[key] = values
    return out


class Control:
    """CONTROL_NET: a control network and, on copies made by the apply nodes, its hint and settings.

    Subclasses say how the residuals are computed (`_compute`) and how big the hint must be.
    The network is held by a ModelPatcher (`patcher`) so diffusion.memory moves it like the UNet.
    """

    compression_ratio = 8  # pixels per latent pixel the hint is resized to

    def __init__(self, patcher):
        self.patcher = patcher
        self.hint = None            # IMAGE as [B, C, H, W]
        self.strength = 1.0
        self.percent_range = (0.0, 1.0)
        self.previous = None

    @property
    def network(self):
        return self.patcher.model

    def copy(self) -> "Control":
        return copy.copy(self)

    def with_hint(self, hint: torch.Tensor, strength: float, percent_range=(0.0, 1.0), previous=None) -> "Control":
        """A copy carrying the hint ([B, C, H, W]), strength, percent range and previous control."""
        if previous is not None and not isinstance(previous, Control):
            raise TypeError(f"previous control must be a CONTROL_NET, got {type(previous).__name__}")
        c = self.copy()
        c.hint, c.strength, c.percent_range, c.previous = hint, float(strength), tuple(percent_range), previous
        return c

    def chain(self) -> list["Control"]:
        """This control and its previous ones, newest first."""
        out, c = [], self
        while c is not None:
            out.append(c)
            c = c.previous
        return out

    def check_hint(self, hint: torch.Tensor) -> None:
        """Raise ValueError for a hint [B, C, H, W] the network cannot read."""
        want = self.network.hint_channels
        if hint.ndim != 4 or hint.shape[1] != want:
            raise ValueError(f"the hint image has {hint.shape[1] if hint.ndim == 4 else '?'} channels; "
                             f"this {type(self).__name__} reads {want}")

    def hint_size(self, x: torch.Tensor) -> tuple[int, int]:
        """(width, height) the hint is resized to for a latent batch `x`."""
        return x.shape[3] * self.compression_ratio, x.shape[2] * self.compression_ratio

    def prepared_hint(self, x: torch.Tensor, dtype, cache: dict) -> torch.Tensor:
        """The hint resized (centre crop, nearest-exact) to `x`'s pixel size, once per run and size."""
        width, height = self.hint_size(x)
        key = ("hint", id(self), width, height, x.device, dtype)
        if key not in cache:
            cache[key] = resize(self.hint.float(), width, height, HINT_RESIZE, "center").to(x.device, dtype)
        return cache[key]

    def residuals(self, x, sigma, model_sampling, context, y, batched_number: int, cache: dict) -> dict | None:
        """The UNet's control dict for one forward: x [N, C, h, w] in sampler space, sigma [N],
        context [N, tokens, dim], y [N, adm] or None, N = batched_number conditionings x batch."""
        previous = None
        if self.previous is not None:
            previous = self.previous.residuals(x, sigma, model_sampling, context, y, batched_number, cache)
        s = float(sigma.reshape(-1)[0])
        start, end = (model_sampling.percent_to_sigma(p) for p in self.percent_range)
        if not end <= s <= start:
            return previous
        if self.hint is None:
            raise ValueError("this CONTROL_NET has no hint image; apply it with ControlNetApplyAdvanced")
        memory.load_models([self.patcher])
        own = self._compute(x, sigma, model_sampling, context, y, batched_number, cache)
        return merge_residuals(own, self.strength, previous)

    def _compute(self, x, sigma, model_sampling, context, y, batched_number, cache) -> dict:
        raise NotImplementedError


class ControlNet(Control):
    """A ControlNet: evaluated on every forward with the UNet's own input, timestep and context."""

    def __init__(self, patcher, global_average_pooling: bool = False):
        super().__init__(patcher)
        # "shuffle" ControlNets were trained to see each residual averaged over the image
        self.global_average_pooling = global_average_pooling

    def _compute(self, x, sigma, model_sampling, context, y, batched_number, cache) -> dict:
        net = self.network
        device, dtype = self.patcher.load_device, net.dtype
        hint = broadcast_hint(self.prepared_hint(x, dtype, cache), x.shape[0], batched_number).to(device)
        if net.config.adm_in_channels is None:
            y = None  # an SD1/SD2 ControlNet under an SDXL-style conditioning has no label input
        with torch.inference_mode():
            out = net(model_sampling.calculate_input(sigma, x).to(device), hint,
                      model_sampling.timestep(sigma.cpu()).float().to(device), context.to(device),
                      y=None if y is None else y.to(device))
        if self.global_average_pooling:
            out = {k: [v.mean(dim=(2, 3), keepdim=True).expand_as(v) for v in vs] for k, vs in out.items()}
        return {k: [v.to(x.dtype) for v in vs] for k, vs in out.items()}
