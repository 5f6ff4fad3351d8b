"""CLIPLoader, DualCLIPLoader and UNETLoader on files split from the tiny checkpoints: the same
conditioning and the same model output as the checkpoint; fp8 storage; clear errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from nodes.sd_conditioning import CLIPTextEncode
from nodes.sd_loaders import CheckpointLoaderSimple, CLIPLoader, DualCLIPLoader, UNETLoader
from tests.sdnodes_env import SD1_NAME, SDXL_NAME, sd_home, tiny_checkpoint_files  # noqa: F401

PROMPT = "a (red:1.2) apple on a table"


def _split(src, dst, prefix):
    sd = load_file(str(src))
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    assert part, prefix
    save_file(part, str(dst))


@pytest.fixture
def split_home(sd_home, tiny_checkpoint_files):  # noqa: F811
    """sd_home plus the checkpoints' parts as separate files, in the legacy `clip/` and `unet/` folders
    for SD1 and the current `text_encoders/` and `diffusion_models/` for SDXL."""
    models = sd_home / "models"
    for sub in ("clip", "unet", "text_encoders", "diffusion_models"):
        (models / sub).mkdir(exist_ok=True)
    sd1, sdxl = tiny_checkpoint_files["sd1"], tiny_checkpoint_files["sdxl"]
    _split(sd1, models / "clip" / "sd1_clip_l.safetensors", "cond_stage_model.transformer.")
    _split(sd1, models / "unet" / "sd1_unet.safetensors", "model.diffusion_model.")
    _split(sdxl, models / "text_encoders" / "xl_clip_l.safetensors", "conditioner.embedders.0.transformer.")
    _split(sdxl, models / "text_encoders" / "xl_clip_g.safetensors", "conditioner.embedders.1.model.")
    _split(sdxl, models / "diffusion_models" / "xl_unet.safetensors", "model.diffusion_model.")
    return sd_home


def _encode(clip):
    (cond,) = CLIPTextEncode().execute(clip, PROMPT)
    return cond[0][0], cond[0][1].get("pooled_output")


def _same(a, b):
    assert a[0].shape == b[0].shape and torch.equal(a[0], b[0])
    assert (a[1] is None) == (b[1] is None) and (a[1] is None or torch.equal(a[1], b[1]))


def _denoise(model, context, y=None):
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    return model.apply_model(x, torch.tensor([3.0]), context, y=y)


def test_clip_loader_gives_the_checkpoints_conditioning(split_home):
    _, ckpt_clip, _ = CheckpointLoaderSimple().execute(SD1_NAME)
    (clip,) = CLIPLoader().execute("sd1_clip_l.safetensors", "stable_diffusion")
    assert clip.arch == "sd1"
    _same(_encode(clip), _encode(ckpt_clip))
    (on_cpu,) = CLIPLoader().execute("sd1_clip_l.safetensors", "stable_diffusion", device="cpu")
    _same(_encode(on_cpu), _encode(ckpt_clip))


def test_dual_clip_loader_gives_sdxl_conditioning_in_either_order(split_home):
    _, ckpt_clip, _ = CheckpointLoaderSimple().execute(SDXL_NAME)
    expected = _encode(ckpt_clip)
    assert expected[1] is not None
    for pair in (("xl_clip_l.safetensors", "xl_clip_g.safetensors"), ("xl_clip_g.safetensors", "xl_clip_l.safetensors")):
        (clip,) = DualCLIPLoader().execute(*pair, "sdxl")
        assert clip.arch == "sdxl"
        _same(_encode(clip), expected)


def test_unet_loader_gives_the_checkpoints_model(split_home):
    for ckpt, unet_file in ((SD1_NAME, "sd1_unet.safetensors"), (SDXL_NAME, "xl_unet.safetensors")):
        ckpt_model, ckpt_clip, _ = CheckpointLoaderSimple().execute(ckpt)
        (model,) = UNETLoader().execute(unet_file, "default")
        assert (model.arch, model.prediction) == (ckpt_model.arch, ckpt_model.prediction)
        sd_a, sd_b = model.model.state_dict(), ckpt_model.model.state_dict()
        assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
        if model.arch == "sd1":  # SDXL's extra pooled/size input is the same code path either way
            context, _ = _encode(ckpt_clip)
            assert torch.equal(_denoise(model, context), _denoise(ckpt_model, context))


@pytest.mark.parametrize("option, dtype", [("fp8_e4m3fn", "float8_e4m3fn"), ("fp8_e4m3fn_fast", "float8_e4m3fn"),
                                           ("fp8_e5m2", "float8_e5m2")])
def test_unet_loader_fp8_stores_float8_and_computes_upcast(split_home, option, dtype):
    ckpt_model, ckpt_clip, _ = CheckpointLoaderSimple().execute(SD1_NAME)
    (model,) = UNETLoader().execute("sd1_unet.safetensors", option)
    stored = getattr(torch, dtype)
    params = dict(model.model.named_parameters())
    assert all(p.dtype == stored for p in params.values() if p.is_floating_point())
    assert model.dtype == torch.float32
    # reference: the checkpoint's float32 UNet with every weight rounded through the float8 dtype
    reference = ckpt_model.clone()
    reference.add_patches({k: v.float() - ckpt_model.model.get_parameter(k).float() for k, v in params.items()})
    context, _ = _encode(ckpt_clip)
    got, want = _denoise(model, context), _denoise(reference, context)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert all(p.dtype == stored for p in model.model.parameters())  # still stored in float8 after the run
    assert not torch.allclose(_denoise(ckpt_model, context), got, atol=1e-6)  # float8 rounding is visible


def test_unsupported_types_and_missing_files_are_named(split_home):
    with pytest.raises(ValueError, match="CLIPLoader: type 'sd3' is not supported"):
        CLIPLoader().execute("sd1_clip_l.safetensors", "sd3")
    with pytest.raises(ValueError, match="DualCLIPLoader: type 'flux' is not supported"):
        DualCLIPLoader().execute("xl_clip_l.safetensors", "xl_clip_g.safetensors", "flux")
    with pytest.raises(FileNotFoundError, match="clip_name2 'nope.safetensors'.*text_encoders"):
        DualCLIPLoader().execute("xl_clip_l.safetensors", "nope.safetensors", "sdxl")
    with pytest.raises(FileNotFoundError, match="unet_name 'nope.safetensors'.*diffusion_models"):
        UNETLoader().execute("nope.safetensors", "default")
    save_file({"model.embed_tokens.weight": torch.zeros(8, 4)}, str(split_home / "models" / "text_encoders" / "qwen.safetensors"))
    with pytest.raises(ValueError, match=r"qwen\.safetensors: no CLIP text model found"):
        CLIPLoader().execute("qwen.safetensors", "stable_diffusion")  # e.g. Anima's Qwen3 encoder
    with pytest.raises(ValueError, match="weight_dtype must be one of"):
        UNETLoader().execute("sd1_unet.safetensors", "fp4")
