"""LoRA files: their key formats, the key maps onto our networks, and extraction from model differences.

A LoRA file names each patched layer by a "module key" plus a suffix per tensor. The module keys of
the formats in use (ComfyUI's `comfy/lora.py` key maps accept the same ones):

| format | UNet module key | text-encoder module key |
|---|---|---|
| kohya (sd-scripts, LyCORIS) | `lora_unet_<diffusers name, "." -> "_">` or `lora_unet_<original name, "_">` | `lora_te_…` (SD1, SD2, refiner), `lora_te1_…` / `lora_te2_…` (SDXL L / bigG), transformers' layer names |
| diffusers / PEFT | `unet.<diffusers name>` (old attention processors: `….processor.to_q`) | `text_encoder.…`, `text_encoder_2.…` |
| SimpleTuner LyCORIS | `lycoris_<diffusers name, "_">` | |
| generic (ComfyUI's LoraSave) | `diffusion_model.<original name>` | `text_encoders.clip_<l/h/g>.transformer.<name>` |

Suffixes (`_ROLES`): `lora_up/lora_down(/lora_mid)`, `lora_B/lora_A`, `lora.up/lora.down`, `_lora.up/_lora.down`,
`alpha`, `dora_scale` (PEFT: `lora_magnitude_vector`), LoHa `hada_*`, LoKr `lokr_*`, full `diff` / `diff_b`
/ `set_weight`. The patch values they become are diffusion.model_patcher's (whose docstring has the maths).

OpenCLIP towers (SD2's H, SDXL's bigG) run with transformers' layer names, so kohya and diffusers keys map
onto q_proj/k_proj/v_proj directly. A LoRA naming the open_clip file layout (`…resblocks_0_attn_in_proj`,
generic `text_encoders.clip_g.transformer.transformer.resblocks.0.attn.in_proj`) targets the stacked
in_proj: diffusion.text.encoder splits it into the q, k and v rows.
"""
from __future__ import annotations

import logging

import torch

from diffusion.loading.diffusers_layout import UNET_RESNET, UNET_TOP
from diffusion.weight_patches import patch_error

log = logging.getLogger(__name__)

# --- the UNet: original (CompVis/SGM) names -> diffusers names -------------------------------------

_RESNET = {original: diffusers for diffusers, original in UNET_RESNET.items()}
_TOP = {original: diffusers for diffusers, original in UNET_TOP.items()}


def _unet_blocks(config, names: set[str]) -> dict[str, tuple[str, bool]]:
    """Original block prefix -> (diffusers prefix, is a resnet). diffusers groups each level's
    resnets/attentions, the original numbers every block in order; up_blocks run from the deepest level."""
    blocks = {k: (v, False) for k, v in _TOP.items()}
    levels = len(config.channel_mult)
    k = 1
    for i in range(levels):
        for j in range(config.num_res_blocks[i]):
            blocks[f"input_blocks.{k}.0"] = (f"down_blocks.{i}.resnets.{j}", True)
            blocks[f"input_blocks.{k}.1"] = (f"down_blocks.{i}.attentions.{j}", False)
            k += 1
        if i < levels - 1:
            blocks[f"input_blocks.{k}.0.op"] = (f"down_blocks.{i}.downsamplers.0.conv", False)
            k += 1
    blocks["middle_block.0"] = ("mid_block.resnets.0", True)
    if "middle_block.1.norm.weight" in names:  # a transformer between the two resnets
        blocks["middle_block.1"] = ("mid_block.attentions.0", False)
        blocks["middle_block.2"] = ("mid_block.resnets.1", True)
    else:
        blocks["middle_block.1"] = ("mid_block.resnets.1", True)
    k = 0
    for i in range(levels):
        n = config.num_res_blocks[levels - 1 - i]
        for j in range(n + 1):
            blocks[f"output_blocks.{k}.0"] = (f"up_blocks.{i}.resnets.{j}", True)
            slot = 1
            if f"output_blocks.{k}.1.norm.weight" in names:
                blocks[f"output_blocks.{k}.1"] = (f"up_blocks.{i}.attentions.{j}", False)
                slot = 2
            if j == n and i < levels - 1:
                blocks[f"output_blocks.{k}.{slot}.conv"] = (f"up_blocks.{i}.upsamplers.0.conv", False)
            k += 1
    return blocks


