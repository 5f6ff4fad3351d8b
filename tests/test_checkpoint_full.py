"""load_checkpoint on complete single-file checkpoints (UNet + VAE + text encoders), built at tiny
size by tools/make_tiny_checkpoint.py in the original key layout."""
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffusion.loading import checkpoint as ck, files as model_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
tiny = pytest.importorskip("make_tiny_checkpoint")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    out = {}
    for arch, build in (("sd1", tiny.build_sd1_state_dict), ("sdxl", tiny.build_sdxl_state_dict)):
        sd, meta = build()
        path = root / f"{arch}.safetensors"
        save_file(sd, str(path), metadata=meta)
        out[arch] = (path, sd, meta)
    return out


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_load_checkpoint_builds_all_parts(files, arch):
    path, sd, _ = files[arch]
    loaded = ck.load_checkpoint(path)
    model, clip, vae, got_arch = loaded  # unpacks like a tuple
    assert got_arch == arch == model.arch and clip.arch == arch
    unet_sd = model.model.state_dict()
    for k, v in unet_sd.items():
        assert torch.equal(v, sd[ck.UNET_PREFIX + k]), k
    expected_scale = {"sd1": 0.18215, "sdxl": 0.13025}[arch]
    assert model.latent_format.scale_factor == pytest.approx(expected_scale)
    assert vae.latent_channels == 4
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert cond.shape[-1] == model.model.config.context_dim
    if arch == "sdxl":
        y = model.encode_adm({"pooled_output": pooled, "width": 64, "height": 64}, batch=1)
        assert y.shape == (1, model.model.config.adm_in_channels)


def test_denoise_step_runs_end_to_end(files):
    path, _, _ = files["sd1"]
    model, clip, vae, _ = ck.load_checkpoint(path)
    cond = clip.encode_from_tokens(clip.tokenize("a photo"))
    x = torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([1.0])
    x0 = model.apply_model(x, sigma, cond)
    assert x0.shape == x.shape and torch.isfinite(x0).all()
    image = vae.decode(model.latent_format.process_out(x0))
    assert image.shape == (1, 64, 64, 3)


def test_checkpoint_missing_a_part(tmp_path, files):
    _, sd, meta = files["sd1"]
    no_vae = {k: v for k, v in sd.items() if not k.startswith(ck.VAE_PREFIX)}
    path = tmp_path / "novae.safetensors"
    save_file(no_vae, str(path), metadata=meta)
    with pytest.raises(model_files.CheckpointError, match=r"novae\.safetensors: holds no VAE"):
        ck.load_checkpoint(path)
    model, clip, vae, _ = ck.load_checkpoint(path, output_vae=False)
    assert vae is None and clip is not None


def test_vae_only_and_unet_only_files(tmp_path, files):
    _, sd, meta = files["sd1"]
    vae_path = tmp_path / "vae.safetensors"
    save_file({k[len(ck.VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(ck.VAE_PREFIX)},
              str(vae_path))
    assert ck.load_vae(vae_path).latent_channels == 4
    unet_path = _unet_only(tmp_path, sd, meta)
    with pytest.raises(model_files.CheckpointError, match=r"unet\.safetensors: holds no VAE"):
        ck.load_vae(unet_path)
    assert ck.load_unet(unet_path).arch == "sd1"


def _unet_only(tmp_path, sd, meta):
    path = tmp_path / "unet.safetensors"
    save_file({k: v for k, v in sd.items() if k.startswith(ck.UNET_PREFIX)}, str(path), metadata=meta)
    return path


def test_text_encoder_file(tmp_path, files):
    _, sd, _ = files["sd1"]
    prefix = "cond_stage_model.transformer."
    path = tmp_path / "clip_l.safetensors"
    save_file({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, str(path))
    clip = ck.load_text_encoders([path], "stable_diffusion")
    assert clip.encode_from_tokens(clip.tokenize("x")).shape[0] == 1
