"""/object_info of every node class issue 16 covers, against COMPAT §9, in one table-driven test.

The rows below are COMPAT.md §9's table rows, copied verbatim (core table: the nodes.py classes that
the second-half issue does not take, i.e. all but LoRA, ControlNet, GLIGEN, CLIP vision, style/unCLIP
and CLIPLoader/DualCLIPLoader/UNETLoader; extras table: the classes issue 16 names). Classes issue 16
names that COMPAT lists without a row are written in the same notation from ComfyUI's
comfy_extras/nodes_custom_sampler.py (EXTRAS_WITHOUT_ROW; categories as COMPAT gives their siblings).
The tests never read ../shared.

Legend (COMPAT §9): `name:TYPE=default (min..max, step s)`; `COMBO[a|b]` literal options, `COMBO⟨…⟩`
options computed at request time; `{multiline}`, `{control_after_generate}`, `{image_upload}`;
`‖ opt:` optional inputs, `‖ hidden:` hidden inputs; outputs `TYPE` or `name:TYPE`, `—` none,
`TYPE[list]` a list output; flags OUT (output_node), DEPR (deprecated), EXP (experimental).

Per-family tests (tests/test_*object_info*.py) check what this table cannot say: display names,
the files a combo lists, tooltips.
"""
from __future__ import annotations

import re

import pytest

from tests.sdnodes_env import temporary_base
from tests.test_sampling_registry import COMPAT_ORDER