def unet_diffusers_names(config, param_names) -> dict[str, str]:
    """Our UNet parameter name (original layout) -> the diffusers UNet2DConditionModel name."""
    names = set(param_names)
    blocks = _unet_blocks(config, names)
    out = {}
    for name in names:
        parts = name.split(".")
        for m in (4, 3, 2):
            block = ".".join(parts[:m])
            if block in blocks:
                target, resnet = blocks[block]
                rest = parts[m:]
                if resnet:
                    inner = ".".join(rest[:2]) if ".".join(rest[:2]) in _RESNET else rest[0]
                    rest = [_RESNET[inner]] + rest[len(inner.split(".")):]
                out[name] = ".".join([target, *rest])
                break
    return out


def unet_key_map(model) -> dict[str, str]:
    """LoRA module key -> UNet parameter name, for every format in the module docstring."""
    names = [n for n, _ in model.model.named_parameters()]
    key_map = {}
    for name in names:
        if name.endswith(".weight"):
            module = name[: -len(".weight")]
            key_map[f"lora_unet_{module.replace('.', '_')}"] = name
            key_map[f"diffusion_model.{module}"] = name
        else:
            key_map[f"diffusion_model.{name}"] = name
    for name, diffusers in unet_diffusers_names(model.model.config, names).items():
        if not name.endswith(".weight"):
            continue
        module = diffusers[: -len(".weight")]
        flat = module.replace(".", "_")
        key_map[f"lora_unet_{flat}"] = name
        key_map[f"lycoris_{flat}"] = name
        processor = module.replace(".to_", ".processor.to_")
        if processor.endswith(".to_out.0"):
            processor = processor[:-2]
        for prefix in ("", "unet."):
            key_map[prefix + module] = name
            key_map[prefix + processor] = name
    return key_map


# --- the text encoders ------------------------------------------------------------------------------

def _tower_prefixes(towers) -> dict[str, tuple[list[str], list[str]]]:
    """Tower key -> (kohya prefixes, diffusers prefixes), as ComfyUI assigns them: CLIP-L and H are
    `lora_te_`/`lora_te1_`/`text_encoder.`; bigG is the second encoder beside CLIP-L (SDXL) and the
    only one otherwise (refiner)."""
    out = {}
    for key in towers:
        if key in ("l", "h"):
            out[key] = (["lora_te_", "lora_te1_"], ["text_encoder."])
        elif key == "g" and "l" in towers:
            out[key] = (["lora_te2_"], ["text_encoder_2."])
        else:
            out[key] = (["lora_te_"], ["text_encoder."])
    return out


def clip_key_map(clip) -> dict[str, str]:
    """LoRA module key -> CLIP patch key (`clip_<tower>.transformer.<name>`, see CLIP.add_patches)."""
    key_map = {}
    stack = clip.patcher.model
    names = [n for n, _ in stack.named_parameters()]
    for name in names:
        if name.endswith(".weight"):
            key_map[f"text_encoders.{name[: -len('.weight')]}"] = name
    prefixes = _tower_prefixes(list(clip.encoders))
    for tower, model in clip.encoders.items():
        root = f"clip_{tower}.transformer."
        kohya, diffusers = prefixes[tower]
        for name in names:
            if not (name.startswith(root + "text_model.encoder.layers.") and name.endswith(".weight")):
                continue
            module = name[len(root): -len(".weight")]
            if module.rsplit(".", 2)[-2] in ("layer_norm1", "layer_norm2"):
                continue
            for p in kohya:
                key_map[p + module.replace(".", "_")] = name
            for p in diffusers:
                key_map[p + module] = name
        # open_clip file names (stacked in_proj, c_fc, ...): patch_targets splits them onto our layers
        for file_key in model.key_map:
            if not file_key.endswith(("_weight", ".weight")) or "ln_" in file_key:
                continue
            module = file_key[: -len(".weight")]
            key_map[f"text_encoders.{root}{module}"] = root + file_key
            for p in kohya:
                key_map[p + module.replace(".", "_")] = root + file_key
    return key_map


