"""ComfyUI's own saved template workflows (PyPI comfyui-workflow-templates-json, pinned in
tests/templates_env.py), unchanged but for image size and step count, run end to end through our
Runner on tiny random checkpoints saved under the templates' exact checkpoint names.

Numbers are checked against tests/sdnodes_reference.py (the COMPAT §10 sigma table, "normal" schedule,
CPU noise, CFG and Euler written out by hand; SDXL size embeddings from the sinusoid formula); only the
networks themselves are shared with the code under test.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests import sdnodes_reference as ref
from tests.sdnodes_env import temporary_base
from tests.templates_env import (EDITOR_ONLY, checkpoint_names, load_template, require_templates_package,
                                 runnable_templates, shrink)

SIZE = 64
STEPS = 4
SDXL_SCALE = 0.13025
LATENT_ATOL = 1e-3  # as tests/test_sdnodes_e2e.py: float32 reordering only
LATENT_RTOL = 1e-4

# The templates of the pinned package that use only nodes we have; test_runnable_templates_are_known
# notices when the registry or the package changes this list.
# Those without a checkpoint (image and mask nodes only) run in tests/test_image_nodes_templates.py.
NO_CHECKPOINT = ["basic_mask_operations_and_compositing.json"]
WITH_CHECKPOINT = ["image_sdxl_simple.json", "sdxl_refiner_prompt_example.json", "sdxl_simple_example.json",
                   "sdxlturbo_example.json"]
# Templates that need model files besides checkpoints run, from a shrunk copy, in their own tests.
WITH_OTHER_MODELS = ["sdxl_revision_text_prompts.json"]  # tests/test_clip_vision_workflows.py
# Made of nodes we have (CLIPLoader, UNETLoader), but for a model family this runtime lacks (Anima: a Qwen3
# text encoder); its files are not CLIP, which CLIPLoader reports by name.
OTHER_FAMILY = ["image_anima_preview.json"]
RUNNABLE = sorted(NO_CHECKPOINT + WITH_CHECKPOINT + WITH_OTHER_MODELS + OTHER_FAMILY)
SDXL_BASE = "sd_xl_base_1.0.safetensors"
SDXL_REFINER = "sd_xl_refiner_1.0.safetensors"
SDXL_TURBO = "sd_xl_turbo_1.0_fp16.safetensors"


def _tiny_builders():
    from tools.make_tiny_checkpoint import make_tiny_sdxl, make_tiny_sdxl_refiner

    return {SDXL_BASE: make_tiny_sdxl, SDXL_REFINER: make_tiny_sdxl_refiner, SDXL_TURBO: make_tiny_sdxl}


@pytest.fixture(scope="module")
def registry():
    require_templates_package()
    from nodes import load_registry

    return load_registry()


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("template_ckpts")
    return {name: build(root / name, seed=i) for i, (name, build) in enumerate(_tiny_builders().items())}


@pytest.fixture
def home(tmp_path):
    """A folder_paths base directory (models/checkpoints empty until `provide` fills it)."""
    with temporary_base(tmp_path):
        yield tmp_path


def _provide(home: Path, tiny_files: dict, names) -> None:
    for name in names:
        assert name in tiny_files, f"no tiny checkpoint builder for {name!r}: add one to _tiny_builders"
        (home / "models" / "checkpoints" / name).symlink_to(tiny_files[name])


def _convert(registry, workflow: dict) -> dict:
    from graph.workflow_formats import ui_to_api

    return ui_to_api(workflow, registry.object_info_for)


@pytest.fixture
def spy(monkeypatch):
    """Records every UNet call (model arch, sigma), ADM input built, and latent handed to a VAE."""
    from diffusion.model_patcher import ModelPatcher
    from diffusion.models.vae import VAE

    seen = {"unet": [], "adm": [], "decoded": []}
    apply_model, encode_adm, decode = ModelPatcher.apply_model, ModelPatcher.encode_adm, VAE.decode

    def spy_apply(self, x, sigma, *args, **kwargs):
        seen["unet"].append((self.arch, float(torch.as_tensor(sigma).reshape(-1)[0])))
        return apply_model(self, x, sigma, *args, **kwargs)

    def spy_adm(self, cond, batch):
        y = encode_adm(self, cond, batch)
        seen["adm"].append((self.arch, cond.get("prompt_type"), y))
        return y

    def spy_decode(self, samples, *args, **kwargs):
        seen["decoded"].append(samples.clone())
        return decode(self, samples, *args, **kwargs)

    monkeypatch.setattr(ModelPatcher, "apply_model", spy_apply)
    monkeypatch.setattr(ModelPatcher, "encode_adm", spy_adm)
    monkeypatch.setattr(VAE, "decode", spy_decode)
    return seen


def _run(registry, home, tiny_files, name):
    from graph.runner import Runner

    ui, overrides = shrink(load_template(name), SIZE, STEPS)
    _provide(home, tiny_files, sorted(set(checkpoint_names(_convert(registry, ui)).values())))
    return ui, Runner(registry).run(ui, overrides=overrides)


# ---------------------------------------------------------------------------------------------------

def test_runnable_templates_are_known(registry):
    assert runnable_templates(registry.class_types()) == RUNNABLE


@pytest.mark.parametrize("name", WITH_CHECKPOINT)
def test_only_missing_checkpoints_fail_validation(registry, home, name):
    from graph.validate import validate_prompt

    workflow = load_template(name)
    prompt = _convert(registry, workflow)
    # Every node but the editor-only ones became a prompt node.
    assert sorted(prompt) == sorted(str(n["id"]) for n in workflow["nodes"] if n["type"] not in EDITOR_ONLY)
    wanted = checkpoint_names(prompt)
    result = validate_prompt(prompt, registry)
    assert not result.ok and result.error["type"] == "prompt_outputs_failed_validation"
    assert set(result.node_errors) == set(wanted), result.node_errors
    for node_id, ckpt in wanted.items():
        errors = result.node_errors[node_id]["errors"]
        assert [(e["type"], e["extra_info"]["input_name"], e["extra_info"]["received_value"])
                for e in errors] == [("value_not_in_list", "ckpt_name", ckpt)]


@pytest.mark.parametrize("name", WITH_CHECKPOINT)
def test_template_runs_end_to_end(registry, home, tiny_files, spy, name):
    from nodes import folder_paths

    ui, result = _run(registry, home, tiny_files, name)
    prompt = result.prompt
    assert sorted(result.ran) == sorted(prompt), "a cold run runs every node once"

    saves = {nid: n for nid, n in prompt.items() if n["class_type"] == "SaveImage"}
    assert saves
    for nid, node in saves.items():
        images = result.outputs[nid]["images"]
        assert len(images) == 1 and images[0]["type"] == "output"
        assert images[0]["filename"].startswith(node["inputs"]["filename_prefix"] + "_")
        path = Path(folder_paths.get_output_directory(), images[0]["subfolder"], images[0]["filename"])
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size == (SIZE, SIZE)
            assert json.loads(png.text["prompt"]) == prompt
            assert json.loads(png.text["workflow"]) == ui

    # Every step of every sampler ran a UNet of the architecture its loader holds; the steps the
    # template gives each model (edited on its primitive or overridden on its sampler) all ran.
    archs = {SDXL_BASE: "sdxl", SDXL_REFINER: "sdxl_refiner", SDXL_TURBO: "sdxl"}
    assert {arch for arch, _ in spy["unet"]} == {archs[c] for c in checkpoint_names(prompt).values()}
    assert len({sigma for _, sigma in spy["unet"]}) == STEPS


def _split_sigmas(spy) -> dict[str, list[float]]:
    by_arch: dict[str, set] = {}
    for arch, sigma in spy["unet"]:
        by_arch.setdefault(arch, set()).add(sigma)
    return {arch: sorted(s, reverse=True) for arch, s in by_arch.items()}


def test_refiner_template_splits_the_schedule_between_base_and_refiner(registry, home, tiny_files, spy):
    _, result = _run(registry, home, tiny_files, "sdxl_refiner_prompt_example.json")
    # end_at_step 20 of 25 scales to 3 of 4: base takes the first three sigmas, refiner the last.
    sigmas = ref.normal_sigmas(STEPS)
    split = _split_sigmas(spy)
    torch.testing.assert_close(torch.tensor(split["sdxl"]), sigmas[:3], rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(split["sdxl_refiner"]), sigmas[3:4], rtol=1e-5, atol=0)
    assert {"10", "11", "12", "15", "16"} <= set(result.ran)  # the refiner loader, its prompts, its pass


def test_sdxl_turbo_template_samples_the_turbo_timesteps(registry, home, tiny_files, spy):
    """sdxlturbo_example (SamplerCustom + SDTurboScheduler, cfg 1): one unguided UNet call per step at
    timesteps 999, 899, 799, 699 of the SD sigma table."""
    _run(registry, home, tiny_files, "sdxlturbo_example.json")
    sigmas = [sigma for _, sigma in spy["unet"]]
    assert len(sigmas) == STEPS  # cfg 1: no negative pass
    torch.testing.assert_close(torch.tensor(sigmas), ref.sigma_table()[[999, 899, 799, 699]], rtol=1e-6, atol=0)


def _encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)


def test_sdxl_template_matches_hand_written_reference(registry, home, tiny_files, spy):
    """sdxl_simple_example (base 3 steps with leftover noise, refiner 1 step) against Euler/CFG by hand."""
    from diffusion.loading.checkpoint import load_checkpoint

    ui, result = _run(registry, home, tiny_files, "sdxl_simple_example.json")
    prompt = result.prompt
    base = load_checkpoint(str(tiny_files[SDXL_BASE]))
    refiner = load_checkpoint(str(tiny_files[SDXL_REFINER]))
    text = {nid: prompt[nid]["inputs"]["text"] for nid in ("6", "7", "15", "16")}
    (c, cp), (u, up) = _encode(base.clip, text["6"]), _encode(base.clip, text["7"])
    (rc, rcp), (ru, rup) = _encode(refiner.clip, text["15"]), _encode(refiner.clip, text["16"])

    # ADM inputs as ComfyUI builds them for plain CLIPTextEncode: the latent's pixel size, no crop;
    # the refiner's aesthetic score 6 for the positive prompt and 2.5 for the negative one.
    base_sizes = ref.size_embedding([SIZE, SIZE, 0, 0, SIZE, SIZE], 256)
    y_c, y_u = torch.cat([cp, base_sizes], 1), torch.cat([up, base_sizes], 1)
    y_rc = torch.cat([rcp, ref.size_embedding([SIZE, SIZE, 0, 0, 6.0], 256)], 1)
    y_ru = torch.cat([rup, ref.size_embedding([SIZE, SIZE, 0, 0, 2.5], 256)], 1)
    adm = {(arch, side): y for arch, side, y in spy["adm"]}
    for key, want in {("sdxl", "positive"): y_c, ("sdxl", "negative"): y_u,
                      ("sdxl_refiner", "positive"): y_rc, ("sdxl_refiner", "negative"): y_ru}.items():
        torch.testing.assert_close(adm[key], want, rtol=1e-5, atol=1e-5, msg=f"ADM input {key}")

    first, second = prompt["10"]["inputs"], prompt["11"]["inputs"]
    assert (first["steps"], first["end_at_step"], second["start_at_step"]) == (STEPS, 3, 3)
    cfg = first["cfg"]
    sigmas = ref.normal_sigmas(STEPS)
    shape = (1, 4, SIZE // 8, SIZE // 8)
    x = ref.initial_noise(shape, first["noise_seed"]) * math.sqrt(1 + float(sigmas[0]) ** 2)
    # Leftover noise: the base pass stops at sigma_3, where the refiner (adding no noise) goes on.
    before_refiner = ref.euler_cfg(base.model, x, sigmas[:4], c, u, cfg, y_c, y_u)
    want = ref.euler_cfg(refiner.model, before_refiner, sigmas[3:], rc, ru, second["cfg"], y_rc, y_ru) / SDXL_SCALE
    assert len(spy["decoded"]) == 1
    torch.testing.assert_close(spy["decoded"][0], want, atol=LATENT_ATOL, rtol=LATENT_RTOL)

    # The comparison sees the refiner's step: stopping after the base pass differs beyond tolerance.
    # (At sigma_min one step moves little, so the aesthetic score is checked on the ADM input above.)
    assert not torch.allclose(before_refiner / SDXL_SCALE, want, atol=LATENT_ATOL * 10, rtol=LATENT_RTOL)


def test_tiny_refiner_has_the_refiner_layout(tmp_path):
    from diffusion.loading.checkpoint import detect_arch
    from diffusion.loading.files import read_state_dict
    from tools.make_tiny_checkpoint import TinySDXLRefiner, main

    out = tmp_path / "refiner.safetensors"
    assert main(["--arch", "sdxl_refiner", "--out", str(out)]) == 0
    sd, meta = read_state_dict(out)
    assert detect_arch(sd, meta) == "sdxl_refiner"
    # bigG alone, under the refiner's prefix; no CLIP-L tower.
    text_keys = {k for k in sd if k.startswith("conditioner.")}
    assert text_keys and all(k.startswith("conditioner.embedders.0.model.") for k in text_keys)
    # ADM input: pooled text + five 256-wide embeddings (height, width, crop_h, crop_w, aesthetic score).
    sizes = TinySDXLRefiner()
    assert sd["model.diffusion_model.label_emb.0.0.weight"].shape[1] == sizes.clip_g_projection + 5 * 256
    assert sd["conditioner.embedders.0.model.text_projection"].shape[1] == sizes.clip_g_projection
