"""The Stable Diffusion UNet (SD1, SD2, SDXL, SDXL refiner), built from a `UNetConfig`.

Module names follow the original CompVis/SGM single-file layout (`input_blocks.1.1.transformer_blocks
.0.attn1.to_q.weight`, `middle_block`, `output_blocks`, `time_embed`, `label_emb`, `out`), so a
checkpoint's `model.diffusion_model.*` tensors load with the prefix stripped and nothing renamed.

Hooks:
- `control`: ControlNet-style residuals, a dict with optional lists "input" (added to the output of
  input block i, popped from the end), "middle" (added after the middle block) and "output" (added to
  the skip connection each output block consumes). Entries may be None.
- `transformer_options`: a dict passed down to every block, with ComfyUI's patch points and names
  (plugin packs and diffusion/model_patches/ use them; see docs/runtime.md "UNet patch points"):
  "patches" -> {"input_block_patch", "input_block_patch_after_skip", "middle_block_patch":
  [fn(h, options) -> h]; "output_block_patch": [fn(h, skip, options) -> (h, skip)];
  "attn1_patch"/"attn2_patch": [fn(n, context, value, extra) -> (n, context, value)] before the
  projections; "attn1_output_patch"/"attn2_output_patch": [fn(out, extra) -> out]; "middle_patch":
  [fn(x, extra) -> x] after self-attention (GLIGEN)}, and "patches_replace" -> {"attn1"/"attn2":
  {(block, id[, index]): fn(q, k, v, extra) -> attention output}}. The forward fills in "block"
  (name, id), "block_index", "transformer_index" and "original_shape"; the caller adds "sigmas" and
  "cond_or_uncond". Without patches the forward is the plain one, bit for bit.
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from diffusion import memory
from diffusion.models.attention import attention
from diffusion.loading.config import UNetConfig


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim]: cos of the frequencies first, then sin (the SD convention)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


# Low-resolution convolutions (SD1.5's 1280-channel layers at 4x4 or 8x8) are dominated on CPU by
# oneDNN re-laying out the weight on every call; there a weight reordered once is reused. The
# result differs from the plain kernel only in float rounding (another summation order, ~1e-6
# relative). `set_conv_prepack(False)` restores plain F.conv2d everywhere.
# A packed weight is a second copy. A memory-mapped original leaves RSS once packed (page_out);
# one in ordinary memory (e.g. cast from an fp16 file) stays, so such packs share a budget.
_prepack = {"enabled": True, "resident_bytes": 0}
PREPACK_MIN_WEIGHT_PER_POSITION = 128  # pack when in_channels*k*k >= this * output positions
PREPACK_RESIDENT_BUDGET = 512 << 20  # bytes of packs whose original cannot leave memory
_HAS_PACKED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_conv_prepack(enabled: bool) -> None:
    """Turn the CPU oneDNN paths of `Conv2d` (packed weights) and `Linear` (fused bias) on or off."""
    _prepack["enabled"] = bool(enabled)


def _cpu_inference_float32(x, w) -> bool:
    return (_prepack["enabled"] and x.device.type == "cpu" and x.dtype == torch.float32
            and w.dtype == torch.float32 and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))


class Linear(nn.Linear):
    """nn.Linear (same parameters and state dict) that on CPU float32 without autograd calls oneDNN's
    matmul with the bias fused: F.linear's addmm first copies the broadcast bias into the output
    and then accumulates onto it, an extra pass over the largest activations of the UNet. Same
    weights, no packing (no extra memory); results equal F.linear up to float rounding."""

    def forward(self, x):
        if _HAS_ONEDNN_LINEAR and x.ndim >= 2 and _cpu_inference_float32(x, self.weight):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters and state dict) that on CPU float32, without autograd, runs
    convolutions with few output positions per weight element through a weight packed once for
    oneDNN. The pack is rebuilt whenever the weight is replaced, moved or modified in place."""

    # (weak ref to the weight, its (data_ptr, version), packed weight or None when declined, bytes
    # counted against the resident budget); not a buffer, so state dicts are unchanged
    _packed = None

    def _use_packed(self, x) -> bool:
        if not (_HAS_PACKED_CONV and x.ndim == 4 and self.padding_mode == "zeros"
                and isinstance(self.padding, tuple) and _cpu_inference_float32(x, self.weight)):
            return False
        kh, kw = self.kernel_size
        out_h = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        positions = x.shape[0] * max(out_h, 1) * max(out_w, 1)
        return self.in_channels // self.groups * kh * kw >= PREPACK_MIN_WEIGHT_PER_POSITION * positions

    def _packed_weight(self, x):
        """The packed weight for the current `self.weight`, or None where the budget declines it."""
        w = self.weight
        # A weak reference, so a replaced weight is neither kept alive nor mistaken for its successor.
        key = (w.data_ptr(), w._version)
        cached = self._packed
        if cached is not None and cached[0]() is w and cached[1] == key:
            return cached[2]
        if cached is not None:
            _prepack["resident_bytes"] -= cached[3]
        self._packed = None
        nbytes = w.numel() * w.element_size()
        mapped = memory.is_file_backed(w)
        if not mapped and _prepack["resident_bytes"] + nbytes > PREPACK_RESIDENT_BUDGET:
            self._packed = (weakref.ref(w), key, None, 0)
            return None
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
            w.detach().contiguous().to_mkldnn(), list(self.padding), list(self.stride),
            list(self.dilation), self.groups, list(x.shape))
        if mapped:
            # The plain weight is now only read for larger inputs or state dicts: let the clean
            # pages of the memory-mapped checkpoint leave RSS (re-read from the file on demand).
            memory.page_out(w)
        resident = 0 if mapped else nbytes
        _prepack["resident_bytes"] += resident
        self._packed = (weakref.ref(w), key, packed, resident)
        return packed

    def forward(self, x):
        packed = self._packed_weight(x) if self._use_packed(x) else None
        if packed is None:
            return super().forward(x)
        out = torch.ops.mkldnn._convolution_pointwise(
            x.contiguous(), packed, self.bias, list(self.padding), list(self.stride),
            list(self.dilation), self.groups, "none", [], "")
        return out.contiguous()  # oneDNN answers channels-last; keep the layout the next layers expect