# COMPAT §9, core table (nodes.py, python_module "nodes"): 47 rows.
CORE_ROWS = r"""
| KSampler | sampling | model:MODEL; seed:INT=0 (0..2^64-1) {control_after_generate}; steps:INT=20 (1..10000); cfg:FLOAT=8.0 (0.0..100.0, step 0.1); sampler_name:COMBO⟨SAMPLERS §10⟩; scheduler:COMBO⟨SCHEDULERS §10⟩; positive:CONDITIONING; negative:CONDITIONING; latent_image:LATENT; denoise:FLOAT=1.0 (0.0..1.0, step 0.01) | LATENT | ★ |
| CheckpointLoaderSimple | loaders | ckpt_name:COMBO⟨checkpoints⟩ | MODEL, CLIP, VAE | ★ |
| CLIPTextEncode | conditioning | text:STRING {multiline}; clip:CLIP | CONDITIONING | ★ |
| CLIPSetLastLayer | conditioning | clip:CLIP; stop_at_clip_layer:INT=-1 (-24..-1, step 1) | CLIP | ★ |
| VAEDecode | latent | samples:LATENT; vae:VAE | IMAGE | ★ |
| VAEEncode | latent | pixels:IMAGE; vae:VAE | LATENT | ★ |
| VAEEncodeForInpaint | latent/inpaint | pixels:IMAGE; vae:VAE; mask:MASK; grow_mask_by:INT=6 (0..64, step 1) | LATENT | ★ |
| VAELoader | loaders | vae_name:COMBO⟨vae (+taesd/taesdxl/taesd3/taef1 if enc+dec in vae_approx, +video taes, +'pixel_space')⟩ | VAE | ★ |
| EmptyLatentImage | latent | width:INT=512 (16..16384, step 8); height:INT=512 (16..16384, step 8); batch_size:INT=1 (1..4096) | LATENT | ★ |
| LatentUpscale | latent | samples:LATENT; upscale_method:COMBO[nearest-exact\|bilinear\|area\|bicubic\|bislerp]; width:INT=512 (0..16384, step 8); height:INT=512 (0..16384, step 8); crop:COMBO[disabled\|center] | LATENT | ★ |
| LatentUpscaleBy | latent | samples:LATENT; upscale_method:COMBO[nearest-exact\|bilinear\|area\|bicubic\|bislerp]; scale_by:FLOAT=1.5 (0.01..8.0, step 0.01) | LATENT | ★ |
| LatentFromBatch | latent/batch | samples:LATENT; batch_index:INT=0 (0..63); length:INT=1 (1..64) | LATENT |  |
| RepeatLatentBatch | latent/batch | samples:LATENT; amount:INT=1 (1..64) | LATENT |  |
| SaveImage | image | images:IMAGE; filename_prefix:STRING='ComfyUI' ‖ hidden: PROMPT,EXTRA_PNGINFO | — | ★ OUT |
| PreviewImage | image | images:IMAGE ‖ hidden: PROMPT,EXTRA_PNGINFO | — | ★ OUT |
| LoadImage | image | image:COMBO⟨input/ top-level image files {image_upload}⟩ | IMAGE, MASK | ★ |
| LoadImageMask | mask | image:COMBO⟨input/ top-level files {image_upload}⟩; channel:COMBO[alpha\|red\|green\|blue] | MASK | ★ |
| LoadImageOutput | image | image:COMBO⟨remote: /internal/files/output {image_upload, image_folder:output}⟩ | IMAGE, MASK | EXP |
| ImageScale | image/upscaling | image:IMAGE; upscale_method:COMBO[nearest-exact\|bilinear\|area\|bicubic\|lanczos]; width:INT=512 (0..16384, step 1); height:INT=512 (0..16384, step 1); crop:COMBO[disabled\|center] | IMAGE | ★ |
| ImageScaleBy | image/upscaling | image:IMAGE; upscale_method:COMBO[nearest-exact\|bilinear\|area\|bicubic\|lanczos]; scale_by:FLOAT=1.0 (0.01..8.0, step 0.01) | IMAGE | ★ |
| ImageInvert | image | image:IMAGE | IMAGE |  |
| ImageBatch | image | image1:IMAGE; image2:IMAGE | IMAGE | DEPR |
| ImagePadForOutpaint | image | image:IMAGE; left:INT=0 (0..16384, step 8); top:INT=0 (0..16384, step 8); right:INT=0 (0..16384, step 8); bottom:INT=0 (0..16384, step 8); feathering:INT=40 (0..16384, step 1) | IMAGE, MASK | ★ |
| EmptyImage | image | width:INT=512 (1..16384, step 1); height:INT=512 (1..16384, step 1); batch_size:INT=1 (1..4096); color:INT=0 (0..16777215, step 1) | IMAGE |  |
| ConditioningAverage | conditioning | conditioning_to:CONDITIONING; conditioning_from:CONDITIONING; conditioning_to_strength:FLOAT=1.0 (0.0..1.0, step 0.01) | CONDITIONING |  |
| ConditioningCombine | conditioning | conditioning_1:CONDITIONING; conditioning_2:CONDITIONING | CONDITIONING | ★ |
| ConditioningConcat | conditioning | conditioning_to:CONDITIONING; conditioning_from:CONDITIONING | CONDITIONING |  |
| ConditioningSetArea | conditioning | conditioning:CONDITIONING; width:INT=64 (64..16384, step 8); height:INT=64 (64..16384, step 8); x:INT=0 (0..16384, step 8); y:INT=0 (0..16384, step 8); strength:FLOAT=1.0 (0.0..10.0, step 0.01) | CONDITIONING |  |
| ConditioningSetAreaPercentage | conditioning | conditioning:CONDITIONING; width:FLOAT=1.0 (0..1.0, step 0.01); height:FLOAT=1.0 (0..1.0, step 0.01); x:FLOAT=0 (0..1.0, step 0.01); y:FLOAT=0 (0..1.0, step 0.01); strength:FLOAT=1.0 (0.0..10.0, step 0.01) | CONDITIONING |  |
| ConditioningSetAreaStrength | conditioning | conditioning:CONDITIONING; strength:FLOAT=1.0 (0.0..10.0, step 0.01) | CONDITIONING |  |
| ConditioningSetMask | conditioning | conditioning:CONDITIONING; mask:MASK; strength:FLOAT=1.0 (0.0..10.0, step 0.01); set_cond_area:COMBO[default\|mask bounds] | CONDITIONING |  |
| KSamplerAdvanced | sampling | model:MODEL; add_noise:COMBO[enable\|disable]; noise_seed:INT=0 (0..2^64-1) {control_after_generate}; steps:INT=20 (1..10000); cfg:FLOAT=8.0 (0.0..100.0, step 0.1); sampler_name:COMBO⟨SAMPLERS §10⟩; scheduler:COMBO⟨SCHEDULERS §10⟩; positive:CONDITIONING; negative:CONDITIONING; latent_image:LATENT; start_at_step:INT=0 (0..10000); end_at_step:INT=10000 (0..10000); return_with_leftover_noise:COMBO[disable\|enable] | LATENT | ★ |
| SetLatentNoiseMask | latent/inpaint | samples:LATENT; mask:MASK | LATENT | ★ |
| LatentComposite | latent | samples_to:LATENT; samples_from:LATENT; x:INT=0 (0..16384, step 8); y:INT=0 (0..16384, step 8); feather:INT=0 (0..16384, step 8) | LATENT |  |
| LatentBlend | _for_testing | samples1:LATENT; samples2:LATENT; blend_factor:FLOAT=0.5 (0..1, step 0.01) | LATENT |  |
| LatentRotate | latent/transform | samples:LATENT; rotation:COMBO[none\|90 degrees\|180 degrees\|270 degrees] | LATENT |  |
| LatentFlip | latent/transform | samples:LATENT; flip_method:COMBO[x-axis: vertically\|y-axis: horizontally] | LATENT |  |
| LatentCrop | latent/transform | samples:LATENT; width:INT=512 (64..16384, step 8); height:INT=512 (64..16384, step 8); x:INT=0 (0..16384, step 8); y:INT=0 (0..16384, step 8) | LATENT |  |
| VAEDecodeTiled | _for_testing | samples:LATENT; vae:VAE; tile_size:INT=512 (64..4096, step 32); overlap:INT=64 (0..4096, step 32); temporal_size:INT=64 (8..4096, step 4); temporal_overlap:INT=8 (4..4096, step 4) | IMAGE | ★ |
| VAEEncodeTiled | _for_testing | pixels:IMAGE; vae:VAE; tile_size:INT=512 (64..4096, step 64); overlap:INT=64 (0..4096, step 32); temporal_size:INT=64 (8..4096, step 4); temporal_overlap:INT=8 (4..4096, step 4) | LATENT |  |
| InpaintModelConditioning | conditioning/inpaint | positive:CONDITIONING; negative:CONDITIONING; vae:VAE; pixels:IMAGE; mask:MASK; noise_mask:BOOLEAN=True | positive:CONDITIONING, negative:CONDITIONING, latent:LATENT | ★ |
| CheckpointLoader | advanced/loaders | config_name:COMBO⟨configs⟩; ckpt_name:COMBO⟨checkpoints⟩ | MODEL, CLIP, VAE | DEPR |
| DiffusersLoader | advanced/loaders/deprecated | model_path:COMBO⟨diffusers dirs containing model_index.json⟩ | MODEL, CLIP, VAE |  |
| LoadLatent | _for_testing | latent:COMBO⟨input/*.latent (top level)⟩ | LATENT |  |
| SaveLatent | _for_testing | samples:LATENT; filename_prefix:STRING='latents/ComfyUI' ‖ hidden: PROMPT,EXTRA_PNGINFO | — | OUT |
| ConditioningZeroOut | advanced/conditioning | conditioning:CONDITIONING | CONDITIONING |  |
| ConditioningSetTimestepRange | advanced/conditioning | conditioning:CONDITIONING; start:FLOAT=0.0 (0.0..1.0, step 0.001); end:FLOAT=1.0 (0.0..1.0, step 0.001) | CONDITIONING |  |
"""

