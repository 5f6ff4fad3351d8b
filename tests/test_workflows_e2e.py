"""The classic workflows, saved as the official frontend saves them (tests/fixtures/workflows/*.json),
run headless end to end exactly as `python main.py run WF --out DIR` runs them (graph.cli.run_main with
the built-in registry), on tiny random checkpoints.

Each test checks what the workflow is for, against values computed here: the COMPAT §10 sampling
arithmetic of tests/sdnodes_reference.py, masks and pixels written out with numpy/torch, latents that
inpainting must keep (within 1e-6), the size a hires pass runs at, where an area prompt may act.
Spies record what reached the sampler (Guider.sample), the UNet (ModelPatcher.apply_model) and the VAE.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests import sdnodes_reference as ref
from tests.fixtures.workflows import make_fixtures as fx
from tests.sdnodes_env import temporary_base, tiny_checkpoint_files  # noqa: F401

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "workflows"
NAMES = sorted(p.name for p in FIXTURES.glob("*.json"))
LATENT_ATOL, LATENT_RTOL = 1e-3, 1e-4  # float32 reordering only (as tests/test_sdnodes_e2e.py)
KEEP_ATOL = 1e-6  # unmasked latents of an inpainting run (issue 16)
HOLE = (slice(16, 48), slice(24, 56))  # rows, columns of the transparent rectangle in fx.HOLE
SDXL_SCALE = 0.13025


def _load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def registry():
    from nodes import load_registry

    return load_registry()


@pytest.fixture(scope="module")
def extra_checkpoints(tmp_path_factory) -> dict[str, Path]:
    from tools.make_tiny_checkpoint import TinySD1, make_tiny_sd1

    root = tmp_path_factory.mktemp("workflow_ckpts")
    return {fx.SD1_HIRES: make_tiny_sd1(root / fx.SD1_HIRES, seed=5),
            fx.SD1_INPAINT: make_tiny_sd1(root / fx.SD1_INPAINT, seed=1, sizes=TinySD1(unet_in_channels=9))}


def source_pixels() -> np.ndarray:
    """The 64x64 RGB test picture: smooth ramps plus seeded noise, uint8."""
    yy, xx = np.mgrid[0:64, 0:64]
    noise = np.random.default_rng(3).integers(0, 40, (64, 64, 3))
    rgb = np.stack([xx * 3, yy * 3, (xx + yy) * 2], axis=-1) + noise
    return np.clip(rgb, 0, 255).astype(np.uint8)


def hole_mask() -> torch.Tensor:
    mask = torch.zeros(1, 64, 64)
    mask[(0, *HOLE)] = 1.0
    return mask


@pytest.fixture
def home(tmp_path, tiny_checkpoint_files, extra_checkpoints):  # noqa: F811
    """A folder_paths base with the tiny checkpoints under the fixtures' names and the input images."""
    ckpts = tmp_path / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    for path in [*tiny_checkpoint_files.values(), *extra_checkpoints.values()]:
        (ckpts / path.name).symlink_to(path)
    (tmp_path / "input").mkdir()
    rgb = source_pixels()
    Image.fromarray(rgb).save(tmp_path / "input" / fx.SOURCE)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[HOLE] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "input" / fx.HOLE)
    with temporary_base(tmp_path):
        yield tmp_path


@pytest.fixture
def spy(monkeypatch):
    """Records each Guider.sample call, each UNet call and each latent the VAE decodes."""
    from diffusion.model_patcher import ModelPatcher
    from diffusion.models.vae import VAE
    from diffusion.sampling.guiders import Guider

    seen = {"sample": [], "unet": [], "decoded": []}
    sample, apply_model, decode = Guider.sample, ModelPatcher.apply_model, VAE.decode

    def spy_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, **kwargs):
        out = sample(self, noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, **kwargs)
        seen["sample"].append({"model": self.model, "latent": latent_image.clone(), "sigmas": sigmas.clone(),
                               "mask": None if denoise_mask is None else denoise_mask.clone(), "out": out})
        return out

    def spy_apply(self, x, sigma, *args, c_concat=None, **kwargs):
        seen["unet"].append({"model": self, "hw": tuple(x.shape[-2:]), "sigma": float(torch.as_tensor(sigma)
                                                                                     .reshape(-1)[0]),
                             "concat": None if c_concat is None else tuple(c_concat.shape)})
        return apply_model(self, x, sigma, *args, c_concat=c_concat, **kwargs)

    def spy_decode(self, samples, *args, **kwargs):
        seen["decoded"].append(samples.clone())
        return decode(self, samples, *args, **kwargs)

    monkeypatch.setattr(Guider, "sample", spy_sample)
    monkeypatch.setattr(ModelPatcher, "apply_model", spy_apply)
    monkeypatch.setattr(VAE, "decode", spy_decode)
    return seen


