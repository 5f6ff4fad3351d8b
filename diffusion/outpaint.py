"""ImagePadForOutpaint's preparation: a grey border around the image and the mask of what to paint.

The mask is 1 on the new border; inside the original image it is 0, except that within `feathering`
pixels of a padded side it rises quadratically towards that side, ((feathering - d) / feathering)²
at distance d, so the sampler may blend the old content into the new. d counts from 0 at the first
row/column for the top and left sides and from 1 at the last one for bottom and right (ComfyUI's
nodes.py:ImagePadForOutpaint, whose numbers we reproduce bit for bit).
"""
from __future__ import annotations

import torch

GREY = 0.5


def pad_for_outpaint(image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [B,H,W,C] -> (padded IMAGE [B,H+top+bottom,W+left+right,C], MASK [1,H',W'])."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"ImagePadForOutpaint expects an IMAGE [B,H,W,C], got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    sides = {"left": left, "top": top, "right": right, "bottom": bottom, "feathering": feathering}
    for name, value in sides.items():
        if value < 0:
            raise ValueError(f"ImagePadForOutpaint {name} must be >= 0, got {value}")
    b, h, w, c = image.shape
    padded = torch.full((b, h + top + bottom, w + left + right, c), GREY, dtype=torch.float32)
    padded[:, top:top + h, left:left + w, :] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    mask[top:top + h, left:left + w] = _feather(h, w, top > 0, bottom > 0, left > 0, right > 0, feathering)
    return padded, mask.unsqueeze(0)


def _feather(h: int, w: int, top: bool, bottom: bool, left: bool, right: bool, feathering: int) -> torch.Tensor:
    """The mask inside the original image ([h, w], float32). No feather when it would not fit twice."""
    if feathering <= 0 or feathering * 2 >= h or feathering * 2 >= w:
        return torch.zeros((h, w), dtype=torch.float32)
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    far = torch.tensor(float(max(h, w)), dtype=torch.float64)  # an unpadded side never wins the min
    distance = torch.minimum(
        torch.minimum(rows if top else far, h - rows if bottom else far),
        torch.minimum(cols if left else far, w - cols if right else far))
    ramp = (feathering - distance) / feathering
    # computed in float64 and rounded once, as ComfyUI's per-pixel Python floats are
    return torch.where(distance < feathering, ramp * ramp, torch.zeros(())).to(torch.float32)
