"""ControlNets in sampling: the apply nodes' conditioning, the residuals guidance hands the UNet, and
KSampler runs on the tiny SD1 checkpoint with ControlNets made for its UNet."""
from __future__ import annotations

import pytest
import torch

from controlnet_models import diffusers_controlnet, save_controlnet
from tests.sdnodes_env import one_torch_thread

# The tiny SD1 checkpoint's UNet encoder (tools/make_tiny_checkpoint.py TinySD1), in diffusers' terms.
TINY_SD1_CONTROLNET = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                           attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"))
SIZE = 64
STEPS = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from diffusion.loading.checkpoint import load_checkpoint
    from diffusion.loading.controlnet import load_controlnet
    from nodes.sd_conditioning import CLIPTextEncode
    from tools.make_tiny_checkpoint import make_tiny_sd1

    root = tmp_path_factory.mktemp("cn_sampling")
    loaded = load_checkpoint(make_tiny_sd1(root / "tiny.safetensors", seed=0))
    controls = {}
    for name, seed, layout in (("canny", 1, "cldm_pth"), ("depth", 2, "diffusers")):
        path = root / f"{name}.safetensors"
        save_controlnet(diffusers_controlnet(TINY_SD1_CONTROLNET, seed=seed), path, layout)
        controls[name] = load_controlnet(path)
    encode = CLIPTextEncode().execute
    gen = torch.Generator().manual_seed(9)
    return {"model": loaded.model, "controls": controls,
            "positive": encode(loaded.clip, "a house")[0], "negative": encode(loaded.clip, "blurry")[0],
            "image": torch.rand(1, SIZE, SIZE, 3, generator=gen),
            "image2": torch.rand(1, 48, 80, 3, generator=gen)}


def _apply(env, positive, negative, control, image, strength=1.0, start=0.0, end=1.0):
    from nodes.controlnet_nodes import ControlNetApplyAdvanced

    return ControlNetApplyAdvanced().execute(positive, negative, control, image, strength, start, end)


def _latent():
    return {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}


def _ksampler(env, positive, negative):
    from nodes.sd_sampling import KSampler

    with one_torch_thread():
        return KSampler().execute(env["model"], 3, STEPS, 5.0, "euler", "normal", positive, negative, _latent())[0]["samples"]


@pytest.fixture(scope="module")
def plain(env):
    return _ksampler(env, env["positive"], env["negative"])


def test_strength_zero_is_passthrough_bit_for_bit(env, plain):
    pos, neg = _apply(env, env["positive"], env["negative"], env["controls"]["canny"], env["image"], strength=0.0)
    assert pos is env["positive"] and neg is env["negative"]
    assert torch.equal(_ksampler(env, pos, neg), plain)


def test_strength_one_changes_the_result(env, plain):
    pos, neg = _apply(env, env["positive"], env["negative"], env["controls"]["canny"], env["image"])
    assert pos[0][1]["control"] is neg[0][1]["control"]  # one control shared by both sides
    assert pos[0][1]["control_apply_to_uncond"] is False
    out = _ksampler(env, pos, neg)
    assert (out - plain).abs().max() > 1e-3


def test_a_control_outside_its_range_leaves_sampling_bit_identical(env, plain):
    # end_percent 0 < start_percent 0.0001: the range holds no sigma of the schedule
    pos, neg = _apply(env, env["positive"], env["negative"], env["controls"]["canny"], env["image"],
                      start=0.5, end=0.0)
    assert torch.equal(_ksampler(env, pos, neg), plain)


def test_start_end_percent_select_the_steps(env, monkeypatch):
    from diffusion.models.controlnet import ControlNetModel

    seen = []
    forward = ControlNetModel.forward

    def spy(self, x, hint, timesteps, *args, **kwargs):
        seen.append(float(timesteps.reshape(-1)[0]))
        return forward(self, x, hint, timesteps, *args, **kwargs)

    monkeypatch.setattr(ControlNetModel, "forward", spy)
    pos, neg = _apply(env, env["positive"], env["negative"], env["controls"]["canny"], env["image"],
                      start=0.3, end=0.8)
    _ksampler(env, pos, neg)
    ms = env["model"].model_sampling
    hi, lo = ms.percent_to_sigma(0.3), ms.percent_to_sigma(0.8)
    from diffusion.sampling.schedulers import calculate_sigmas

    sigmas = calculate_sigmas(ms, "normal", STEPS)[:-1]
    expected = [float(ms.timestep(s.reshape(1))) for s in sigmas if lo <= float(s) <= hi]
    assert 0 < len(expected) < STEPS
    assert seen == pytest.approx(expected)  # one batched (cond + uncond) ControlNet call per step inside


