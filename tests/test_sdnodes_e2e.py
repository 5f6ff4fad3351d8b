"""End to end through the engine's Runner on tiny random checkpoints: txt2img, img2img, SDXL,
a two-pass KSamplerAdvanced split, caching on re-run, PNG metadata, progress, interrupt, bad input.

Sampling results are checked against tests/sdnodes_reference.py (the COMPAT §10 formulas written out
by hand around the same network) with a stated tolerance.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import sdnodes_reference as ref
from tests.sdnodes_env import (SD1_NAME, SDXL_NAME, CaptureLatent, registry, sd_home,  # noqa: F401
                               tiny_checkpoint_files, txt2img_prompt)

# Latents of the tiny random model reach |x| ~ 100 (the VAE scale divides by 0.18215); float32
# reordering between our sampler and the hand-written loop stays far below this.
LATENT_ATOL = 1e-3
LATENT_RTOL = 1e-4


def _runner(registry):  # noqa: F811
    from graph.runner import Runner

    return Runner(registry)


def _capture(prompt: dict, source: str, label: str) -> dict:
    prompt[f"cap_{label}"] = {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": [source, 0], "label": label}}
    return prompt


def _load(name):
    from diffusion.loading.checkpoint import load_checkpoint
    from nodes import folder_paths

    return load_checkpoint(folder_paths.get_full_path("checkpoints", name))


def _encode(clip, text):
    return clip.encode_from_tokens(clip.tokenize(text))


def _saved_png(result) -> Path:
    from nodes import folder_paths

    files = result.files(folder_paths)
    assert len(files) == 1, files
    return Path(files[0])


def test_txt2img_matches_reference_euler(registry, sd_home):  # noqa: F811
    prompt = _capture(txt2img_prompt(seed=7, steps=4, cfg=5.0), "3", "t2i")
    result = _runner(registry).run(prompt)
    got = CaptureLatent.seen["t2i"]["samples"]
    assert got.shape == (1, 4, 8, 8) and got.dtype == torch.float32

    model, clip, vae, _ = _load(SD1_NAME)
    want = ref.txt2img_latent(model, _encode(clip, "a red apple"), _encode(clip, "blurry"), seed=7, steps=4,
                              cfg=5.0, shape=(1, 4, 8, 8))
    torch.testing.assert_close(got, want, atol=LATENT_ATOL, rtol=LATENT_RTOL)

    png = Image.open(_saved_png(result))
    assert png.size == (64, 64) and png.mode == "RGB"
    # SaveImage truncates image*255 (COMPAT §1.6); allow one level for float noise at the boundary.
    expected = (vae.decode(want)[0].numpy() * 255.0).clip(0, 255).astype(np.uint8)
    diff = np.abs(np.asarray(png).astype(int) - expected.astype(int))
    assert diff.max() <= 1, f"saved pixels differ by up to {diff.max()}"


def _write_source_image(home: Path, size=64) -> str:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(home / "input" / "source.png")
    return "source.png"


def test_img2img_denoise_06_matches_reference(registry, sd_home):  # noqa: F811
    name = _write_source_image(sd_home)
    prompt = txt2img_prompt(seed=11, steps=5, cfg=4.0, denoise=0.6)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    prompt["3"]["inputs"]["latent_image"] = ["11", 0]
    del prompt["5"]
    _capture(prompt, "11", "encoded")
    _capture(prompt, "3", "i2i")
    _runner(registry).run(prompt)

    model, clip, vae, _ = _load(SD1_NAME)
    image = torch.from_numpy(np.asarray(Image.open(sd_home / "input" / name)).astype(np.float32) / 255.0)[None]
    source = vae.encode(image)
    torch.testing.assert_close(CaptureLatent.seen["encoded"]["samples"], source, atol=1e-5, rtol=1e-5)
    want = ref.img2img_latent(model, _encode(clip, "a red apple"), _encode(clip, "blurry"), source, seed=11,
                              steps=5, cfg=4.0, denoise=0.6)
    got = CaptureLatent.seen["i2i"]["samples"]
    torch.testing.assert_close(got, want, atol=LATENT_ATOL, rtol=LATENT_RTOL)
    # Partial denoise starts from the encoded image, not from pure noise: the result depends on it.
    assert not torch.allclose(got, ref.img2img_latent(model, _encode(clip, "a red apple"), _encode(clip, "blurry"),
                                                      source * 0, seed=11, steps=5, cfg=4.0, denoise=0.6), atol=1e-2)


def _sdxl_prompt(width=1024, seed=5) -> dict:
    prompt = txt2img_prompt(ckpt=SDXL_NAME, seed=seed, steps=3, cfg=4.0)
    for node_id, (g, l) in (("6", ("a castle", "a stone castle")), ("7", ("fog", "fog, noise"))):
        prompt[node_id] = {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "clip": ["4", 1], "width": width, "height": 1024, "crop_w": 0, "crop_h": 0,
            "target_width": 1024, "target_height": 1024, "text_g": g, "text_l": l}}
    return _capture(prompt, "3", f"sdxl_{width}")


def test_sdxl_txt2img_with_size_conditioning(registry, sd_home):  # noqa: F811
    runner = _runner(registry)
    runner.run(_sdxl_prompt(width=1024))
    got = CaptureLatent.seen["sdxl_1024"]["samples"]

    model, clip, _, arch = _load(SDXL_NAME)
    assert arch == "sdxl"

    def cond_and_y(text_g, text_l):
        tokens = clip.tokenize(text_g)
        tokens["l"] = clip.tokenize(text_l)["l"]
        cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        # ADM input: pooled bigG output, then (h, w, crop_h, crop_w, target_h, target_w) embeddings.
        y = torch.cat([pooled, ref.size_embedding([1024, 1024, 0, 0, 1024, 1024], 256)], dim=1)
        return cond, y

    c, yc = cond_and_y("a castle", "a stone castle")
    u, yu = cond_and_y("fog", "fog, noise")
    want = ref.txt2img_latent(model, c, u, seed=5, steps=3, cfg=4.0, shape=(1, 4, 8, 8), scale=0.13025,
                              y_cond=yc, y_uncond=yu)
    torch.testing.assert_close(got, want, atol=LATENT_ATOL, rtol=LATENT_RTOL)

    # The size conditioning reaches the UNet: another original width changes the result.
    runner.run(_sdxl_prompt(width=512))
    assert not torch.allclose(CaptureLatent.seen["sdxl_512"]["samples"], got, atol=1e-3)


def _advanced(model_src, latent_src, add_noise, start, end, leftover, steps=12, seed=3) -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": model_src, "add_noise": add_noise, "noise_seed": seed, "steps": steps, "cfg": 5.0,
        "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
        "latent_image": latent_src, "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": leftover}}


def test_two_pass_advanced_split_equals_one_run(registry, sd_home):  # noqa: F811
    prompt = txt2img_prompt(seed=3, steps=12, cfg=5.0)
    prompt["20"] = _advanced(["4", 0], ["5", 0], "enable", 0, 6, "enable")
    prompt["21"] = _advanced(["4", 0], ["20", 0], "disable", 6, 10000, "disable")
    _capture(prompt, "3", "one_run")
    _capture(prompt, "21", "two_pass")
    _capture(prompt, "20", "first_half")
    _runner(registry).run(prompt)
    one, two = CaptureLatent.seen["one_run"]["samples"], CaptureLatent.seen["two_pass"]["samples"]
    torch.testing.assert_close(two, one, atol=LATENT_ATOL, rtol=LATENT_RTOL)
    # The first half really stopped with noise left in (it is far from the finished latent).
    assert (CaptureLatent.seen["first_half"]["samples"] - one).abs().mean() > 10 * LATENT_ATOL


def test_rerun_with_new_seed_runs_only_sampler_and_after(registry, sd_home):  # noqa: F811
    runner = _runner(registry)
    first = runner.run(txt2img_prompt(seed=1, steps=2))
    assert set(first.ran) == {"3", "4", "5", "6", "7", "8", "9"}
    second = runner.run(txt2img_prompt(seed=1, steps=2), overrides={"3.seed": 2})
    assert set(second.ran) == {"3", "8", "9"}
    third = runner.run(txt2img_prompt(seed=1, steps=2), overrides={"3.seed": 2})
    assert third.ran == []


def _ui_workflow(size=64, steps=2) -> dict:
    wf = json.loads((Path(__file__).resolve().parent.parent / "workflows" / "default.json").read_text())
    for n in wf["nodes"]:
        if n["type"] == "EmptyLatentImage":
            n["widgets_values"] = [size, size, 1]
        if n["type"] == "KSampler":
            n["widgets_values"][2] = steps
        if n["type"] == "CheckpointLoaderSimple":
            n["widgets_values"] = [SD1_NAME]
    return wf


def test_saved_png_metadata_round_trips(registry, sd_home):  # noqa: F811
    from graph.png_metadata import read_png_workflow

    ui = _ui_workflow()
    runner = _runner(registry)
    result = runner.run(ui)
    png = _saved_png(result)
    meta = read_png_workflow(str(png))
    assert meta["workflow"] == ui
    assert meta["prompt"] == result.prompt
    assert meta["prompt"]["3"]["inputs"]["seed"] == 42  # widget value, not the "fixed" control
    # The PNG itself is a workflow: running it again hits the cache entirely.
    assert runner.run(str(png)).ran == []


def test_default_workflow_runs_with_bundled_checkpoint_name(registry, sd_home, tiny_checkpoint_files):  # noqa: F811
    (sd_home / "models" / "checkpoints" / "latentgraph-tiny-sd1.safetensors").symlink_to(
        tiny_checkpoint_files["sd1"])
    path = Path(__file__).resolve().parent.parent / "workflows" / "default.json"
    result = _runner(registry).run(str(path), overrides={"3.steps": 1})
    api = result.prompt
    assert {n["class_type"] for n in api.values()} == {
        "CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"}
    assert api["5"]["inputs"] == {"width": 256, "height": 256, "batch_size": 1}
    assert Image.open(_saved_png(result)).size == (256, 256)


def test_progress_events_per_step(registry, sd_home):  # noqa: F811
    events = []
    _runner(registry).run(txt2img_prompt(steps=3), listeners=[lambda e, d: events.append((e, d))])
    progress = [(d["value"], d["max"]) for e, d in events if e == "progress" and d.get("node") == "3"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_interrupt_stops_the_sampler_between_steps(registry, sd_home):  # noqa: F811
    from graph.runner import RunError

    runner = _runner(registry)
    steps_seen = []

    def listener(event, data):
        if event == "progress" and data.get("node") == "3":
            steps_seen.append(data["value"])
            runner.interrupt()

    with pytest.raises(RunError) as err:
        runner.run(txt2img_prompt(steps=6), listeners=[listener])
    assert err.value.kind == "interrupted"
    assert steps_seen == [1]


def test_latent2rgb_preview_attached_to_progress(registry, sd_home):  # noqa: F811
    events = []
    _runner(registry).run(txt2img_prompt(steps=2), extra_data={"preview_method": "latent2rgb"},
                          listeners=[lambda e, d: events.append((e, d))])
    previews = [d["image"] for e, d in events if e == "preview"]
    assert len(previews) == 2 and all(isinstance(p, Image.Image) for p in previews)


def test_missing_checkpoint_is_a_validation_error_naming_the_input(registry, sd_home):  # noqa: F811
    from graph.runner import RunError

    with pytest.raises(RunError) as err:
        _runner(registry).run(txt2img_prompt(ckpt="does-not-exist.safetensors"))
    assert err.value.kind == "validation"
    assert "ckpt_name" in str(err.value) and "does-not-exist.safetensors" in str(err.value)


def test_checkpoint_deleted_after_listing_fails_with_file_and_folder(sd_home):  # noqa: F811
    from nodes.sd_loaders import CheckpointLoaderSimple

    with pytest.raises(FileNotFoundError) as err:
        CheckpointLoaderSimple().execute("gone.safetensors")
    msg = str(err.value)
    assert "gone.safetensors" in msg and "checkpoints" in msg and "CheckpointLoaderSimple" in msg


def test_corrupt_checkpoint_error_names_the_file(registry, sd_home):  # noqa: F811
    from graph.runner import RunError

    (sd_home / "models" / "checkpoints" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    with pytest.raises(RunError) as err:
        _runner(registry).run(txt2img_prompt(ckpt="broken.safetensors"))
    assert err.value.kind == "execution" and "broken.safetensors" in str(err.value)


def test_wrong_link_type_is_rejected_before_running(registry, sd_home):  # noqa: F811
    from graph.runner import RunError

    prompt = txt2img_prompt()
    prompt["3"]["inputs"]["model"] = ["4", 1]  # CLIP into MODEL
    with pytest.raises(RunError) as err:
        _runner(registry).run(prompt)
    assert err.value.kind == "validation"
    errors = err.value.details["node_errors"]["3"]["errors"]
    assert [e["type"] for e in errors] == ["return_type_mismatch"]
    assert errors[0]["extra_info"]["input_name"] == "model"


def test_out_of_range_widget_is_rejected(registry, sd_home):  # noqa: F811
    from graph.runner import RunError

    with pytest.raises(RunError) as err:
        _runner(registry).run(txt2img_prompt(denoise=1.5))
    errors = err.value.details["node_errors"]["3"]["errors"]
    assert errors[0]["type"] == "value_bigger_than_max" and errors[0]["extra_info"]["input_name"] == "denoise"


def test_batch_item_zero_equals_single_image(registry, sd_home):  # noqa: F811
    # COMPAT §10: one batched randn draw; with (H/8)(W/8) divisible by 4 its first item is the
    # single-image draw, so the first image of a batch of two is the batch-of-one image.
    runner = _runner(registry)
    single = _capture(txt2img_prompt(seed=9, steps=2), "3", "single")
    batch = _capture(txt2img_prompt(seed=9, steps=2), "3", "batch")
    batch["5"]["inputs"]["batch_size"] = 2
    runner.run(single)
    result = runner.run(batch)
    one, two = CaptureLatent.seen["single"]["samples"], CaptureLatent.seen["batch"]["samples"]
    assert two.shape == (2, 4, 8, 8)
    torch.testing.assert_close(two[:1], one, atol=LATENT_ATOL, rtol=LATENT_RTOL)
    assert not torch.allclose(two[1], two[0], atol=1.0)
    assert len(result.outputs["9"]["images"]) == 2


def test_vae_loader_file_replaces_the_checkpoint_vae(registry, sd_home, tiny_checkpoint_files):  # noqa: F811
    from safetensors.torch import load_file, save_file

    # A VAE-only file in the usual layout (prefix stripped) holding the checkpoint's own VAE.
    sd = load_file(str(tiny_checkpoint_files["sd1"]))
    vae_sd = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    (sd_home / "models" / "vae").mkdir(parents=True, exist_ok=True)
    save_file(vae_sd, str(sd_home / "models" / "vae" / "own.safetensors"))
    prompt = _capture(txt2img_prompt(steps=1), "3", "vae_file")
    prompt["12"] = {"class_type": "VAELoader", "inputs": {"vae_name": "own.safetensors"}}
    prompt["13"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["12", 0]}}
    prompt["14"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "own_vae"}}
    result = _runner(registry).run(prompt)
    from nodes import folder_paths

    a, b = (np.asarray(Image.open(p)) for p in result.files(folder_paths))
    assert np.array_equal(a, b)  # same weights, same pixels


def test_vae_loader_offers_and_loads_taesd_when_both_halves_exist(registry, sd_home):  # noqa: F811
    from safetensors.torch import save_file

    from nodes.sd_loaders import VAELoader
    from tests.vae_keymap import diffusers_taesd_part_to_original, tiny_diffusers_taesd

    approx = sd_home / "models" / "vae_approx"
    approx.mkdir(parents=True, exist_ok=True)
    weights = tiny_diffusers_taesd(seed=1).state_dict()
    save_file(diffusers_taesd_part_to_original(weights, "decoder"), str(approx / "taesd_decoder.safetensors"))
    options = registry.object_info_for("VAELoader")["input"]["required"]["vae_name"][0]
    assert "taesd" not in options  # the encoder half is still missing
    save_file(diffusers_taesd_part_to_original(weights, "encoder"), str(approx / "taesd_encoder.safetensors"))
    options = registry.object_info_for("VAELoader")["input"]["required"]["vae_name"][0]
    assert options[-2:] == ["taesd", "pixel_space"]
    (vae,) = VAELoader().execute("taesd")
    image = vae.decode(torch.zeros(1, 4, 8, 8))
    assert image.shape == (1, 64, 64, 3)
    assert vae.encode(image).shape == (1, 4, 8, 8)