def _norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if channels == out_channels
                                else Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        h = self.in_layers(x)  # a fresh tensor, so the add can write into it
        h += self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        # `size` is the next skip connection's spatial size, so odd latent sizes round-trip.
        x = F.interpolate(x, size=size, mode="nearest") if size else F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = Linear(query_dim, inner, bias=False)
        self.to_k = Linear(context_dim, inner, bias=False)
        self.to_v = Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x, context=None, value=None):
        context = x if context is None else context
        value = context if value is None else value
        return self.to_out(attention(self.to_q(x), self.to_k(context), self.to_v(value), self.heads))

    def replaced(self, fn, x, context, value, extra):
        """A `patches_replace` entry computes the attention itself from the projected q, k, v."""
        context = x if context is None else context
        value = context if value is None else value
        return self.to_out(fn(self.to_q(x), self.to_k(context), self.to_v(value), extra))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return F.gelu(gate).mul_(x)  # into gelu's fresh output: one activation-sized buffer less


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(0.0), Linear(inner, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x, context, transformer_options):
        patches = transformer_options.get("patches") or {}
        replace = transformer_options.get("patches_replace") or {}
        if not patches and not replace:
            x = x + self.attn1(self.norm1(x))
            x = x + self.attn2(self.norm2(x), context)
            return x + self.ff(self.norm3(x))
        extra = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        extra.update(n_heads=self.attn1.heads, dim_head=self.attn1.to_q.out_features // self.attn1.heads,
                     attn_precision=None)
        block = transformer_options.get("block")
        where = None if block is None else (block[0], block[1], transformer_options.get("block_index", 0))
        x = x + self._attention(self.attn1, "attn1", self.norm1(x), None, patches, replace, where, block, extra)
        for fn in patches.get("middle_patch", ()):
            x = fn(x, extra)
        x = x + self._attention(self.attn2, "attn2", self.norm2(x), context, patches, replace, where, block, extra)
        return x + self.ff(self.norm3(x))

    @staticmethod
    def _attention(attn, which, n, context, patches, replace, where, block, extra):
        """One attention with ComfyUI's patch points: `<which>_patch` on the inputs, a
        `patches_replace[which]` entry for this (block, id, index) or (block, id), then
        `<which>_output_patch` on the result."""
        value = None
        if patches.get(which + "_patch"):
            context = n if context is None else context
            value = context
            for fn in patches[which + "_patch"]:
                n, context, value = fn(n, context, value, extra)
        table = replace.get(which) or {}
        fn = table.get(where, table.get(block)) if table else None
        out = attn.replaced(fn, n, context, value, extra) if fn is not None else attn(n, context, value)
        for fn in patches.get(which + "_output_patch", ()):
            out = fn(out, extra)
        return out


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = _norm(channels, eps=1e-6)
        if use_linear:
            self.proj_in = Linear(channels, inner)
            self.proj_out = Linear(inner, channels)
        else:
            self.proj_in = Conv2d(channels, inner, 1)
            self.proj_out = Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))

    def forward(self, x, context, transformer_options):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        # Token-major and contiguous: the linear layers and residual adds inside run faster on it.
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.use_linear:
            x = self.proj_in(x)
        for i, block in enumerate(self.transformer_blocks):
            transformer_options["block_index"] = i
            x = block(x, context, transformer_options)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class TimestepBlock(nn.Sequential):
    """A sequence of layers where each gets what it needs: time embedding, context, or neither."""

    def forward(self, x, emb, context, transformer_options, output_size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, transformer_options)
                # which spatial transformer of the UNet this was (GLIGEN keeps one fuser per transformer)
                transformer_options["transformer_index"] = transformer_options.get("transformer_index", 0) + 1
            elif isinstance(layer, Upsample):
                x = layer(x, output_size)
            else:
                x = layer(x)
        return x