def run_cli(home: Path, capsys, name: str, *sets: str) -> list[Path]:
    """`main.py run tests/fixtures/workflows/NAME --out home/out --quiet --set ...`; the files it printed."""
    from graph.cli import run_main
    from nodes import folder_paths, load_registry

    argv = [str(FIXTURES / name), "--out", str(home / "out"), "--quiet"]
    for item in sets:
        argv += ["--set", item]
    capsys.readouterr()
    code = run_main(argv, registry_factory=load_registry, folder_paths=folder_paths)
    out, err = capsys.readouterr()
    assert code == 0, err
    return [Path(line) for line in out.splitlines() if line.strip()]


def expected_prompt(registry, name: str, overrides: dict | None = None) -> dict:
    from graph.runner import apply_overrides
    from graph.workflow_formats import ui_to_api

    prompt = ui_to_api(_load(name), registry.object_info_for)
    apply_overrides(prompt, overrides)
    return prompt


def check_png(path: Path, size: tuple[int, int], registry, name: str, overrides: dict | None = None):
    """A PNG of `size` (w, h) carrying the API prompt that ran and the UI workflow, as ComfyUI embeds them."""
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == size, (path, png.size)
        assert json.loads(png.text["prompt"]) == expected_prompt(registry, name, overrides)
        assert json.loads(png.text["workflow"]) == _load(name)
        return np.asarray(png.convert("RGB"))


def only(files: list[Path], prefix: str) -> Path:
    found = [f for f in files if re.fullmatch(re.escape(prefix) + r"_\d{5}_\.png", f.name)]
    assert len(found) == 1, (prefix, files)
    return found[0]


def latent_mask(mask: torch.Tensor, hw) -> torch.Tensor:
    """A noise mask at the latent's size as ComfyUI's sampler resizes it (bilinear), [H, W]."""
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return F.interpolate(mask, size=hw, mode="bilinear")[0, 0]


def assert_unmasked_kept(call: dict) -> torch.Tensor:
    """Latents where the noise mask is 0 end within 1e-6 of the input; masked ones were resampled."""
    source, out = call["latent"], call["out"]
    keep = latent_mask(call["mask"], source.shape[-2:]) == 0
    assert keep.any() and (~keep).any()
    scale = max(1.0, float(source.abs().max()))
    assert (out[..., keep] - source[..., keep]).abs().max() <= KEEP_ATOL * scale
    assert (out[..., ~keep] - source[..., ~keep]).abs().max() > 1e-2
    return keep


def _checkpoint(home: Path, name: str):
    from diffusion.loading.checkpoint import load_checkpoint

    return load_checkpoint(str(home / "models" / "checkpoints" / name))


def _encode(clip, text: str):
    return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)


def _pixels(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]


# ---------------------------------------------------------------------------------------------------
# The files are what the editor saves


def test_fixtures_are_what_make_fixtures_writes(registry):
    built = fx.build(registry.object_info_for)
    assert set(built) <= set(NAMES)  # other fixtures here come from the node families' own tests
    for name in built:
        assert _load(name) == json.loads(json.dumps(built[name])), f"{name}: rerun make_fixtures.py"


