"""Multi-head attention kernels shared by the UNet and the VAE.

`attention(q, k, v, heads, mask=None)` takes q [B, Nq, heads*dim_head], k/v [B, Nk, heads*dim_head]
and returns [B, Nq, heads*dim_head]. The backend is chosen once at start-up (`set_backend`) and can be
overridden at any time:
- "sdpa"      torch.nn.functional.scaled_dot_product_attention (default; fused kernels where torch has them)
- "xformers"  xformers.ops.memory_efficient_attention, only when installed and the tensors are on CUDA
              (falls back to sdpa otherwise, so a CPU run with the flag set still works)
- "sliced"    plain softmax attention computed over query chunks, so the score matrix never exceeds
              `SLICE_BYTES`; for very large images on small memory, and as the readable reference.

On CPU, ComfyUI defaults to a chunked (sub-quadratic) kernel; we default to SDPA, which is faster
here and changes only the lowest bits of an image (COMPAT Appendix B). `set_backend("sliced")`
gives the chunked behaviour.

`mask` is a bool tensor (True = attend) or an additive float tensor, broadcastable to
[B, heads, Nq, Nk]; a 3-d mask [B, Nq, Nk] is broadcast over heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "xformers", "sliced")
SLICE_BYTES = 256 * 1024 * 1024  # upper bound on one chunk's score matrix for the sliced backend

_backend = "sdpa"


def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # missing, or installed against another torch build
        return False
    return torch.cuda.is_available()


def available_backends() -> list[str]:
    return [b for b in BACKENDS if b != "xformers" or xformers_available()]


def set_backend(name: str) -> None:
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    return _backend


def attention(q, k, v, heads: int, mask=None, backend: str | None = None):
    name = backend or _backend
    if name == "xformers" and q.is_cuda and xformers_available():
        return _xformers(q, k, v, heads, mask)
    if name == "sliced":
        return _sliced(q, k, v, heads, mask)
    return _sdpa(q, k, v, heads, mask)


def _split_heads(x, heads):
    b, n, c = x.shape
    if c % heads:
        raise ValueError(f"attention width {c} is not divisible by {heads} heads")
    return x.view(b, n, heads, c // heads).transpose(1, 2)  # [B, H, N, D]


def _merge_heads(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _mask_4d(mask, q):
    if mask is None:
        return None
    if mask.ndim == 2:  # [Nq, Nk] -> shared by batch and heads
        mask = mask[None, None]
    elif mask.ndim == 3:  # [B, Nq, Nk] -> shared by heads
        mask = mask[:, None]
    if mask.dtype != torch.bool:
        mask = mask.to(q.dtype)
    return mask


def _sdpa(q, k, v, heads, mask):
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask_4d(mask, q))
    return _merge_heads(out)


def _xformers(q, k, v, heads, mask):
    import xformers.ops as xops

    b, n, c = q.shape
    d = c // heads
    # xformers wants [B, N, H, D]
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d) for t in (q, k, v))
    bias = None
    if mask is not None:
        m = _mask_4d(mask, q)
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=q.dtype, device=q.device).masked_fill(~m, float("-inf"))
        bias = m.expand(b, heads, q.shape[1], k.shape[1]).contiguous()
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias)
    return out.reshape(b, n, c)


def _sliced(q, k, v, heads, mask):
    q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    b, h, nq, d = q.shape
    nk = k.shape[2]
    scale = 1.0 / math.sqrt(d)
    m = _mask_4d(mask, q)
    # Scores are computed in float32 even for half inputs: softmax over thousands of keys loses
    # too much in fp16.
    row_bytes = b * h * nk * 4
    chunk = max(1, min(nq, SLICE_BYTES // max(1, row_bytes)))
    out = torch.empty(b, h, nq, d, dtype=q.dtype, device=q.device)
    k_t = k.float().transpose(-1, -2)
    for start in range(0, nq, chunk):
        end = min(nq, start + chunk)
        scores = torch.matmul(q[:, :, start:end].float(), k_t) * scale
        if m is not None:
            mc = m[..., start:end, :] if m.shape[-2] == nq else m
            if mc.dtype == torch.bool:
                scores = scores.masked_fill(~mc, float("-inf"))
            else:
                scores = scores + mc.float()
        probs = scores.softmax(dim=-1).to(v.dtype)
        out[:, :, start:end] = torch.matmul(probs, v)
        del scores, probs
    return _merge_heads(out)
