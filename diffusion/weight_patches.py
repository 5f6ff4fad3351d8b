"""Weight-patch maths: what a patched weight becomes (the patch kinds ModelPatcher.add_patches takes,
described in diffusion/model_patcher.py's docstring). Pure functions of tensors; the patcher decides
when to apply them and keeps the base weights."""
from __future__ import annotations

import torch


def apply_patches(key: str, weight: torch.Tensor, plist) -> torch.Tensor:
    """Base weight plus its patches, computed in float32 and returned in the weight's dtype."""
    return patched_float(key, weight, plist).to(weight.dtype)


def patched_float(key: str, weight: torch.Tensor, plist) -> torch.Tensor:
    """`weight` with the patches of `plist` [(strength_patch, value, strength_model)] applied, float32.
    Always a new tensor: the base weight is never written to."""
    w = weight.to(torch.float32, copy=True)
    for strength_patch, value, strength_model in plist:
        if strength_model != 1.0:
            w.mul_(strength_model)
        w = _add_patch(key, w, value, float(strength_patch))
    return w


def patch_error(key: str, value, shape) -> str | None:
    """Why `value` cannot patch a weight of `shape`, or None if it can (worked out on the meta device,
    so nothing is computed)."""
    try:
        _add_patch(key, torch.empty(tuple(shape), device="meta"), value, 1.0)
    except (ValueError, RuntimeError, NotImplementedError, IndexError) as e:
        return str(e)
    return None


def _kind(key, value):
    """(kind, data) of a patch value in any of the accepted layouts."""
    if isinstance(value, torch.Tensor):
        return "diff", value
    if isinstance(value, list):  # another model's weight and patches (merging)
        return "merge", value
    if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], torch.Tensor):
        return "diff", value[0]
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        kind, data = value
        if kind in ("diff", "set") and isinstance(data, (tuple, list)):
            data = data[0]
        return kind, data
    raise ValueError(f"patch for {key}: unsupported value {type(value).__name__}")


def _add_patch(key: str, w: torch.Tensor, value, strength: float) -> torch.Tensor:
    kind, data = _kind(key, value)
    if kind == "merge":
        (base, *_), *patches = data
        kind, data = "diff", patched_float(key, base.to(w.device), patches)
    if kind == "set":
        return _same_shape(key, data, w).to(w.device, torch.float32).clone()
    if kind == "diff":
        if strength != 0.0:
            w.add_(_same_shape(key, data, w).to(w.device, torch.float32), alpha=strength)
        return w
    if kind == "slice":
        return w.add_(_slice_delta(key, data, w), alpha=strength)
    delta, dora_scale = adapter_delta(key, kind, data, w.shape, w.device)
    if dora_scale is not None:
        return _dora(w, delta, dora_scale.to(w.device, torch.float32), strength)
    return w.add_(delta, alpha=strength)


def _same_shape(key, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if tuple(t.shape) != tuple(w.shape):
        raise ValueError(f"patch for {key}: shape {tuple(t.shape)} != weight {tuple(w.shape)}")
    return t


def _f32(t, device):
    return None if t is None else t.to(device, torch.float32)


def _scale(alpha, rank: int) -> float:
    return float(alpha) / rank if alpha is not None else 1.0


def _low_rank(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """a @ b, or with a Tucker core t [r, r, kh, kw] (LyCORIS conv layers; a is then [r, out]):
    out[p, q, k, l] = Σ t[i, j, k, l] · b[j, q] · a[i, p]."""
    if t is None:
        return a.flatten(1) @ b.flatten(1)
    return torch.einsum("ijkl,jq,ip->pqkl", t, b.flatten(1), a.flatten(1))


def adapter_delta(key: str, kind: str, data, shape, device="cpu"):
    """(delta reshaped to `shape`, already scaled by alpha / rank; dora_scale or None) of a LoRA-family
    patch."""
    if kind == "lora":
        up, down, alpha, mid, dora = (list(data) + [None] * 5)[:5]
        up, down, mid = _f32(up, device), _f32(down, device), _f32(mid, device)
        if mid is None:
            delta = up.flatten(1) @ down.flatten(1)
        else:  # LoCon: up [out, r, 1, 1] · mid [r, r, kh, kw] · down [r, in, 1, 1]
            delta = torch.einsum("oa,abkl,bi->oikl", up.flatten(1), mid, down.flatten(1))
        scale = _scale(alpha, down.shape[0])
    elif kind == "loha":
        w1a, w1b, alpha, w2a, w2b, t1, t2, dora = (list(data) + [None] * 8)[:8]
        m1 = _low_rank(_f32(w1a, device), _f32(w1b, device), _f32(t1, device))
        m2 = _low_rank(_f32(w2a, device), _f32(w2b, device), _f32(t2, device))
        delta, scale = m1 * m2, _scale(alpha, w1b.shape[0])
    elif kind == "lokr":
        w1, w2, alpha, w1a, w1b, w2a, w2b, t2, dora = (list(data) + [None] * 9)[:9]
        rank = None
        if w1 is None:
            w1, rank = _low_rank(_f32(w1a, device), _f32(w1b, device), None), w1b.shape[0]
        if w2 is None:
            w2, rank = _low_rank(_f32(w2a, device), _f32(w2b, device), _f32(t2, device)), w2b.shape[0]
        w1, w2 = _f32(w1, device), _f32(w2, device)
        if w2.dim() == 4 and w1.dim() == 2:  # conv: the small factor spans channels only
            w1 = w1[:, :, None, None]
        delta = torch.kron(w1, w2)
        scale = _scale(alpha, rank) if rank is not None else 1.0
    else:
        raise ValueError(f"patch for {key}: unknown patch kind {kind!r}")
    if delta.numel() != _numel(shape):
        raise ValueError(f"patch for {key}: {kind} makes {tuple(delta.shape)}, the weight is {tuple(shape)}")
    return delta.reshape(shape) * scale, dora


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _dora(w: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor, strength: float) -> torch.Tensor:
    """DoRA: the patched weight rescaled so each channel's norm is `dora_scale`'s, blended by strength."""
    calc = w + delta
    out_dim = w.shape[0]
    if dora_scale.numel() == out_dim and dora_scale.shape[0] == out_dim and out_dim != 1:
        norm = calc.reshape(out_dim, -1).norm(dim=1).reshape(out_dim, *[1] * (w.dim() - 1))
    else:  # per input channel, ComfyUI's weight_decompose
        norm = calc.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
        norm = norm.reshape(1, w.shape[1], *[1] * (w.dim() - 2))
    calc = calc * (dora_scale.reshape(norm.shape) / norm)
    if strength == 1.0:
        return calc
    return w.add_(calc - w, alpha=strength)


def _slice_delta(key: str, data, w: torch.Tensor) -> torch.Tensor:
    """Row block of the delta a patch makes on a stacked (or transposed) file weight."""
    value, index, count, transposed = data
    kind, inner = _kind(key, value)
    file_shape = (w.shape[1], w.shape[0]) if transposed else (w.shape[0] * count, *w.shape[1:])
    delta, dora = adapter_delta(key, kind, inner, file_shape, w.device)
    if dora is not None:
        raise NotImplementedError(f"patch for {key}: DoRA on a stacked open_clip weight is not supported")
    if transposed:
        delta = delta.t()
    return delta.chunk(count)[index]