@pytest.mark.parametrize("name", NAMES)
def test_fixture_links_and_slots_agree(registry, name):
    wf = _load(name)
    # the editor never reuses an id, so after deletions last_node_id may exceed the largest id left
    assert wf["version"] == 0.4 and wf["last_node_id"] >= max(n["id"] for n in wf["nodes"])
    nodes = {n["id"]: n for n in wf["nodes"]}
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        out, inp = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert link_id in out["links"] and inp["link"] == link_id and out["type"] == inp["type"] == kind
    for n in wf["nodes"]:
        info = registry.object_info_for(n["type"])
        if n["type"] in ("PrimitiveNode", "Note"):
            continue
        assert [o["type"] for o in n["outputs"]] == info["output"], n["type"]
        sockets = [i["name"] for i in n["inputs"] if "widget" not in i]
        order = info["input_order"]["required"] + info["input_order"].get("optional", [])
        assert sockets == [s for s in order if s in sockets], n["type"]


# ---------------------------------------------------------------------------------------------------
# Text to image, image to image


def test_txt2img_matches_the_hand_written_sampler(registry, home, spy, capsys):
    files = run_cli(home, capsys, "txt2img.json")
    check_png(only(files, "txt2img"), (64, 64), registry, "txt2img.json")
    ckpt = _checkpoint(home, fx.SD1)
    (c, _), (u, _) = _encode(ckpt.clip, "a red apple on a wooden table"), _encode(ckpt.clip, "blurry, watermark")
    want = ref.txt2img_latent(ckpt.model, c, u, seed=42, steps=4, cfg=7.0, shape=(1, 4, 8, 8))
    torch.testing.assert_close(spy["decoded"][0], want, atol=LATENT_ATOL, rtol=LATENT_RTOL)


def test_img2img_starts_from_the_encoded_picture_at_half_noise(registry, home, spy, capsys):
    files = run_cli(home, capsys, "img2img.json")
    check_png(only(files, "img2img"), (64, 64), registry, "img2img.json")
    ckpt = _checkpoint(home, fx.SD1)
    latent = ckpt.vae.encode(_pixels(source_pixels()))
    (call,) = spy["sample"]
    torch.testing.assert_close(call["latent"], latent, atol=1e-5, rtol=1e-5)
    # denoise 0.5 of 4 steps: the last 5 sigmas of an 8-step schedule
    torch.testing.assert_close(call["sigmas"], ref.normal_sigmas(8)[-5:], rtol=1e-5, atol=1e-6)
    (c, _), (u, _) = _encode(ckpt.clip, "a watercolour painting"), _encode(ckpt.clip, "blurry, watermark")
    want = ref.img2img_latent(ckpt.model, c, u, latent, seed=7, steps=4, cfg=6.0, denoise=0.5)
    torch.testing.assert_close(spy["decoded"][0], want, atol=LATENT_ATOL, rtol=LATENT_RTOL)


# ---------------------------------------------------------------------------------------------------
# Inpainting and outpainting


def test_inpainting_model_keeps_unmasked_latents_and_reads_the_concat(registry, home, spy, capsys):
    files = run_cli(home, capsys, "inpaint_model.json")
    check_png(only(files, "inpaint_model"), (64, 64), registry, "inpaint_model.json")
    ckpt = _checkpoint(home, fx.SD1_INPAINT)
    assert ckpt.model.model.config.in_channels == 9
    (call,) = spy["sample"]
    # InpaintModelConditioning: the latent of the untouched picture, the soft mask as noise mask
    torch.testing.assert_close(call["latent"], ckpt.vae.encode(_pixels(source_pixels())), atol=1e-5, rtol=1e-5)
    assert torch.equal(call["mask"].reshape(1, 64, 64), hole_mask())
    assert_unmasked_kept(call)
    assert spy["unet"] and all(u["concat"] is not None and u["concat"][1] == 5 for u in spy["unet"])


def _grown(mask: torch.Tensor, by: int) -> torch.Tensor:
    """ComfyUI's grow_mask_by: a by x by box over the rounded mask, padded ceil((by-1)/2), cut to size."""
    pad = math.ceil((by - 1) / 2)
    m = mask.round().reshape(1, 1, *mask.shape[-2:])
    grown = F.conv2d(m, torch.ones(1, 1, by, by), padding=pad).clamp(0, 1)
    return grown[..., :mask.shape[-2], :mask.shape[-1]].round()


