"""Self-Attention Guidance (Hong et al. 2023, "Improving Sample Quality of Diffusion Models Using
Self-Attention Guidance"), as ComfyUI's SelfAttentionGuidance does it:

1. the self-attention of the middle block's first transformer is recorded for the unconditional
   prediction (an attn1 replace patch; its output stays the ordinary attention's, bit for bit);
2. after CFG, the tokens the attention gathers most (mean over heads of the summed attention a
   token receives, > 1) mark where the unconditional x0 is blurred (Gaussian, 9x9, blur_sigma);
3. the blurred x0, re-noised with the unconditional noise, is predicted again, and the result moves
   by scale * (blurred - prediction).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion.models.attention import attention
from diffusion.sampling.guidance import calc_cond_batch

BLUR_KERNEL = 9
THRESHOLD = 1.0
UNCOND = 1  # cond_or_uncond index of the negative prompt


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian (as a 2-d kernel) per channel with reflect padding; img [B, C, H, W]."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad] * 4, mode="reflect"), kernel, groups=img.shape[-3])


def attention_scores(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head: [B*heads, Nq, Nk] (batch-major, heads inner)."""
    b, n, c = q.shape
    d = c // heads
    q = q.reshape(b, n, heads, d).transpose(1, 2).reshape(b * heads, n, d).float()
    k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2).reshape(b * heads, -1, d).float()
    return (torch.bmm(q, k.transpose(1, 2)) * d ** -0.5).softmax(dim=-1)


def _token_grid(h: int, w: int, tokens: int) -> tuple[int, int]:
    """The (h, w) of a feature map with `tokens` positions reached from the latent h x w by the
    UNet's stride-2 downsamples (each gives ceil(size / 2))."""
    while h * w > tokens:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if h * w != tokens:
        raise ValueError(f"SelfAttentionGuidance: {tokens} attention tokens do not match a downsampled "
                         f"{h}x{w} latent")
    return h, w


def blur_map(x0: torch.Tensor, attn: torch.Tensor, sigma: float, threshold: float = THRESHOLD) -> torch.Tensor:
    """x0 blurred where the attention map [B*heads, N, N] says the image is salient."""
    b, _, lh, lw = x0.shape
    _, n1, n2 = attn.shape
    mask = attn.reshape(b, -1, n1, n2).mean(1).sum(1) > threshold
    mh, mw = _token_grid(lh, lw, n1)
    mask = F.interpolate(mask.reshape(b, 1, mh, mw).to(x0.dtype), (lh, lw))
    blurred = gaussian_blur_2d(x0, BLUR_KERNEL, sigma)
    return blurred * mask + x0 * (1 - mask)


def sag_patches(scale: float, blur_sigma: float):
    """(attn1 replace fn for ("middle", 0, 0), sampler_post_cfg_function)."""
    scale, blur_sigma = float(scale), float(blur_sigma)
    recorded = {"scores": None}

    def attn_and_record(q, k, v, extra):
        heads = extra["n_heads"]
        cond_or_uncond = extra["cond_or_uncond"]
        if UNCOND in cond_or_uncond:
            per = q.shape[0] // len(cond_or_uncond)
            at = cond_or_uncond.index(UNCOND) * per
            recorded["scores"] = attention_scores(q[at:at + per], k[at:at + per], heads)
        return attention(q, k, v, heads)

    def post_cfg(args):
        denoised = args["denoised"]
        scores = recorded["scores"]
        if scores is None or args.get("uncond") is None or min(denoised.shape[2:]) <= BLUR_KERNEL // 2:
            return denoised  # no unconditional pass to guide by, or too small to pad for the blur
        uncond_x0, x = args["uncond_denoised"], args["input"]
        degraded = blur_map(uncond_x0, scores.to(uncond_x0), blur_sigma)
        (sag,) = calc_cond_batch(args["model"], [args["uncond"]], degraded + x - uncond_x0, args["sigma"],
                                 args["model_options"], prompt_types=["negative"])
        return denoised + (degraded - sag) * scale

    return attn_and_record, post_cfg
