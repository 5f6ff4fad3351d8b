"""MODEL: a UNet plus what sampling needs (model_sampling, latent_format), with removable patches.

Clones share the UNet module and its base tensors; each clone has its own patch lists and options.
Patches are applied when the model is loaded for a run (`diffusion.memory.load_models`): a patched
weight is computed into a NEW tensor and swapped in as the module's parameter, the base Parameter
object is kept aside and swapped back on `unpatch_model`, so untouched weights are never copied and
removing patches restores the base bit for bit. Only one patcher's patches are applied to a shared
module at a time; loading another clone unpatches the previous one first.

Patch values accepted by `add_patches({key: value})` (key = UNet parameter name, with or without the
"diffusion_model." prefix); the tuple layouts are ComfyUI's, so plugin patches carry over. Every
patch is applied as `w = w * strength_model + strength_patch * delta`, in float32, in list order:
- a tensor of the weight's shape, (tensor,) or ("diff", tensor | (tensor,)): delta = tensor
- ("set", (tensor,)): the weight becomes tensor (strengths unused, as in ComfyUI)
- ("lora", (up, down, alpha, mid, dora_scale)): delta = up @ down · alpha / rank (rank = down's rows,
  alpha None = rank); `mid` [r, r, kh, kw] is LyCORIS LoCon's Tucker core: up · mid · down
- ("loha", (w1a, w1b, alpha, w2a, w2b, t1, t2, dora_scale)): delta = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha / rank
  (t1/t2: Tucker cores of conv LoHa)
- ("lokr", (w1, w2, alpha, w1a, w1b, w2a, w2b, t2, dora_scale)): delta = kron(w1, w2), each factor given or
  as a low-rank product; alpha / rank applies only when a factor is low-rank
- a list [(weight,), *patches]: another model's weight with its own patches (model merging), used as a
  "diff" delta, so ModelMergeSimple's (1 - ratio, ratio) gives w1·ratio + w2·(1 - ratio)
- ("slice", (patch, index, count, transposed)): row block `index` of `count` of the delta `patch` makes
  on a stacked weight (open_clip's in_proj holds q, k and v; see diffusion.text.encoder)
A `dora_scale` (DoRA) rescales the patched weight to that magnitude, per input channel (kohya, ComfyUI's
layout [1, in]) or per output channel when it has one value per output row (LyCORIS `wd_on_out`, PEFT's
`lora_magnitude_vector`), then blends with strength_patch.
"""
from __future__ import annotations

import copy
import uuid

import torch

from diffusion import memory
from diffusion.model_options import ModelOptions
from diffusion.weight_patches import apply_patches

ARCH_LATENT_FORMAT = {"sd1": "SD15", "sd2": "SD15", "sdxl": "SDXL", "sdxl_refiner": "SDXL"}
PATCH_KEY_PREFIX = "diffusion_model."


def _module_and_name(root, key):
    *path, name = key.split(".")
    module = root
    for p in path:
        module = getattr(module, p)
    return module, name