def test_vae_encode_for_inpaint_greys_the_hole_and_grows_the_mask(registry, home, spy, capsys):
    files = run_cli(home, capsys, "inpaint_vae_encode.json")
    check_png(only(files, "inpaint_vae"), (64, 64), registry, "inpaint_vae_encode.json")
    ckpt = _checkpoint(home, fx.SD1)
    (call,) = spy["sample"]
    grey = _pixels(source_pixels())
    grey[(0, *HOLE)] = 0.5
    torch.testing.assert_close(call["latent"], ckpt.vae.encode(grey), atol=1e-5, rtol=1e-5)
    grown = _grown(hole_mask(), 6)
    assert grown.sum() > hole_mask().sum()
    assert torch.equal(call["mask"].reshape(grown.shape), grown)
    assert_unmasked_kept(call)


def test_set_latent_noise_mask_on_a_normal_model(registry, home, spy, capsys):
    files = run_cli(home, capsys, "inpaint_noise_mask.json")
    check_png(only(files, "inpaint_noise_mask"), (64, 64), registry, "inpaint_noise_mask.json")
    ckpt = _checkpoint(home, fx.SD1)
    (call,) = spy["sample"]
    torch.testing.assert_close(call["latent"], ckpt.vae.encode(_pixels(source_pixels())), atol=1e-5, rtol=1e-5)
    assert torch.equal(call["mask"].reshape(1, 64, 64), hole_mask())
    assert_unmasked_kept(call)
    assert all(u["concat"] is None for u in spy["unet"])  # a 4-channel UNet gets no concat inputs


def test_outpainting_pads_the_picture_and_samples_only_the_new_border(registry, home, spy, capsys):
    files = run_cli(home, capsys, "outpaint.json")
    check_png(only(files, "outpaint"), (96, 80), registry, "outpaint.json")
    (call,) = spy["sample"]
    assert call["latent"].shape == (1, 4, 10, 12)
    keep = assert_unmasked_kept(call)
    # the whole new border (right 32 px, bottom 16 px, i.e. latent columns 8.., rows 8..) was resampled
    assert not keep[8:, :].any() and not keep[:, 8:].any()
    # the 9-channel model got its concat inputs from the noise mask and the latent (no InpaintModelConditioning)
    assert spy["unet"] and all(u["concat"] is not None and u["concat"][1] == 5 for u in spy["unet"])


# ---------------------------------------------------------------------------------------------------
# Area composition

AREA_NODES = ("5", "7", "9")  # the ConditioningSetArea node ids (their prompts: 4, 6, 8)
SUBJECT = (slice(6, 14), slice(4, 12))  # the fox's 64x64 px square at (32, 48): latent rows, columns


def _plain_overrides(steps: int) -> list[str]:
    """txt2img.json turned into the area workflow without its areas: same base prompt, size, seed, steps."""
    return ['2.text=a landscape painting', "4.width=128", "4.height=128", "5.seed=21", f"5.steps={steps}",
            "5.cfg=6.0"]


def test_area_composition_runs_each_area_on_its_crop(registry, home, spy, capsys):
    files = run_cli(home, capsys, "area_composition.json")
    check_png(only(files, "area"), (128, 128), registry, "area_composition.json")
    sizes = {u["hw"] for u in spy["unet"]}
    assert {(16, 16), (8, 16), (8, 8)} <= sizes, sizes  # full latent, the two bands, the square subject


