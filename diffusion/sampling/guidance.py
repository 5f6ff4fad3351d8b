"""The denoiser the samplers call: conditioning, classifier-free guidance and the inpaint mask.

`CFGDenoiser(model, positive, negative, cfg)` is a callable `(x, sigma, **extra_args) -> x0` in
k-diffusion form. Every step it evaluates the active positive and negative conditionings, batched
into as few `model.apply_model` calls as shapes and memory allow, and mixes them as
uncond + (cond - uncond) * cfg (Ho & Salimans 2022). Each conditioning acts where its area / mask
says, with its strength, inside its timestep range; a side's x0 is the weighted mean of its
conditionings per pixel (diffusion/sampling/conditioning_areas.py). Inpainting UNets get their extra
input channels per conditioning (diffusion/models/inpaint.py). `InpaintDenoiser` wraps it to keep
the unmasked part of a latent fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from diffusion.models.inpaint import concat_channels, concat_inputs
from diffusion.sampling.conditioning_areas import (Region, WeightedSum, crop, opposite_source, region_weight,
                                                   resolve_region)

MAX_CONTEXT_REPEAT = 4  # contexts whose lengths need more repetition than this run in separate calls


@dataclass
class CondEntry:
    """One [tensor, options] item of a CONDITIONING list, resolved for sampling."""
    context: torch.Tensor          # [1 or B, tokens, dim]
    options: dict
    strength: float
    sigma_start: float             # active while sigma_end <= sigma <= sigma_start
    sigma_end: float

    def active(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start


def resolve_conditioning(conditioning, model_sampling, where: str) -> list[CondEntry]:
    """Check a CONDITIONING list and turn timestep ranges into sigma ranges."""
    if conditioning is None:
        return []
    if not isinstance(conditioning, (list, tuple)):
        raise TypeError(f"{where}: CONDITIONING must be a list of [tensor, dict], got {type(conditioning).__name__}")
    entries = []
    for n, item in enumerate(conditioning):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and torch.is_tensor(item[0])
                and isinstance(item[1], dict)):
            raise TypeError(f"{where}: CONDITIONING item {n} must be [tensor, dict]")
        context, options = item
        # The model's extra inputs may depend on which side a prompt is on (the SDXL refiner's
        # default aesthetic score is 2.5 for negatives, 6 otherwise); an explicit value wins.
        options = {"prompt_type": where, **options}
        if context.ndim != 3:
            raise ValueError(f"{where}: CONDITIONING item {n} tensor must be [batch, tokens, dim], "
                             f"got shape {tuple(context.shape)}")
        control = options.get("control")
        if control is not None and not callable(getattr(control, "residuals", None)):
            raise TypeError(f"{where}: CONDITIONING item {n} 'control' must be a CONTROL_NET, "
                            f"got {type(control).__name__}")
        # 'gligen' is applied per forward in CFGDenoiser.predict.
        start = float(options.get("start_percent", 0.0))
        end = float(options.get("end_percent", 1.0))
        entries.append(CondEntry(context=context, options=options, strength=float(options.get("strength", 1.0)),
                                 sigma_start=model_sampling.percent_to_sigma(start),
                                 sigma_end=model_sampling.percent_to_sigma(end)))
    return entries


def share_control_with_uncond(positive: list[CondEntry], negative: list[CondEntry]) -> list[CondEntry]:
    """The negative side with the controls of positive conditionings marked
    `control_apply_to_uncond` (the deprecated ControlNetApply), as ComfyUI's
    apply_empty_x_to_equal_area: only when no negative conditioning without an area has a control
    yet, the i-th such control goes to the (i mod n)-th negative conditioning without an area."""
    controls = [e.options["control"] for e in positive if e.options.get("control_apply_to_uncond")
                and "area" not in e.options and e.options.get("control") is not None]
    plain = [i for i, e in enumerate(negative) if "area" not in e.options]
    if not controls or not plain or any(negative[i].options.get("control") is not None for i in plain):
        return negative
    negative = list(negative)
    for k, control in enumerate(controls):
        i = plain[k % len(plain)]
        negative[i] = replace(negative[i], options={**negative[i].options, "control": control})
    return negative


@dataclass
class _Job:
    """One conditioning ready for the model at one latent shape: where it acts, what it feeds in."""
    side: int                      # index of its CONDITIONING list (0 = positive, 1 = negative)
    entry: CondEntry               # its timestep range
    region: Region
    context: torch.Tensor          # [B, tokens, dim]
    adm: torch.Tensor | None       # [B, adm] (SDXL)
    concat: torch.Tensor | None    # [B, extra, H, W] (inpainting UNets)
    where: str
    control: object = None         # CONTROL_NET (diffusion/models/controlnet.py) or None


def _to_batch(t: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0] != 0:
        raise ValueError(f"{where}: conditioning batch {t.shape[0]} does not divide latent batch {batch}")
    return t.repeat((batch // t.shape[0],) + (1,) * (t.ndim - 1))


def _pad_contexts(contexts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Repeat token sequences to a common length (their least common multiple).

    Repeating keys/values leaves cross-attention output unchanged: every softmax weight is split
    evenly over identical copies.
    """
    target = math.lcm(*[c.shape[1] for c in contexts])
    return [c if c.shape[1] == target else c.repeat(1, target // c.shape[1], 1) for c in contexts]


def _groups(items: list[tuple]) -> list[list[int]]:
    """Indices of (shape key, token count) items that may share one forward pass: equal shapes and
    token counts whose common multiple needs little repetition."""
    groups: list[list[int]] = []
    for i, (key, n) in enumerate(items):
        for g in groups:
            candidate = [items[j][1] for j in g] + [n]
            if items[g[0]][0] == key and math.lcm(*candidate) // min(candidate) <= MAX_CONTEXT_REPEAT:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def _shape(t):
    return None if t is None else tuple(t.shape)


class CFGDenoiser:
    """x0 prediction with classifier-free guidance over CONDITIONING lists."""

    def __init__(self, model, positive, negative, cfg: float, model_options: dict | None = None):
        self.model = model
        self.model_sampling = model.model_sampling
        self.cfg = float(cfg)
        self.positive = resolve_conditioning(positive, self.model_sampling, "positive")
        self.negative = share_control_with_uncond(
            self.positive, resolve_conditioning(negative, self.model_sampling, "negative"))
        self.positive_conditioning, self.negative_conditioning = positive, negative
        self._control_cache = {}  # resized hints and T2I-Adapter features, for this run only
        self.model_options = dict(getattr(model, "model_options", None) or {})
        self.model_options.update(model_options or {})
        self.calls = 0  # forward passes made, for tests and diagnostics
        self.latent_image = None  # the latent being sampled (scaled) and the sampler's denoise mask:
        self.denoise_mask = None  # an inpainting UNet falls back to them (set_inpaint_inputs)
        self.seed = None  # the sampler's seed: unCLIP noise augmentation draws from it (models/adm.py)
        self._prepared = (None, None)

    def set_inpaint_inputs(self, latent_image: torch.Tensor | None, denoise_mask: torch.Tensor | None) -> None:
        """What an inpainting UNet reads when a conditioning brings no concat_mask / image of its own."""
        self.latent_image, self.denoise_mask = latent_image, denoise_mask
        self._prepared = (None, None)

    def _options(self, extra: dict | None) -> dict:
        if not extra:
            return self.model_options
        merged = dict(self.model_options)
        for key, value in extra.items():
            if key == "sampler_post_cfg_function":
                merged[key] = list(merged.get(key, [])) + list(value)
            else:
                merged[key] = value
        return merged

    def _copies_per_forward(self, x: torch.Tensor) -> int:
        """How many copies of the latent batch one forward may carry on a GPU (cond and uncond are
        batched only while the activations fit); unlimited on CPU."""
        estimate = getattr(self.model, "memory_required", None)
        if x.device.type != "cuda" or estimate is None:
            return 1 << 30
        from diffusion.memory import get_free_memory

        need = max(int(estimate(tuple(x.shape))), 1)
        return max(1, int(get_free_memory(x.device) * 0.9) // need)

    def _adm(self, entry: CondEntry, x: torch.Tensor):
        encode = getattr(self.model, "encode_adm", None)
        if encode is None:
            return None
        # As ComfyUI (samplers.py encode_model_conds): a conditioning that states no size gets the
        # latent's pixel size, so plain CLIPTextEncode on SDXL conditions on the image being made.
        options = {"width": x.shape[-1] * 8, "height": x.shape[-2] * 8, "seed": self.seed, **entry.options}
        adm = encode(options, x.shape[0])
        return None if adm is None else _to_batch(adm.to(x.device, x.dtype), x.shape[0], "adm")

    def _job(self, side: int, n: int, entry: CondEntry, x: torch.Tensor) -> _Job:
        where = f"{entry.options['prompt_type']} conditioning {n}"
        concat = None
        if concat_channels(self.model):
            concat = concat_inputs(entry.options, tuple(x.shape), self.model.latent_format, self.latent_image,
                                   self.denoise_mask, x.device, where).to(x.dtype)
        return _Job(side=side, entry=entry, region=resolve_region(entry.options, tuple(x.shape[2:]), x.device, where),
                    context=_to_batch(entry.context.to(x.device, x.dtype), x.shape[0], where),
                    adm=self._adm(entry, x), concat=concat, where=where, control=entry.options.get("control"))

    def _prepare(self, lists: list[list[CondEntry]], x: torch.Tensor) -> list[list[_Job]]:
        """Every conditioning resolved for this latent shape (once per run: the shape is fixed)."""
        key = (tuple(id(entries) for entries in lists), tuple(x.shape), x.device, x.dtype, self.seed)
        if self._prepared[0] == key:
            return self._prepared[1]
        sides = [[self._job(k, n, e, x) for n, e in enumerate(entries)] for k, entries in enumerate(lists)]
        # An area on one side gets a twin with the same area on each other side (ComfyUI order: side by
        # side, twins joining the lists they are added to).
        for k, jobs in enumerate(sides):
            for job in jobs:
                if job.region.area is None:
                    continue
                for kk, others in enumerate(sides):
                    if kk == k:
                        continue
                    src = opposite_source([o.region for o in others], job.region.area)
                    if src is not None:
                        s = others[src]
                        others.append(replace(job, side=kk, context=s.context, adm=s.adm, concat=s.concat,
                                              control=s.control,
                                              where=f"{s.where} (twin of {job.where}'s area)"))
        self._prepared = (key, sides)
        return sides

    def predict(self, groups_of_entries: list[list[CondEntry]], x: torch.Tensor, sigma: torch.Tensor,
                options: dict, evaluate: list[bool] | None = None) -> list[torch.Tensor | None]:
        """Per CONDITIONING list, the weighted x0 of its active conditionings (None for an empty list
        or one not in `evaluate`); all lists share batched forwards. Areas are matched across all
        the lists given, evaluated or not."""
        evaluate = evaluate or [True] * len(groups_of_entries)
        sides = self._prepare(groups_of_entries, x)
        s = float(sigma.reshape(-1)[0])
        sums = {k: WeightedSum(x) for k, entries in enumerate(groups_of_entries) if entries and evaluate[k]}
        runs = [(job, *region_weight(job.region, x, job.where))
                for k in sums for job in sides[k] if job.entry.active(s)]
        if not runs:
            return [sums[k].result() if k in sums else None for k in range(len(groups_of_entries))]
        transformer_options = dict(options.get("transformer_options", {}))
        per_forward = self._copies_per_forward(x)
        keys = [((tuple(x_in.shape), _shape(crop(job.concat, area) if job.concat is not None else None),
                  _shape(job.adm), job.context.shape[0], job.context.shape[2],
                  id(job.entry.options.get("gligen")), id(job.control)), job.context.shape[1])
                for job, x_in, _, area in runs]
        groups = [g[k:k + per_forward] for g in _groups(keys) for k in range(0, len(g), per_forward)]
        for group in groups:
            batch = [runs[j] for j in group]
            n = len(batch)
            ctx = torch.cat(_pad_contexts([job.context for job, *_ in batch]), dim=0)
            y = None if batch[0][0].adm is None else torch.cat([job.adm for job, *_ in batch], dim=0)
            extra = {}
            if batch[0][0].concat is not None:
                extra["c_concat"] = torch.cat([crop(job.concat, area) for job, _, _, area in batch], dim=0)
            x_in = torch.cat([x_in for _, x_in, _, _ in batch], dim=0)
            sigma_in = torch.cat([sigma] * n, dim=0)
            transformer_options["cond_or_uncond"] = [job.side for job, *_ in batch]
            control = batch[0][0].control
            if control is not None:  # one control per group: jobs with different controls never share
                extra["control"] = control.residuals(x_in, sigma_in, self.model_sampling, ctx, y, n,
                                                     self._control_cache)
            self.calls += 1
            out = self.model.apply_model(x_in, sigma_in, c_crossattn=ctx, y=y,
                                         transformer_options=with_gligen(transformer_options,
                                                                         batch[0][0].entry.options, x_in),
                                         **extra).chunk(n)
            for (job, _, mult, area), pred in zip(batch, out):
                sums[job.side].add(pred, mult, area)
        return [sums[k].result() if k in sums else None for k in range(len(groups_of_entries))]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None,
                 seed=None, **_ignored) -> torch.Tensor:
        options = self._options(model_options)
        self.seed = seed
        skip_uncond = (not self.negative) or (
            math.isclose(self.cfg, 1.0) and not options.get("disable_cfg1_optimization", False))
        preds = self.predict([self.positive, self.negative], x, sigma, options, evaluate=[True, not skip_uncond])
        cond = preds[0] if preds[0] is not None else torch.zeros_like(x)
        uncond = preds[1]
        cfg_fn = options.get("sampler_cfg_function")
        if uncond is None:
            denoised = cond
            uncond = torch.zeros_like(x)
        elif cfg_fn is not None:
            # patch convention (ComfyUI): the hook works on x - x0 and returns the guided x - x0
            denoised = x - cfg_fn({"cond": x - cond, "uncond": x - uncond, "cond_scale": self.cfg,
                                   "timestep": sigma, "input": x, "sigma": sigma, "cond_denoised": cond,
                                   "uncond_denoised": uncond, "model": self.model, "model_options": options})
        else:
            denoised = uncond + (cond - uncond) * self.cfg
        for post in options.get("sampler_post_cfg_function", []):
            # as ComfyUI: "cond"/"uncond" are the CONDITIONING lists (a hook may evaluate them again
            # with calc_cond_batch), the predictions are "cond_denoised"/"uncond_denoised"
            denoised = post({"denoised": denoised, "cond": self.positive_conditioning,
                             "uncond": self.negative_conditioning if not skip_uncond else None, "model": self.model,
                             "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma,
                             "model_options": options, "input": x, "cond_scale": self.cfg})
        return denoised


def with_gligen(transformer_options: dict, cond_options: dict, x_in: torch.Tensor) -> dict:
    """The forward's transformer options plus the conditioning's GLIGEN patch (a "middle_patch"
    built for this batch's latent shape), or the options unchanged without one."""
    gligen = cond_options.get("gligen")
    if gligen is None:
        return transformer_options
    from diffusion.models.gligen import gligen_patch

    patches = dict(transformer_options.get("patches") or {})
    patches["middle_patch"] = list(patches.get("middle_patch", [])) + [gligen_patch(gligen, x_in.shape, x_in.device)]
    return {**transformer_options, "patches": patches}


def calc_cond_batch(model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None,
                    prompt_types: list[str] | None = None) -> list[torch.Tensor]:
    """x0 for each CONDITIONING list in `conds` at (x, sigma), batched like one denoiser step
    (ComfyUI's samplers.calc_cond_batch, for hooks such as SAG and PerpNeg); a None or empty list
    gives zeros. `prompt_types` says which side each list counts as (default: the first positive,
    the others negative)."""
    prompt_types = prompt_types or ["positive"] + ["negative"] * (len(conds) - 1)
    denoiser = CFGDenoiser(model, None, None, 1.0, model_options)
    lists = [resolve_conditioning(c, denoiser.model_sampling, t) for c, t in zip(conds, prompt_types)]
    preds = denoiser.predict(lists, x, sigma, denoiser.model_options)
    return [torch.zeros_like(x) if p is None else p for p in preds]


class InpaintDenoiser:
    """Keeps the region where the mask is 0 equal to the input latent (re-noised to each sigma)."""

    def __init__(self, inner, latent_image: torch.Tensor, noise: torch.Tensor, denoise_mask: torch.Tensor):
        self.inner = inner
        self.model_sampling = inner.model_sampling
        self.latent_image = latent_image
        self.noise = noise
        self.mask = denoise_mask
        # an inpainting UNet reads the latent and this mask when its conditioning brings none
        set_inputs = getattr(inner, "set_inpaint_inputs", None)
        if set_inputs is not None:
            set_inputs(latent_image, denoise_mask)

    def __call__(self, x, sigma, **extra_args):
        keep = 1.0 - self.mask
        renoised = self.model_sampling.noise_scaling(sigma, self.noise, self.latent_image)
        x = x * self.mask + renoised * keep
        out = self.inner(x, sigma, **extra_args)
        return out * self.mask + self.latent_image * keep


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """A MASK / noise_mask ([H,W], [B,H,W] or [B,1,H,W], any resolution) resized to the latent
    [B, C, h, w] by bilinear interpolation and broadcast over channels and batch."""
    mask = noise_mask.to(torch.float32)
    if mask.ndim < 2:
        raise ValueError(f"noise_mask must have at least 2 dimensions, got shape {tuple(mask.shape)}")
    mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
    mask = torch.nn.functional.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    # like a batch of images, a shorter mask batch is cycled and a longer one cut
    reps = -(-shape[0] // mask.shape[0])
    return mask.repeat(reps, 1, 1, 1)[:shape[0]].to(device)