# COMPAT §9, comfy_extras table: the rows of the classes issue 16 names.
EXTRAS_ROWS = r"""
| ImageCrop (nodes_images) | image/transform | image:IMAGE; width:INT=512 (1..16384, step 1); height:INT=512 (1..16384, step 1); x:INT=0 (0..16384, step 1); y:INT=0 (0..16384, step 1) | IMAGE |  |
| ImageCompositeMasked (nodes_mask) | image | destination:IMAGE; source:IMAGE; x:INT=0 (0..16384, step 1); y:INT=0 (0..16384, step 1); resize_source:BOOLEAN=False ‖ opt: mask:MASK | IMAGE |  |
| LatentCompositeMasked (nodes_mask) | latent | destination:LATENT; source:LATENT; x:INT=0 (0..16384, step 8); y:INT=0 (0..16384, step 8); resize_source:BOOLEAN=False ‖ opt: mask:MASK | LATENT |  |
| MaskToImage (nodes_mask) | mask | mask:MASK | IMAGE |  |
| ImageToMask (nodes_mask) | mask | image:IMAGE; channel:COMBO[red\|green\|blue\|alpha] | MASK |  |
| SolidMask (nodes_mask) | mask | value:FLOAT=1.0 (0.0..1.0, step 0.01); width:INT=512 (1..16384, step 1); height:INT=512 (1..16384, step 1) | MASK |  |
| InvertMask (nodes_mask) | mask | mask:MASK | MASK |  |
| GrowMask (nodes_mask) | mask | mask:MASK; expand:INT=0 (-16384..16384, step 1); tapered_corners:BOOLEAN=True | MASK |  |
| FeatherMask (nodes_mask) | mask | mask:MASK; left:INT=0 (0..16384, step 1); top:INT=0 (0..16384, step 1); right:INT=0 (0..16384, step 1); bottom:INT=0 (0..16384, step 1) | MASK |  |
| ThresholdMask (nodes_mask) | mask | mask:MASK; value:FLOAT=0.5 (0.0..1.0, step 0.01) | MASK |  |
| ImageBlend (nodes_post_processing) | image/postprocessing | image1:IMAGE; image2:IMAGE; blend_factor:FLOAT=0.5 (0.0..1.0, step 0.01); blend_mode:COMBO[normal\|multiply\|screen\|overlay\|soft_light\|difference] | IMAGE |  |
| ImageBlur (nodes_post_processing) | image/postprocessing | image:IMAGE; blur_radius:INT=1 (1..31, step 1); sigma:FLOAT=1.0 (0.1..10.0, step 0.1) | IMAGE |  |
| ImageSharpen (nodes_post_processing) | image/postprocessing | image:IMAGE; sharpen_radius:INT=1 (1..31, step 1); sigma:FLOAT=1.0 (0.1..10.0, step 0.01); alpha:FLOAT=1.0 (0.0..5.0, step 0.01) | IMAGE |  |
| ImageScaleToTotalPixels (nodes_post_processing) | image/upscaling | image:IMAGE; upscale_method:COMBO[nearest-exact\|bilinear\|area\|bicubic\|lanczos]; megapixels:FLOAT=1.0 (0.01..16.0, step 0.01); resolution_steps:INT=1 (1..256) | IMAGE |  |
| RepeatImageBatch (nodes_images) | image/batch | image:IMAGE; amount:INT=1 (1..4096) | IMAGE |  |
| ImageFromBatch (nodes_images) | image/batch | image:IMAGE; batch_index:INT=0 (0..4095); length:INT=1 (1..4096) | IMAGE |  |
| LatentBatchSeedBehavior (nodes_latent) | latent/advanced | samples:LATENT; seed_behavior:COMBO[random\|fixed]=fixed | LATENT |  |
| SamplerCustom (nodes_custom_sampler) | sampling/custom_sampling | model:MODEL; add_noise:BOOLEAN=True; noise_seed:INT=0 (0..2^64-1) {control_after_generate}; cfg:FLOAT=8.0 (0.0..100.0, step 0.1); positive:CONDITIONING; negative:CONDITIONING; sampler:SAMPLER; sigmas:SIGMAS; latent_image:LATENT | output:LATENT, denoised_output:LATENT |  |
| SamplerCustomAdvanced (nodes_custom_sampler) | sampling/custom_sampling | noise:NOISE; guider:GUIDER; sampler:SAMPLER; sigmas:SIGMAS; latent_image:LATENT | output:LATENT, denoised_output:LATENT |  |
| BasicScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | model:MODEL; scheduler:COMBO⟨SCHEDULERS §10⟩; steps:INT=20 (1..10000); denoise:FLOAT=1.0 (0.0..1.0, step 0.01) | SIGMAS |  |
| KarrasScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | steps:INT=20 (1..10000); sigma_max:FLOAT=14.614642 (0.0..5000.0, step 0.01); sigma_min:FLOAT=0.0291675 (0.0..5000.0, step 0.01); rho:FLOAT=7.0 (0.0..100.0, step 0.01) | SIGMAS |  |
| KSamplerSelect (nodes_custom_sampler) | sampling/custom_sampling/samplers | sampler_name:COMBO⟨SAMPLERS §10⟩ | SAMPLER |  |
| SplitSigmas (nodes_custom_sampler) | sampling/custom_sampling/sigmas | sigmas:SIGMAS; step:INT=0 (0..10000) | high_sigmas:SIGMAS, low_sigmas:SIGMAS |  |
| CFGGuider (nodes_custom_sampler) | sampling/custom_sampling/guiders | model:MODEL; positive:CONDITIONING; negative:CONDITIONING; cfg:FLOAT=8.0 (0.0..100.0, step 0.1) | GUIDER |  |
| BasicGuider (nodes_custom_sampler) | sampling/custom_sampling/guiders | model:MODEL; conditioning:CONDITIONING | GUIDER |  |
| RandomNoise (nodes_custom_sampler) | sampling/custom_sampling/noise | noise_seed:INT=0 (0..2^64-1) {control_after_generate} | NOISE |  |
| DisableNoise (nodes_custom_sampler) | sampling/custom_sampling/noise |  | NOISE |  |
| PreviewAny (nodes_preview_any) | utils | source:* | — | OUT |
"""