# --- reading a LoRA file ----------------------------------------------------------------------------

_ROLES = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    "_lora.up.weight": "up", "_lora.down.weight": "down", ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_B.weight": "up", ".lora_A.weight": "down", ".lora_B.default.weight": "up",
    ".lora_A.default.weight": "down", ".lora_linear_layer.up.weight": "up",
    ".lora_linear_layer.down.weight": "down", ".lora_B": "up", ".lora_A": "down",
    ".alpha": "alpha", ".dora_scale": "dora_scale", ".lora_magnitude_vector": "dora_scale",
    ".lora_magnitude_vector.weight": "dora_scale",
    **{f".hada_{n}": f"hada_{n}" for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f".lokr_{n}": f"lokr_{n}" for n in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")},
    ".diff": "diff", ".diff_b": "diff_b", ".set_weight": "set", ".w_norm": "diff", ".b_norm": "diff_b",
}
_SUFFIXES = sorted(_ROLES, key=len, reverse=True)  # a longer suffix wins over one it ends with


def group_by_module(sd: dict) -> tuple[dict[str, dict[str, str]], list[str]]:
    """({module key: {role: file key}}, file keys with no known suffix)."""
    modules, unknown = {}, []
    for key in sd:
        for suffix in _SUFFIXES:
            if key.endswith(suffix):
                modules.setdefault(key[: -len(suffix)], {})[_ROLES[suffix]] = key
                break
        else:
            unknown.append(key)
    return modules, unknown


def _bias_name(target: str) -> str:
    return (target[: -len(".weight")] if target.endswith(".weight") else target) + ".bias"


def module_patches(sd: dict, roles: dict[str, str], target: str) -> dict[str, object]:
    """{patch key: patch value} that one module's tensors make on its `target` weight."""
    t = {role: sd[key] for role, key in roles.items()}
    alpha = float(t["alpha"].float().item()) if "alpha" in t else None
    dora = t.get("dora_scale")
    out = {}
    if "up" in t and "down" in t:
        out[target] = ("lora", (t["up"], t["down"], alpha, t.get("mid"), dora))
    elif "hada_w1_a" in t:
        out[target] = ("loha", (t["hada_w1_a"], t["hada_w1_b"], alpha, t["hada_w2_a"], t["hada_w2_b"],
                                t.get("hada_t1"), t.get("hada_t2"), dora))
    elif any(r.startswith("lokr_") for r in t):
        out[target] = ("lokr", tuple(t.get(f"lokr_{n}") for n in ("w1", "w2")) + (alpha,) + tuple(
            t.get(f"lokr_{n}") for n in ("w1_a", "w1_b", "w2_a", "w2_b", "t2")) + (dora,))
    if "diff" in t:
        out[target] = ("diff", (t["diff"],))
    if "set" in t:
        out[target] = ("set", (t["set"],))
    if "diff_b" in t:
        out[_bias_name(target)] = ("diff", (t["diff_b"],))
    return out


def load_lora(sd: dict, model=None, clip=None) -> tuple[dict, dict, list[str]]:
    """(UNet patches, CLIP patches, file keys used by neither) of a LoRA state dict. A patch whose
    shape does not fit its weight (a LoRA for another architecture) counts as unused, as ComfyUI skips it."""
    unet_map = unet_key_map(model) if model is not None else {}
    clip_map = clip_key_map(clip) if clip is not None else {}
    unet_shapes = {n: p.shape for n, p in model.model.named_parameters()} if model is not None else {}
    clip_shapes = {n: p.shape for n, p in clip.patcher.model.named_parameters()} if clip is not None else {}
    modules, unused = group_by_module(sd)
    model_patches, clip_patches = {}, {}
    for module, roles in modules.items():
        if module in unet_map:
            patches = module_patches(sd, roles, unet_map[module])
            ok = all(k in unet_shapes and patch_error(k, v, unet_shapes[k]) is None for k, v in patches.items())
            dest = model_patches
        elif module in clip_map:
            patches = module_patches(sd, roles, clip_map[module])
            ok = all(_fits_clip(clip, clip_shapes, k, v) for k, v in patches.items())
            dest = clip_patches
        else:
            patches, ok = {}, False
        if patches and ok:
            dest.update(patches)
        else:
            if patches:
                log.debug("LoRA module %s does not fit its weight; skipped", module)
            unused.extend(roles.values())
    return model_patches, clip_patches, sorted(unused)


