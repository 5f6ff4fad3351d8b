"""Where a conditioning acts on the latent: areas, masks and the weights that mix them.

Regional prompting as ComfyUI computes it (comfy/samplers.py: get_area_and_mult, calc_cond_batch,
resolve_areas_and_cond_masks, create_cond_with_same_area_if_none). A conditioning's options may hold:

- 'area': (h, w, y, x) in latent units (ConditioningSetArea divides pixels by 8), or
  ("percentage", h, w, y, x) as fractions of the latent, resolved once the latent size is known;
- 'mask': [B, H, W] or [H, W] of any size, resized bilinearly to the latent; 'mask_strength' scales it;
  'set_area_to_bounds': the area becomes the mask's bounding box (at least 8 x 8 latent pixels);
- 'strength': a factor on the weight.

Each conditioning predicts x0 for its crop of the latent; a side's prediction is the weighted sum of
its crops divided, pixel by pixel, by the summed weights (+1e-37, so a pixel nothing covers is 0).
An area without a mask fades in over min(8, size // 4) rows / columns on every edge that lies inside
the latent (weights 1/r, 2/r, ..., 1), so neighbouring regions blend instead of meeting at a seam.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

FEATHER = 8          # latent pixels over which an area's inner edges fade in
MIN_BOUNDS = 8       # smallest side of an area taken from a mask's bounding box
EMPTY_COUNT = 1e-37  # the weight a pixel starts with, so 0 / weight is 0 where nothing acts

Area = tuple[int, int, int, int]  # (h, w, y, x), latent units


@dataclass(frozen=True)
class Region:
    """Where one conditioning acts and how strongly, resolved for one latent size."""
    area: Area | None = None              # None: the whole latent
    mask: torch.Tensor | None = None      # [B, H, W] at the latent's size
    mask_strength: float = 1.0
    strength: float = 1.0


def _bad(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


def _percentage_area(area, hw, where) -> Area:
    if len(area) != 5:
        raise _bad(where, f"a percentage 'area' must be ('percentage', h, w, y, x), got {area!r}")
    h, w, y, x = (float(v) for v in area[1:])
    return (max(1, round(h * hw[0])), max(1, round(w * hw[1])), round(y * hw[0]), round(x * hw[1]))


def _mask_bounds(mask: torch.Tensor) -> Area:
    """Bounding box of the non-zero pixels of any batch item, at least MIN_BOUNDS on each side."""
    covered = mask.abs().amax(dim=0) != 0
    if not bool(covered.any()):
        return (MIN_BOUNDS, MIN_BOUNDS, 0, 0)  # an all-zero mask acts nowhere; keep the crop small
    ys, xs = torch.nonzero(covered, as_tuple=True)
    y0, x0 = int(ys.min()), int(xs.min())
    h, w = int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1
    return (max(MIN_BOUNDS, h), max(MIN_BOUNDS, w), y0, x0)


def resolve_region(options: dict, latent_hw: tuple[int, int], device, where: str) -> Region:
    """The Region a conditioning's options describe, for a latent of spatial size `latent_hw`."""
    area = options.get("area")
    if area is not None:
        if len(area) and area[0] == "percentage":
            area = _percentage_area(area, latent_hw, where)
        elif len(area) != 4:
            raise _bad(where, f"'area' must be (h, w, y, x) in latent units, got {area!r}")
        area = tuple(int(v) for v in area)
        if area[0] <= 0 or area[1] <= 0 or area[2] < 0 or area[3] < 0:
            raise _bad(where, f"'area' {area} needs a positive size and a non-negative offset")
    mask = options.get("mask")
    if mask is not None:
        if not torch.is_tensor(mask) or mask.ndim not in (2, 3):
            raise _bad(where, f"'mask' must be a MASK [B, H, W], got {getattr(mask, 'shape', type(mask).__name__)}")
        mask = mask.to(device=device, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != tuple(latent_hw):
            mask = F.interpolate(mask.unsqueeze(1), size=tuple(latent_hw), mode="bilinear",
                                 align_corners=False).squeeze(1)
        if options.get("set_area_to_bounds", False):
            area = _mask_bounds(mask)
    return Region(area=area, mask=mask, mask_strength=float(options.get("mask_strength", 1.0)),
                  strength=float(options.get("strength", 1.0)))


def clamp_area(area: Area | None, latent_hw, where: str) -> Area | None:
    """The area cut to the latent (an area may reach past the latent's edge)."""
    if area is None:
        return None
    h, w, y, x = area
    if y >= latent_hw[0] or x >= latent_hw[1]:
        raise _bad(where, f"area (h={h}, w={w}, y={y}, x={x}, latent units) starts outside the "
                          f"{latent_hw[0]}x{latent_hw[1]} latent")
    return (min(h, latent_hw[0] - y), min(w, latent_hw[1] - x), y, x)


def crop(t: torch.Tensor, area: Area | None) -> torch.Tensor:
    """The [.., H, W] tensor cut to a (clamped) area."""
    if area is None:
        return t
    h, w, y, x = area
    return t[..., y:y + h, x:x + w]


def _feather(mult: torch.Tensor, area: Area, latent_hw) -> None:
    """Fade in the area's edges that lie inside the latent, in place (ComfyUI's order of products)."""
    for dim, (size, offset) in enumerate(((area[0], area[2]), (area[1], area[3]))):
        axis = dim + 2
        ramp = min(FEATHER, mult.shape[axis] // 4)
        if offset != 0:
            for t in range(ramp):
                mult.narrow(axis, t, 1).mul_((1.0 / ramp) * (t + 1))
        if size + offset < latent_hw[dim]:
            for t in range(ramp):
                mult.narrow(axis, size - 1 - t, 1).mul_((1.0 / ramp) * (t + 1))


def region_weight(region: Region, x: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor, Area | None]:
    """(x cut to the region's area, the per-element weight of the prediction there, the clamped area)."""
    latent_hw = tuple(x.shape[2:])
    area = clamp_area(region.area, latent_hw, where)
    x_in = crop(x, area)
    if region.mask is not None:
        mask = crop(region.mask[:x_in.shape[0]], area) * region.mask_strength
        if x_in.shape[0] % mask.shape[0]:
            raise _bad(where, f"mask batch {mask.shape[0]} does not divide the latent batch {x_in.shape[0]}")
        mask = mask.unsqueeze(1).repeat(x_in.shape[0] // mask.shape[0], x_in.shape[1], 1, 1)
    else:
        mask = torch.ones_like(x_in)
    mult = mask * region.strength
    if region.mask is None and area is not None:
        _feather(mult, area, latent_hw)
    return x_in, mult, area


class WeightedSum:
    """One side's x0: predictions of crops summed with their weights, divided by the summed weights."""

    def __init__(self, like: torch.Tensor):
        self.total = torch.zeros_like(like)
        self.count = torch.ones_like(like) * EMPTY_COUNT

    def add(self, pred: torch.Tensor, mult: torch.Tensor, area: Area | None) -> None:
        crop(self.total, area).add_(pred * mult)
        crop(self.count, area).add_(mult)

    def result(self) -> torch.Tensor:
        return self.total / self.count


def _inside(inner: Area, outer: Area) -> bool:
    return (inner[2] >= outer[2] and inner[3] >= outer[3]
            and inner[0] + inner[2] <= outer[0] + outer[2] and inner[1] + inner[3] <= outer[1] + outer[3])


def opposite_source(regions: list[Region], area: Area) -> int | None:
    """Which of one side's conditionings an area of the other side is mirrored with, or None.

    Guidance compares cond and uncond per pixel, so an area prompt on one side gets a twin on the
    other side with the same area and weights, whose model inputs come from the smallest conditioning
    there that encloses the area (one without an area encloses everything but loses to any area).
    None when there is no candidate or the candidate already has exactly this area.
    """
    best = None
    for i, r in enumerate(regions):
        if r.area is None:
            if best is None:
                best = i
        elif _inside(area, r.area):
            current = regions[best].area if best is not None else None
            if best is None or current is None or math.prod(current[:2]) > math.prod(r.area[:2]):
                best = i
    if best is None or regions[best].area == area:
        return None
    return best