# Issue 16 names these; COMPAT lists them by module only. From ComfyUI's nodes_custom_sampler.py.
EXTRAS_WITHOUT_ROW = r"""
| ExponentialScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | steps:INT=20 (1..10000); sigma_max:FLOAT=14.614642 (0.0..5000.0, step 0.01); sigma_min:FLOAT=0.0291675 (0.0..5000.0, step 0.01) | SIGMAS |  |
| PolyexponentialScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | steps:INT=20 (1..10000); sigma_max:FLOAT=14.614642 (0.0..5000.0, step 0.01); sigma_min:FLOAT=0.0291675 (0.0..5000.0, step 0.01); rho:FLOAT=1.0 (0.0..100.0, step 0.01) | SIGMAS |  |
| BetaSamplingScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | model:MODEL; steps:INT=20 (1..10000); alpha:FLOAT=0.6 (0.0..50.0, step 0.01); beta:FLOAT=0.6 (0.0..50.0, step 0.01) | SIGMAS |  |
| SDTurboScheduler (nodes_custom_sampler) | sampling/custom_sampling/schedulers | model:MODEL; steps:INT=1 (1..10); denoise:FLOAT=1.0 (0..1.0, step 0.01) | SIGMAS |  |
| SplitSigmasDenoise (nodes_custom_sampler) | sampling/custom_sampling/sigmas | sigmas:SIGMAS; denoise:FLOAT=1.0 (0.0..1.0, step 0.01) | high_sigmas:SIGMAS, low_sigmas:SIGMAS |  |
| FlipSigmas (nodes_custom_sampler) | sampling/custom_sampling/sigmas | sigmas:SIGMAS | SIGMAS |  |
| SamplerEulerAncestral (nodes_custom_sampler) | sampling/custom_sampling/samplers | eta:FLOAT=1.0 (0.0..100.0, step 0.01); s_noise:FLOAT=1.0 (0.0..100.0, step 0.01) | SAMPLER |  |
| SamplerLMS (nodes_custom_sampler) | sampling/custom_sampling/samplers | order:INT=4 (1..100) | SAMPLER |  |
| SamplerDPMPP_2M_SDE (nodes_custom_sampler) | sampling/custom_sampling/samplers | solver_type:COMBO[midpoint\|heun]; eta:FLOAT=1.0 (0.0..100.0, step 0.01); s_noise:FLOAT=1.0 (0.0..100.0, step 0.01); noise_device:COMBO[gpu\|cpu] | SAMPLER |  |
| SamplerDPMPP_3M_SDE (nodes_custom_sampler) | sampling/custom_sampling/samplers | eta:FLOAT=1.0 (0.0..100.0, step 0.01); s_noise:FLOAT=1.0 (0.0..100.0, step 0.01); noise_device:COMBO[gpu\|cpu] | SAMPLER |  |
| SamplerDPMPP_SDE (nodes_custom_sampler) | sampling/custom_sampling/samplers | eta:FLOAT=1.0 (0.0..100.0, step 0.01); s_noise:FLOAT=1.0 (0.0..100.0, step 0.01); r:FLOAT=0.5 (0.0..100.0, step 0.01); noise_device:COMBO[gpu\|cpu] | SAMPLER |  |
"""