def build_encoder(cfg: UNetConfig):
    """The UNet's encoder half, shared with ControlNets (diffusion/models/controlnet.py): time
    embedding, label embedding (None without ADM input), input blocks, middle block, and the width
    of every input block's output in order (what each skip connection / zero conv carries)."""
    mc, ted = cfg.model_channels, cfg.time_embed_dim
    time_embed = nn.Sequential(Linear(mc, ted), nn.SiLU(), Linear(ted, ted))
    label_emb = None
    if cfg.adm_in_channels is not None:
        label_emb = nn.Sequential(nn.Sequential(Linear(cfg.adm_in_channels, ted), nn.SiLU(), Linear(ted, ted)))

    input_blocks = nn.ModuleList([TimestepBlock(Conv2d(cfg.in_channels, mc, 3, padding=1))])
    widths = [mc]
    ch = mc
    depth_in = iter(cfg.transformer_depth)
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks[level]):
            layers = [ResBlock(ch, ted, mult * mc)]
            ch = mult * mc
            depth = next(depth_in)
            if depth:
                layers.append(_transformer(cfg, ch, depth))
            input_blocks.append(TimestepBlock(*layers))
            widths.append(ch)
        if level != len(cfg.channel_mult) - 1:
            input_blocks.append(TimestepBlock(Downsample(ch)))
            widths.append(ch)

    middle = [ResBlock(ch, ted, ch)]
    if cfg.transformer_depth_middle >= 0:
        middle += [_transformer(cfg, ch, cfg.transformer_depth_middle), ResBlock(ch, ted, ch)]
    return time_embed, label_emb, input_blocks, TimestepBlock(*middle), widths


def _transformer(cfg: UNetConfig, ch: int, depth: int) -> SpatialTransformer:
    heads, dim_head = cfg.heads_for(ch)
    return SpatialTransformer(ch, heads, dim_head, depth, cfg.context_dim, cfg.use_linear_in_transformer)


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.time_embed, label_emb, self.input_blocks, self.middle_block, skip_channels = build_encoder(cfg)
        if label_emb is not None:
            self.label_emb = label_emb
        ch = skip_channels[-1]

        self.output_blocks = nn.ModuleList()
        depth_out = iter(cfg.transformer_depth_output)
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), ted, mc * mult)]
                ch = mc * mult
                depth = next(depth_out)
                if depth:
                    layers.append(_transformer(cfg, ch, depth))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(*layers))

        self.out = nn.Sequential(_norm(ch), nn.SiLU(), Conv2d(mc, cfg.out_channels, 3, padding=1))

    @property
    def dtype(self) -> torch.dtype:
        # compute_dtype: set where weights are stored in another dtype (diffusion/models/weight_cast.py)
        return getattr(self, "compute_dtype", None) or self.out[2].weight.dtype

    def forward(self, x, timesteps, context, y=None, transformer_options=None, control=None):
        cfg = self.config
        if (y is None) != (cfg.adm_in_channels is None):
            raise ValueError(f"{cfg.arch} UNet: y (pooled/size conditioning) must be "
                             f"{'given' if cfg.adm_in_channels else 'None'}")
        out_dtype = x.dtype
        dtype = self.dtype
        # a copy: the forward writes where it is (block, indices) into it for the patches to read
        transformer_options = dict(transformer_options or {})
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        patches = transformer_options.get("patches") or {}
        x, context = x.to(dtype), context.to(dtype)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])

        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y.to(dtype))

        control = control or {}
        ctrl_in = list(control.get("input") or [])
        ctrl_out = list(control.get("output") or [])

        hs = []
        h = x
        for i, block in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", i)
            h = block(h, emb, context, transformer_options)
            if ctrl_in:
                c = ctrl_in.pop()
                if c is not None:
                    h = h + c.to(h.dtype)
            for fn in patches.get("input_block_patch", ()):
                h = fn(h, transformer_options)
            hs.append(h)
            for fn in patches.get("input_block_patch_after_skip", ()):
                h = fn(h, transformer_options)

        transformer_options["block"] = ("middle", 0)
        h = self.middle_block(h, emb, context, transformer_options)
        for c in control.get("middle") or []:
            if c is not None:
                h = h + c.to(h.dtype)
        for fn in patches.get("middle_block_patch", ()):
            h = fn(h, transformer_options)

        for i, block in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", i)
            skip = hs.pop()
            if ctrl_out:
                c = ctrl_out.pop()
                if c is not None:
                    skip = skip + c.to(skip.dtype)
            for fn in patches.get("output_block_patch", ()):
                h, skip = fn(h, skip, transformer_options)
            h = torch.cat([h, skip], dim=1)
            h = block(h, emb, context, transformer_options, hs[-1].shape[-2:] if hs else None)

        return self.out(h).to(out_dtype)