class ModelPatcher(ModelOptions):
    """Wraps the UNet as MODEL (docs/contracts.md); also used bare around other modules (CLIP
    towers) for device placement and weight patches."""

    def __init__(self, model, arch: str, prediction: str = "eps", load_device=None, offload_device=None,
                 settings=None, model_sampling=None, latent_format=None):
        self.model = model
        self.arch = arch
        self.prediction = prediction
        self.load_device = torch.device(load_device) if load_device is not None else memory.get_torch_device(settings)
        self.offload_device = (torch.device(offload_device) if offload_device is not None
                               else memory.offload_device(settings))
        self.patches: dict[str, list] = {}  # key -> [(strength_patch, value, strength_model)]
        self.model_options: dict = {"transformer_options": {}}
        self.patches_uuid = uuid.uuid4()
        self._model_sampling = model_sampling
        self._latent_format = latent_format
        self._param_names = None
        # Shared across clones: which patcher's patches are in the module now, and the base params.
        if not hasattr(model, "_lg_patch_state"):
            model._lg_patch_state = {"owner": None, "uuid": None, "backup": {}}

    # -- identity and description ----------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        # Any module can be patched (the CLIP towers are too); only the UNet names its dtype.
        dtype = getattr(self.model, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.model.parameters()).dtype

    @property
    def config(self):
        return getattr(self.model, "config", None)

    def model_size(self) -> int:
        return memory.module_size(self.model)

    def __repr__(self):
        return f"ModelPatcher(arch={self.arch!r}, prediction={self.prediction!r}, patches={len(self.patches)})"

    @property
    def model_sampling(self):
        if self._model_sampling is None:
            from diffusion.sampling.model_sampling import ModelSampling

            self._model_sampling = ModelSampling(prediction=self.prediction)
        return self._model_sampling

    @property
    def latent_format(self):
        if self._latent_format is None:
            from diffusion.models import latent_formats

            fmt = getattr(latent_formats, ARCH_LATENT_FORMAT[self.arch])
            self._latent_format = fmt() if isinstance(fmt, type) else fmt
        return self._latent_format

    # -- clones and patches ----------------------------------------------------------------------
    def clone(self) -> "ModelPatcher":
        n = copy.copy(self)  # shares model, model_sampling, latent_format, devices
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.model_options = copy.deepcopy({k: v for k, v in self.model_options.items()
                                         if k != "transformer_options"})
        n.model_options["transformer_options"] = _copy_transformer_options(
            self.model_options.get("transformer_options", {}))
        return n

    def is_clone(self, other) -> bool:
        return isinstance(other, ModelPatcher) and other.model is self.model

    def _normalize_key(self, key: str) -> str | None:
        if self._param_names is None:
            self._param_names = {n for n, _ in self.model.named_parameters()}
        if key.startswith(PATCH_KEY_PREFIX):
            key = key[len(PATCH_KEY_PREFIX):]
        return key if key in self._param_names else None

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list[str]:
        """Queue patches; returns the keys that name a UNet weight (others are ignored, as LoRA
        files routinely carry text-encoder keys too)."""
        added = []
        for key, value in patches.items():
            k = self._normalize_key(key)
            if k is None:
                continue
            self.patches.setdefault(k, []).append((strength_patch, value, strength_model))
            added.append(key)
        self.patches_uuid = uuid.uuid4()
        return added

    def remove_patches(self) -> None:
        self.patches = {}
        self.patches_uuid = uuid.uuid4()

    def get_key_patches(self) -> dict:
        return {k: list(v) for k, v in self.patches.items()}

    def base_weights(self) -> dict[str, torch.Tensor]:
        """Every parameter's base (unpatched) tensor, whichever patcher's patches are applied now."""
        backup = self.model._lg_patch_state["backup"]
        return {k: backup.get(k, p) for k, p in self.model.named_parameters()}

    def merge_patches(self) -> dict[str, list]:
        """{parameter: [(base,), *patches]}: this model's weights as patch values for another model
        (ComfyUI's `get_key_patches` layout; the merge nodes add them to a clone of the first model)."""
        return {k: [(w,)] + list(self.patches.get(k, ())) for k, w in self.base_weights().items()}

    def patched_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's state dict with this patcher's patches applied (new tensors for the patched
        weights only), without patching the module itself: what a saved checkpoint holds."""
        sd = self.model.state_dict()
        base = self.base_weights()
        for k in sd:
            if k in base:
                sd[k] = base[k].detach()
        for k, plist in self.patches.items():
            sd[k] = apply_patches(k, sd[k], plist)
        return sd

    # -- applying patches ------------------------------------------------------------------------
    def is_patched(self) -> bool:
        state = self.model._lg_patch_state
        return state["owner"] is self and state["uuid"] == self.patches_uuid

    def patch_model(self, device_to=None) -> None:
        """Move the module to `device_to` and make its weights this patcher's (base + patches)."""
        if device_to is not None:
            self.model.to(device_to)
        state = self.model._lg_patch_state
        if state["owner"] is self and state["uuid"] == self.patches_uuid:
            return
        self._restore_base()
        for key, plist in self.patches.items():
            module, name = _module_and_name(self.model, key)
            base = getattr(module, name)
            state["backup"][key] = base
            patched = apply_patches(key, base.data, plist)
            setattr(module, name, torch.nn.Parameter(patched, requires_grad=False))
        state["owner"], state["uuid"] = self, self.patches_uuid

    def unpatch_model(self, offload: bool = False) -> None:
        if self.model._lg_patch_state["owner"] is self:
            self._restore_base()
        if offload:
            self.model.to(self.offload_device)

    def _restore_base(self) -> None:
        state = self.model._lg_patch_state
        for key, base in state["backup"].items():
            module, name = _module_and_name(self.model, key)
            if base.device != getattr(module, name).device:
                base.data = base.data.to(getattr(module, name).device)
            setattr(module, name, base)
        state["backup"] = {}
        state["owner"] = state["uuid"] = None

    # -- running ---------------------------------------------------------------------------------
    def memory_required(self, shape) -> int:
        return memory.estimate_unet_memory(self.model.config, shape, self.dtype)

    def encode_adm(self, cond: dict, batch: int):
        """The UNet's `y` for one conditioning dict, repeated to `batch` rows; None for SD1/SD2
        (SDXL size conditioning, unCLIP image embeddings: diffusion/models/adm.py)."""
        from diffusion.models.adm import encode_adm

        return encode_adm(self.arch, self.model.config, cond, batch)

    def apply_model(self, x, sigma, c_crossattn, y=None, transformer_options=None, control=None,
                    c_concat=None):
        """Denoised x0 for the noisy latent `x` (sampler space) at noise level `sigma` [B]; through
        the unet function wrapper when one is set (set_model_unet_function_wrapper)."""
        wrapper = self.model_options.get("model_function_wrapper")
        if wrapper is None:
            return self._apply_model(x, sigma, c_crossattn, y, transformer_options, control, c_concat)

        def inner(input, timestep, **c):
            return self._apply_model(input, timestep, **c)

        c = {"c_crossattn": c_crossattn, "y": y, "transformer_options": transformer_options, "control": control,
             "c_concat": c_concat}
        return wrapper(inner, {"input": x, "timestep": sigma, "c": c,
                               "cond_or_uncond": (transformer_options or {}).get("cond_or_uncond")})

    def _apply_model(self, x, sigma, c_crossattn, y=None, transformer_options=None, control=None,
                     c_concat=None):
        ms = self.model_sampling
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0])
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:  # inpainting models take the masked image as extra channels
            xc = torch.cat([xc, c_concat.to(xc)], dim=1)
        t = ms.timestep(sigma.cpu()).float()

        if not self.is_patched() or next(self.model.parameters()).device != self.load_device:
            memory.load_models([self], self.memory_required(xc.shape))
        device, dtype = self.load_device, self.dtype
        options = _merge_transformer_options(self.model_options.get("transformer_options", {}),
                                             transformer_options or {})
        options["sigmas"] = sigma
        with torch.inference_mode():
            out = self.model(xc.to(device, dtype), t.to(device), c_crossattn.to(device, dtype),
                             y=None if y is None else y.to(device, dtype), control=control,
                             transformer_options=options)
        out = out.to(x.device, torch.float32)
        return ms.calculate_denoised(sigma, out, x.float())

    def __call__(self, *args, **kwargs):
        return self.apply_model(*args, **kwargs)


# -- patch math (the value layouts are in the module docstring) ---------------------------------------

def _copy_transformer_options(options: dict) -> dict:
    out = dict(options)
    if "patches" in options:
        out["patches"] = {k: list(v) for k, v in options["patches"].items()}
    if "patches_replace" in options:
        out["patches_replace"] = {k: dict(v) for k, v in options["patches_replace"].items()}
    return out


def _merge_transformer_options(base: dict, extra: dict) -> dict:
    """The model's transformer options plus a call's: patch lists are joined, replace tables merged
    (the call's entry wins for one block), other keys taken from the call."""
    merged = _copy_transformer_options(base)
    for k, v in extra.items():
        if k == "patches":
            for which, fns in v.items():
                merged.setdefault("patches", {}).setdefault(which, []).extend(fns)
        elif k == "patches_replace":
            for which, table in v.items():
                merged.setdefault("patches_replace", {}).setdefault(which, {}).update(table)
        else:
            merged[k] = v
    return merged