def _fits_clip(clip, shapes, key, value) -> bool:
    targets = clip.patcher.model.patch_targets(key, value)
    return bool(targets) and all(patch_error(n, part, shapes[n]) is None for n, part in targets)


def apply_lora(model, clip, sd: dict, strength_model: float, strength_clip: float, name: str = "LoRA"):
    """(model clone, clip clone) with the LoRA `sd` added at the given strengths; either input may
    be None (LoraLoaderModelOnly). The originals are not changed; no base weight is copied."""
    model_patches, clip_patches, unused = load_lora(sd, model, clip)
    new_model = new_clip = None
    if model is not None:
        new_model = model.clone()
        new_model.add_patches(model_patches, strength_model)
    if clip is not None:
        new_clip = clip.clone()
        new_clip.add_patches(clip_patches, strength_clip)
    if unused:
        log.warning("%s: %d of %d keys not used (no matching layer in this model)", name, len(unused), len(sd))
        log.debug("%s: unused keys, first ones: %s", name, unused[:10])
    log.info("%s: %d UNet and %d text-encoder weights patched", name, len(model_patches), len(clip_patches))
    return new_model, new_clip


# --- extraction (LoraSave) ----------------------------------------------------------------------------

CLAMP_QUANTILE = 0.99


def extract_lora(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) of rank ≤ `rank` approximating `diff` (a linear or conv weight difference) by a
    truncated SVD with the singular values folded into up; both are clamped to ±(the 0.99 quantile of
    their values together), as ComfyUI's nodes_lora_extract does, so extracted files match."""
    conv = diff.dim() == 4
    out_dim, in_dim = diff.shape[:2]
    kernel = tuple(diff.shape[2:]) if conv else None
    rank = min(rank, in_dim, out_dim)
    mat = diff.float().flatten(1) if conv and kernel != (1, 1) else diff.float().reshape(out_dim, -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    u = u[:, :rank] * s[:rank]
    vh = vh[:rank]
    joint = torch.cat([u.flatten(), vh.flatten()])
    hi = _quantile(joint, CLAMP_QUANTILE)
    u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
    if conv:
        u = u.reshape(out_dim, rank, 1, 1)
        vh = vh.reshape(rank, in_dim, *kernel)
    return u, vh


def _quantile(t: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile (linear interpolation), also for tensors beyond its 16M-element limit."""
    if t.numel() <= 16_000_000:
        return torch.quantile(t, q)
    pos = q * (t.numel() - 1)
    lo = int(pos)
    vals = torch.kthvalue(t, lo + 1).values, torch.kthvalue(t, min(lo + 2, t.numel())).values
    return vals[0] + (vals[1] - vals[0]) * (pos - lo)


def lora_from_difference(weights: dict[str, torch.Tensor], rank: int, prefix: str, full_diff: bool = False,
                         bias_diff: bool = True, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """LoRA tensors (generic key format `<prefix><module>.…`) for a model whose weights ARE the
    difference of two models (ModelMergeSubtract's output): matrices and convs by `extract_lora`
    (or as `.diff` when `full_diff`), other weights as `.diff` and biases as `.diff_b` if `bias_diff`."""
    out = {}
    for key, w in weights.items():
        if key.endswith(".weight"):
            module = prefix + key[: -len(".weight")]
            if full_diff:
                out[f"{module}.diff"] = w.to(dtype).contiguous()
            elif w.dim() < 2:
                if bias_diff:
                    out[f"{module}.diff"] = w.to(dtype).contiguous()
            else:
                up, down = extract_lora(w, rank)
                out[f"{module}.lora_up.weight"] = up.to(dtype).contiguous()
                out[f"{module}.lora_down.weight"] = down.to(dtype).contiguous()
        elif bias_diff and key.endswith(".bias"):
            out[f"{prefix}{key[: -len('.bias')]}.diff_b"] = w.to(dtype).contiguous()
    return out
