"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, "ToMe for SD"): in self-attention at
full latent resolution, merge the `ratio` most similar tokens into their neighbours before attention
(attn1_patch on the queries' input) and copy the merged results back out after it
(attn1_output_patch), so attention costs fewer query tokens.

Bipartite soft matching: the tokens are split into destinations (one random token per 2x2 cell,
the first of each cell with `no_rand`) and sources; each source is matched to its most cosine-similar
destination and the r best-matched sources are averaged into their destinations. Unmerging gives
every merged source its destination's value.
"""
from __future__ import annotations

import math

import torch

STRIDE = 2  # destination grid cell (tokens) in x and y
MAX_DOWNSAMPLE = 1  # only the full-resolution transformer levels are merged


def _identity(x):
    return x


def bipartite_soft_matching_2d(metric: torch.Tensor, w: int, h: int, r: int, no_rand: bool = False,
                               generator: torch.Generator | None = None):
    """(merge, unmerge) for tokens [B, N, C] laid out h x w; identity functions when nothing merges."""
    b, n, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    device = metric.device
    hsy, wsx = h // STRIDE, w // STRIDE
    with torch.no_grad():
        if no_rand:
            choice = torch.zeros(hsy, wsx, 1, dtype=torch.int64, device=device)
        else:
            choice = torch.randint(STRIDE * STRIDE, size=(hsy, wsx, 1), generator=generator).to(device)
        # -1 marks the destination token of each cell; a border that the cells do not cover stays source
        cells = torch.zeros(hsy, wsx, STRIDE * STRIDE, dtype=torch.int64, device=device)
        cells.scatter_(2, choice, -torch.ones_like(choice))
        cells = cells.view(hsy, wsx, STRIDE, STRIDE).transpose(1, 2).reshape(hsy * STRIDE, wsx * STRIDE)
        marks = torch.zeros(h, w, dtype=torch.int64, device=device)
        marks[:hsy * STRIDE, :wsx * STRIDE] = cells
        order = marks.reshape(1, -1, 1).argsort(dim=1)  # destinations first, then sources
        num_dst = hsy * wsx
        src_at, dst_at = order[:, num_dst:, :], order[:, :num_dst, :]

        def split(x):
            c = x.shape[-1]
            return (torch.gather(x, 1, src_at.expand(b, n - num_dst, c)),
                    torch.gather(x, 1, dst_at.expand(b, num_dst, c)))

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, d = split(unit)
        scores = a @ d.transpose(-1, -2)
        r = min(a.shape[1], r)
        best, best_dst = scores.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged = ranked[..., r:, :], ranked[..., :r, :]
        merged_dst = torch.gather(best_dst[..., None], -2, merged)

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = split(x)
        bb, t, c = src.shape
        unm = torch.gather(src, -2, kept.expand(bb, t - r, c))
        src = torch.gather(src, -2, merged.expand(bb, r, c))
        dst = dst.scatter_reduce(-2, merged_dst.expand(bb, r, c), src, reduce=mode)
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept = kept.shape[1]
        unm, dst = x[..., :n_kept, :], x[..., n_kept:, :]
        c = unm.shape[-1]
        src = torch.gather(dst, -2, merged_dst.expand(b, r, c))
        out = torch.zeros(b, n, c, device=x.device, dtype=x.dtype)
        src_index = src_at.expand(b, src_at.shape[1], 1)
        out.scatter_(-2, dst_at.expand(b, num_dst, c), dst)
        out.scatter_(-2, torch.gather(src_index, 1, kept).expand(b, n_kept, c), unm)
        out.scatter_(-2, torch.gather(src_index, 1, merged).expand(b, r, c), src)
        return out

    return merge, unmerge


def merge_functions(x: torch.Tensor, ratio: float, original_shape) -> tuple:
    """(merge, unmerge) for the tokens x [B, N, C] of a transformer whose latent is original_shape."""
    _, _, oh, ow = original_shape
    downsample = int(math.ceil(math.sqrt((oh * ow) // x.shape[1])))
    if downsample > MAX_DOWNSAMPLE:
        return _identity, _identity
    w, h = int(math.ceil(ow / downsample)), int(math.ceil(oh / downsample))
    return bipartite_soft_matching_2d(x, w, h, int(x.shape[1] * ratio))


def tome_patches(ratio: float):
    """(attn1_patch, attn1_output_patch) sharing the current block's unmerge function."""
    state = {"unmerge": _identity}

    def merge_patch(n, context, value, extra):
        merge, state["unmerge"] = merge_functions(n, ratio, extra["original_shape"])
        return merge(n), context, value

    def unmerge_patch(out, extra):
        return state["unmerge"](out)

    return merge_patch, unmerge_patch