SCHEDULERS = "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal".split()
OUR_SAMPLERS = ["plms"]  # ours, after ComfyUI's list (COMPAT §10)
HIDDEN = {"PROMPT": "prompt", "EXTRA_PNGINFO": "extra_pnginfo", "UNIQUE_ID": "unique_id"}


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets (COMBO[...], COMBO⟨...⟩, (...), {...})."""
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "[⟨({":
            depth += 1
        elif ch in "]⟩)}":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            parts.append(cur)
            cur, i = "", i + len(sep)
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _number(text: str):
    if text == "2^64-1":
        return 2 ** 64 - 1
    return float(text) if "." in text else int(text)


ITEM = re.compile(r"(?P<name>\w+):(?P<type>COMBO\[[^\]]*\]|COMBO⟨[^⟩]*⟩|[A-Z_*]+)"
                  r"(?:=(?P<default>'[^']*'|[^\s(]+))?"
                  r"(?: \((?P<lo>-?[0-9.]+?)\.\.(?P<hi>[^,)]+)(?:, step (?P<step>[^)]+))?\))?"
                  r"(?: \{(?P<flags>[^}]*)\})?$")


def parse_input(text: str) -> dict:
    m = ITEM.match(text)
    assert m, f"cannot read the row item {text!r}"
    kind = m["type"]
    item = {"name": m["name"], "flags": set((m["flags"] or "").replace(",", " ").split())}
    if kind.startswith("COMBO["):
        item["options"] = kind[6:-1].split("|")
    elif kind.startswith("COMBO⟨"):
        source = kind[6:-1]
        item["options"] = "SAMPLERS" if source.startswith("SAMPLERS") else (
            "SCHEDULERS" if source.startswith("SCHEDULERS") else (
                "remote" if source.startswith("remote:") else "files"))
        if source.startswith("remote:"):  # options the editor fetches: COMBO plus a remote spec
            item["remote"] = source.split()[1]
            folder = source.partition("image_folder:")[2].rstrip("}").strip()
            if folder:
                item["image_folder"] = folder
        if "image_upload" in source:
            item["flags"].add("image_upload")
    else:
        item["type"] = kind
    if m["default"] is not None:
        raw = m["default"]
        if raw.startswith("'"):
            item["default"] = raw[1:-1]
        elif raw in ("True", "False"):
            item["default"] = raw == "True"
        elif "options" in item:
            item["default"] = raw
        else:
            item["default"] = _number(raw)
    if m["lo"] is not None:
        item["min"], item["max"] = _number(m["lo"]), _number(m["hi"])
        item["step"] = _number(m["step"]) if m["step"] else None
    return item


def parse_row(row: str) -> tuple[str, dict]:
    cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]
    head, category, inputs, outputs, flags = cells
    name, _, module = head.partition(" (")
    sections = _split(inputs, "‖")
    required = _split(sections[0], ";") if sections and not sections[0].startswith(("opt:", "hidden:")) else []
    optional, hidden = [], []
    for section in sections:
        if section.startswith("opt:"):
            optional = _split(section[4:], ";")
        elif section.startswith("hidden:"):
            hidden = [h.strip() for h in section[7:].split(",")]
    outs = [] if outputs == "—" else _split(outputs, ",")
    out_types, out_names, out_lists = [], [], []
    for out in outs:
        out_name, _, out_type = out.rpartition(":")
        is_list = out_type.endswith("[list]")
        out_type = out_type.removesuffix("[list]")
        out_types.append(out_type)
        out_names.append(out_name or out_type)
        out_lists.append(is_list)
    return name.strip(), {
        "python_module": f"comfy_extras.{module.rstrip(')')}" if module else "nodes",
        "category": category, "required": [parse_input(i) for i in required],
        "optional": [parse_input(i) for i in optional], "hidden": {HIDDEN[h]: h for h in hidden},
        "output": out_types, "output_name": out_names, "output_is_list": out_lists,
        "output_node": "OUT" in flags.split(), "deprecated": "DEPR" in flags.split(),
        "experimental": "EXP" in flags.split()}


def _rows(text: str) -> dict[str, dict]:
    return dict(parse_row(line) for line in text.strip().splitlines())


EXPECTED = {**_rows(CORE_ROWS), **_rows(EXTRAS_ROWS), **_rows(EXTRAS_WITHOUT_ROW)}


def test_the_table_is_complete():
    core = _rows(CORE_ROWS)
    assert len(core) == 47 and all(e["python_module"] == "nodes" for e in core.values())
    assert len(_rows(EXTRAS_ROWS)) == 28 and len(_rows(EXTRAS_WITHOUT_ROW)) == 11


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    from nodes import load_registry

    registry = load_registry()
    with temporary_base(tmp_path_factory.mktemp("object_info_core")):
        yield {name: registry.object_info_for(name) for name in EXPECTED}


def _check_input(where: str, spec, want: dict) -> None:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    options = want.get("options")
    if options == "SAMPLERS":
        assert kind == COMPAT_ORDER + OUR_SAMPLERS, f"{where}: sampler names"
    elif options == "SCHEDULERS":
        assert kind == SCHEDULERS, f"{where}: scheduler names"
    elif options == "files":
        assert isinstance(kind, list), f"{where}: a file combo is a list, got {kind!r}"
    elif options == "remote":
        assert kind == "COMBO", f"{where}: a remote combo's type is 'COMBO', got {kind!r}"
        assert opts.get("remote", {}).get("route") == want["remote"], f"{where}: remote {opts.get('remote')!r}"
        if "image_folder" in want:
            assert opts.get("image_folder") == want["image_folder"], f"{where}: image_folder"
    elif options is not None:
        assert kind == options, f"{where}: options {kind!r} != {options!r}"
    else:
        assert kind == want["type"], f"{where}: type {kind!r} != {want['type']!r}"
    for key in ("default", "min", "max", "step"):
        if key in want and want[key] is not None:
            assert key in opts and opts[key] == want[key], f"{where}: {key} {opts.get(key)!r} != {want[key]!r}"
        elif key == "step" and "min" in want:  # the row states bounds without a step: ComfyUI declares none
            assert "step" not in opts, f"{where}: step {opts['step']!r} that ComfyUI does not declare"
    assert bool(opts.get("multiline")) == ("multiline" in want["flags"]), f"{where}: multiline"
    assert bool(opts.get("control_after_generate")) == ("control_after_generate" in want["flags"]), \
        f"{where}: control_after_generate"
    assert bool(opts.get("image_upload")) == ("image_upload" in want["flags"]), f"{where}: image_upload"


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_equals_compat_row(class_type, info):
    want, got = EXPECTED[class_type], info[class_type]
    assert got is not None, f"{class_type} is not registered"
    for key in ("category", "python_module", "output", "output_name", "output_is_list", "output_node"):
        assert got[key] == want[key], f"{class_type}: {key} {got[key]!r} != {want[key]!r}"
    assert bool(got.get("deprecated")) is want["deprecated"], f"{class_type}: deprecated"
    assert bool(got.get("experimental")) is want["experimental"], f"{class_type}: experimental"
    for section in ("required", "optional"):
        names = [i["name"] for i in want[section]]
        assert got["input_order"].get(section, []) == names, f"{class_type}: {section} inputs"
        for item in want[section]:
            _check_input(f"{class_type}.{item['name']}", got["input"][section][item["name"]], item)
    assert got["input"].get("hidden", {}) == want["hidden"], f"{class_type}: hidden inputs"