def test_area_order_does_not_matter(registry, home, spy, capsys):
    run_cli(home, capsys, "area_composition.json")
    run_cli(home, capsys, "area_composition_reversed.json")
    first, reversed_ = spy["decoded"]
    torch.testing.assert_close(reversed_, first, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(first, torch.zeros_like(first))


def test_areas_at_strength_zero_change_nothing(registry, home, spy, capsys):
    run_cli(home, capsys, "area_composition.json", *(f"{n}.strength=0" for n in AREA_NODES))
    run_cli(home, capsys, "txt2img.json", *_plain_overrides(3))
    areas_off, plain = spy["decoded"]
    torch.testing.assert_close(areas_off, plain, atol=1e-5, rtol=1e-5)


def test_one_step_with_the_subject_area_differs_only_inside_it(registry, home, spy, capsys):
    """One Euler step returns the denoised prediction, so an area acts inside its square and nowhere else."""
    run_cli(home, capsys, "area_composition.json", "14.steps=1", "5.strength=0", "7.strength=0")
    run_cli(home, capsys, "txt2img.json", *_plain_overrides(1))
    subject, plain = spy["decoded"]
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[SUBJECT] = True
    torch.testing.assert_close(subject[..., ~inside], plain[..., ~inside], atol=1e-5, rtol=1e-5)
    assert (subject[..., inside] - plain[..., inside]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# Hires fix, SDXL-Turbo


def test_hires_fix_runs_a_second_checkpoint_at_the_new_size(registry, home, spy, capsys):
    from nodes import folder_paths

    files = run_cli(home, capsys, "hires_fix.json")
    check_png(only(files, "hires"), (96, 96), registry, "hires_fix.json")
    previews = [f for f in files if Path(folder_paths.get_temp_directory()) in f.parents]
    assert len(previews) == 1  # the first pass's PreviewImage, kept by the headless run
    with Image.open(previews[0]) as png:
        assert png.size == (64, 64)
    prompt = expected_prompt(registry, "hires_fix.json")
    assert prompt["6"]["inputs"]["seed"] == prompt["13"]["inputs"]["seed"] == 1234  # one seed primitive
    low, high = spy["sample"]
    assert low["model"] is not high["model"]
    assert low["latent"].shape[-2:] == (8, 8) and high["latent"].shape[-2:] == (12, 12)
    torch.testing.assert_close(high["latent"], F.interpolate(low["out"], size=(12, 12), mode="nearest-exact"))
    # denoise 0.5 of 3 steps: the last 4 sigmas of a 6-step schedule, every call at 12 x 12
    torch.testing.assert_close(high["sigmas"], ref.normal_sigmas(6)[-4:], rtol=1e-5, atol=1e-6)
    by_model = {}
    for u in spy["unet"]:
        by_model.setdefault(id(u["model"]), set()).add(u["hw"])
    assert sorted(by_model.values(), key=len) == [{(8, 8)}, {(12, 12)}]


def test_sdxl_turbo_is_one_unguided_denoise_at_sigma_max(registry, home, spy, capsys):
    files = run_cli(home, capsys, "sdxl_turbo.json")
    check_png(only(files, "turbo"), (64, 64), registry, "sdxl_turbo.json")
    (call,) = spy["unet"]  # cfg 1: no negative pass
    sigma = ref.sigma_table()[999]
    assert call["model"].arch == "sdxl" and call["sigma"] == pytest.approx(float(sigma), rel=1e-6)
    ckpt = _checkpoint(home, fx.SDXL)
    c, pooled = _encode(ckpt.clip, "a cinematic shot of a baby raccoon wearing a tiny hat")
    y = torch.cat([pooled, ref.size_embedding([64, 64, 0, 0, 64, 64], 256)], 1)
    x = ref.initial_noise((1, 4, 8, 8), 0) * math.sqrt(1 + float(sigma) ** 2)
    # euler_ancestral's one step to sigma 0 adds no noise: the result is the model's x0 prediction
    want = ckpt.model.apply_model(x, sigma.reshape(1), c, y=y) / SDXL_SCALE
    torch.testing.assert_close(spy["decoded"][0], want, atol=LATENT_ATOL, rtol=LATENT_RTOL)


# ---------------------------------------------------------------------------------------------------
# Images and masks only


def test_image_and_mask_pipeline_matches_numpy(registry, home, capsys):
    files = run_cli(home, capsys, "image_mask_ops.json")
    mask = np.zeros((64, 64), np.float32)
    mask[8:40, 16:48] = 1.0  # a 32 px square added at x 16, y 8
    src = source_pixels().astype(np.float32) / 255.0
    composite = src * (1 - mask[..., None]) + (1 - src) * mask[..., None]
    want = np.repeat(np.repeat(composite[:, ::-1], 2, axis=0), 2, axis=1)  # flipped, then 2x nearest
    got = check_png(only(files, "ops"), (128, 128), registry, "image_mask_ops.json")
    assert np.abs(got.astype(np.int16) - np.round(want * 255).astype(np.int16)).max() <= 1
    got_mask = check_png(only(files, "ops_mask"), (64, 64), registry, "image_mask_ops.json")
    assert np.array_equal(got_mask, np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=-1))
