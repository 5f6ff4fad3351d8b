"""The denoiser the samplers call: conditioning, classifier-free guidance and the inpaint mask.

`CFGDenoiser(model, positive, negative, cfg)` is a callable `(x, sigma, **extra_args) -> x0` in
k-diffusion form. Every step it evaluates all active positive and negative conditionings in one
batched `model.apply_model` call and mixes them as uncond + (cond - uncond) * cfg (Ho & Salimans
2022). `InpaintDenoiser` wraps it to keep the unmasked part of a latent fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
        # TODO(area/mask): 'area', 'mask', 'set_area_to_bounds', 'mask_strength' are not applied yet;
        # such entries currently act on the whole latent. TODO(control/concat): 'control' (ControlNet)
        # and 'concat_latent_image' / 'concat_mask' (inpainting UNets) are not passed to apply_model yet.
        start = float(options.get("start_percent", 0.0))
        end = float(options.get("end_percent", 1.0))
        entries.append(CondEntry(context=context, options=options, strength=float(options.get("strength", 1.0)),
                                 sigma_start=model_sampling.percent_to_sigma(start),
                                 sigma_end=model_sampling.percent_to_sigma(end)))
    return entries


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


def _groups(lengths: list[int]) -> list[list[int]]:
    """Indices of contexts that may share one forward pass without excessive repetition."""
    groups: list[list[int]] = []
    for i, n in enumerate(lengths):
        for g in groups:
            candidate = [lengths[j] for j in g] + [n]
            if math.lcm(*candidate) // min(candidate) <= MAX_CONTEXT_REPEAT:
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


class CFGDenoiser:
    """x0 prediction with classifier-free guidance over CONDITIONING lists."""

    def __init__(self, model, positive, negative, cfg: float, model_options: dict | None = None):
        self.model = model
        self.model_sampling = model.model_sampling
        self.cfg = float(cfg)
        self.positive = resolve_conditioning(positive, self.model_sampling, "positive")
        self.negative = resolve_conditioning(negative, self.model_sampling, "negative")
        self.model_options = dict(getattr(model, "model_options", None) or {})
        self.model_options.update(model_options or {})
        self.calls = 0  # forward passes made, for tests and diagnostics

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
        options = {"width": x.shape[-1] * 8, "height": x.shape[-2] * 8, **entry.options}
        return encode(options, x.shape[0])

    def predict(self, groups_of_entries: list[list[CondEntry]], x: torch.Tensor, sigma: torch.Tensor,
                options: dict) -> list[torch.Tensor | None]:
        """Strength-weighted x0 average per conditioning list; all lists share batched forwards."""
        s = float(sigma.reshape(-1)[0])
        jobs = [(k, e) for k, entries in enumerate(groups_of_entries) for e in entries if e.active(s)]
        totals = [None] * len(groups_of_entries)
        weights = [0.0] * len(groups_of_entries)
        if not jobs:
            return [torch.zeros_like(x) if entries else None for entries in groups_of_entries]
        batch = x.shape[0]
        contexts = [_to_batch(e.context.to(x.device, x.dtype), batch, "conditioning") for _, e in jobs]
        adms = [self._adm(e, x) for _, e in jobs]
        transformer_options = dict(options.get("transformer_options", {}))
        per_forward = self._copies_per_forward(x)
        groups = [g[k:k + per_forward] for g in _groups([c.shape[1] for c in contexts])
                  for k in range(0, len(g), per_forward)]
        for group in groups:
            ctx = torch.cat(_pad_contexts([contexts[j] for j in group]), dim=0)
            y = None
            if adms[group[0]] is not None:
                y = torch.cat([_to_batch(adms[j].to(x.device, x.dtype), batch, "adm") for j in group], dim=0)
            n = len(group)
            x_in = torch.cat([x] * n, dim=0)
            sigma_in = torch.cat([sigma] * n, dim=0)
            transformer_options["cond_or_uncond"] = [jobs[j][0] for j in group]
            self.calls += 1
            out = self.model.apply_model(x_in, sigma_in, c_crossattn=ctx, y=y,
                                         transformer_options=transformer_options).chunk(n)
            for j, pred in zip(group, out):
                k, entry = jobs[j]
                totals[k] = pred * entry.strength if totals[k] is None else totals[k] + pred * entry.strength
                weights[k] += entry.strength
        results = []
        for k, entries in enumerate(groups_of_entries):
            if not entries:
                results.append(None)
            elif totals[k] is None or weights[k] == 0:
                results.append(torch.zeros_like(x))  # nothing active at this sigma
            else:
                results.append(totals[k] / weights[k])
        return results

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None,
                 seed=None, **_ignored) -> torch.Tensor:
        options = self._options(model_options)
        skip_uncond = (not self.negative) or (
            math.isclose(self.cfg, 1.0) and not options.get("disable_cfg1_optimization", False))
        lists = [self.positive] if skip_uncond else [self.positive, self.negative]
        preds = self.predict(lists, x, sigma, options)
        cond = preds[0] if preds[0] is not None else torch.zeros_like(x)
        uncond = preds[1] if len(preds) > 1 else None
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
            denoised = post({"denoised": denoised, "cond": cond, "uncond": uncond, "model": self.model,
                             "uncond_denoised": uncond, "cond_denoised": cond, "sigma": sigma,
                             "model_options": options, "input": x, "cond_scale": self.cfg})
        return denoised


class InpaintDenoiser:
    """Keeps the region where the mask is 0 equal to the input latent (re-noised to each sigma)."""

    def __init__(self, inner, latent_image: torch.Tensor, noise: torch.Tensor, denoise_mask: torch.Tensor):
        self.inner = inner
        self.model_sampling = inner.model_sampling
        self.latent_image = latent_image
        self.noise = noise
        self.mask = denoise_mask

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