def test_two_mixed_controlnets_chain_and_add(env):
    canny, depth = env["controls"]["canny"], env["controls"]["depth"]
    pos1, neg1 = _apply(env, env["positive"], env["negative"], canny, env["image"], strength=0.7)
    pos2, neg2 = _apply(env, pos1, neg1, depth, env["image2"], strength=1.3)
    chained = pos2[0][1]["control"]
    assert chained.previous is pos1[0][1]["control"] and neg2[0][1]["control"] is chained
    # the chain's residuals are the strength-weighted sum of each ControlNet alone
    ms = env["model"].model_sampling
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    sigma = torch.full((2,), 3.0)
    ctx = torch.cat([env["positive"][0][0], env["negative"][0][0]])
    got = chained.residuals(x, sigma, ms, ctx, None, 2, {})
    alone = [c.residuals(x, sigma, ms, ctx, None, 2, {}) for c in
             (canny.with_hint(pos1[0][1]["control"].hint, 0.7), depth.with_hint(chained.hint, 1.3))]
    for key in ("output", "middle"):
        assert len(got[key]) == len(alone[0][key])
        for g, a, b in zip(got[key], alone[0][key], alone[1][key]):
            torch.testing.assert_close(g, a + b, rtol=1e-5, atol=1e-6)
    # and KSampler with both differs from either one alone
    both = _ksampler(env, pos2, neg2)
    assert (both - _ksampler(env, pos1, neg1)).abs().max() > 1e-4


def test_hint_is_resized_to_the_latent_with_a_centre_crop(env):
    from diffusion.resample import resize

    control = env["controls"]["canny"].with_hint(env["image2"].movedim(-1, 1), 1.0)
    hint = control.prepared_hint(torch.zeros(1, 4, 8, 8), torch.float32, {})
    assert hint.shape == (1, 3, 64, 64)
    # 80x48 -> centre 48x48 -> nearest-exact 64x64, as ComfyUI's common_upscale(..., "center")
    src = env["image2"].movedim(-1, 1)[:, :, :, 16:64]
    torch.testing.assert_close(hint, torch.nn.functional.interpolate(src, size=(64, 64), mode="nearest-exact"))
    assert torch.equal(hint, resize(src, 64, 64, "nearest-exact"))


def test_deprecated_apply_hands_the_control_to_the_negative_side(env):
    from diffusion.sampling.guidance import CFGDenoiser
    from nodes.controlnet_nodes import ControlNetApply

    (pos,) = ControlNetApply().execute(env["positive"], env["controls"]["canny"], env["image"], 0.8)
    assert "control" not in env["positive"][0][1]  # the input conditioning is not modified
    denoiser = CFGDenoiser(env["model"], pos, env["negative"], 5.0)
    assert denoiser.negative[0].options["control"] is pos[0][1]["control"]
    pos_adv, neg_adv = _apply(env, env["positive"], env["negative"], env["controls"]["canny"], env["image"])
    assert CFGDenoiser(env["model"], pos_adv, env["negative"], 5.0).negative[0].options.get("control") is None


def test_wrong_hint_channels_are_named(env):
    from nodes.controlnet_nodes import ControlNetApplyAdvanced

    with pytest.raises(ValueError, match=r"ControlNetApplyAdvanced: input 'image'.*4 channels.*reads 3"):
        ControlNetApplyAdvanced().execute(env["positive"], env["negative"], env["controls"]["canny"],
                                          torch.rand(1, 64, 64, 4), 1.0, 0.0, 1.0)


def test_diff_controlnet_adds_the_model_weights(env, tmp_path):
    from safetensors.torch import save_file

    from controlnet_models import cldm_state_dict
    from diffusion.loading.controlnet import load_controlnet
    from diffusion.loading.files import CheckpointError

    full = cldm_state_dict(diffusers_controlnet(TINY_SD1_CONTROLNET, seed=4))
    unet = env["model"].model.state_dict()
    diff = {f"control_model.{k}": (v - unet[k]) if k in unet else v for k, v in full.items()}
    assert sum(k in unet for k in full) > 20  # the encoder half is stored as a difference
    diff["difference"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in diff.items()}, str(tmp_path / "diff.safetensors"))
    save_file({k: v.contiguous() for k, v in full.items()}, str(tmp_path / "full.safetensors"))

    with pytest.raises(CheckpointError, match="diff ControlNet.*DiffControlNetLoader"):
        load_controlnet(tmp_path / "diff.safetensors")
    merged = load_controlnet(tmp_path / "diff.safetensors", model=env["model"]).network.state_dict()
    reference = load_controlnet(tmp_path / "full.safetensors").network.state_dict()
    assert merged.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(merged[k], reference[k], rtol=0, atol=1e-6)


def test_files_that_are_not_controlnets_are_refused(tmp_path):
    from safetensors.torch import save_file

    from diffusion.loading.controlnet import load_controlnet
    from diffusion.loading.files import CheckpointError

    save_file({"lora_controlnet": torch.zeros(1)}, str(tmp_path / "control-lora.safetensors"))
    save_file({"first_stage_model.decoder.conv_in.weight": torch.zeros(1)}, str(tmp_path / "vae.safetensors"))
    with pytest.raises(CheckpointError, match="Control-LoRA"):
        load_controlnet(tmp_path / "control-lora.safetensors")
    with pytest.raises(CheckpointError, match="neither a ControlNet.*nor a T2I-Adapter"):
        load_controlnet(tmp_path / "vae.safetensors")
