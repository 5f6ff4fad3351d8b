"""The KL autoencoder against diffusers' AutoencoderKL with the same random weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.models import vae as vae_mod
from diffusion.loading.config import VAEConfig, VAEError, detect_vae_config as detect_config
from diffusion.models.vae import VAE, AutoencoderKL
from tests.vae_keymap import diffusers_vae_to_original, tiny_diffusers_vae

REL_TOL = 1e-4  # float32, same weights, same math in a different module structure


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def load_through_file(tmp_path, ref, norm_groups=32, linear_attention=False) -> VAE:
    """Save the reference in the original layout with the checkpoint prefix, load it like a loader does."""
    sd = diffusers_vae_to_original(ref.state_dict(), len(ref.config.block_out_channels), linear_attention)
    path = tmp_path / "vae.safetensors"
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in sd.items()}, str(path))
    loaded = load_file(str(path))
    stripped = {k[len("first_stage_model."):]: v for k, v in loaded.items()}
    return VAE.from_state_dict(stripped, device="cpu", dtype=torch.float32, norm_groups=norm_groups)


@pytest.fixture(scope="module")
def ref():
    return tiny_diffusers_vae(seed=0)


@pytest.fixture(scope="module")
def ours(ref, tmp_path_factory):
    return load_through_file(tmp_path_factory.mktemp("vae"), ref)


def test_detected_config_of_tiny_model(ours):
    assert ours.config == VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)
    assert ours.downscale_ratio == 2 and ours.latent_channels == 4


def test_decode_matches_diffusers(ref, ours):
    torch.manual_seed(1)
    z = torch.randn(2, 4, 12, 10)
    with torch.no_grad():
        expected = ref.decode(z).sample
    expected = ((expected + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    image = ours.decode(z)
    assert image.shape == (2, 24, 20, 3) and image.dtype == torch.float32 and image.device.type == "cpu"
    assert rel_err(image, expected) <= REL_TOL


def test_encode_is_posterior_mode_of_diffusers(ref, ours):
    torch.manual_seed(2)
    image = torch.rand(2, 16, 24, 3)
    with torch.no_grad():
        expected = ref.encode(image.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    latent = ours.encode(image)
    assert latent.shape == (2, 4, 8, 12)
    assert rel_err(latent, expected) <= REL_TOL


def test_encode_drops_alpha(ours):
    torch.manual_seed(3)
    image = torch.rand(1, 10, 14, 4)
    assert torch.equal(ours.encode(image), ours.encode(image[..., :3].clone()))


def test_encode_centre_crop_offsets_at_ratio_8(tmp_path):
    ref = tiny_diffusers_vae(seed=4, block_out_channels=(32, 32, 32, 32))
    vae = load_through_file(tmp_path, ref)
    assert vae.downscale_ratio == 8
    image = torch.rand(1, 22, 29, 3)  # 22 -> 16 rows from offset 3; 29 -> 24 cols from offset 2
    with torch.no_grad():
        expected = ref.encode(image[:, 3:19, 2:26].permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert rel_err(vae.encode(image), expected) <= REL_TOL


def test_norm_groups_override_and_linear_attention(tmp_path):
    ref = tiny_diffusers_vae(seed=5, norm_groups=8)
    vae = load_through_file(tmp_path, ref, norm_groups=8, linear_attention=True)
    z = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = ((ref.decode(z).sample + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert rel_err(vae.decode(z), expected) <= REL_TOL


def test_batch_split_by_memory_estimate_gives_same_result(ours, monkeypatch):
    torch.manual_seed(6)
    z = torch.randn(3, 4, 8, 8)
    whole = ours.decode(z)
    per = ours.memory_per_sample(16, 16)
    monkeypatch.setattr(vae_mod, "available_memory", lambda device: int(per * 1.3))  # room for one at a time
    assert ours._batch_size(3, 16, 16) == 1
    # Same maths per sample; convolution kernels may pick another blocking for batch 1 vs 3, so
    # only float32 rounding may differ.
    assert torch.allclose(ours.decode(z), whole, atol=1e-5, rtol=0)


def test_memory_estimate_grows_with_pixels(ours):
    assert ours.memory_per_sample(64, 64) > 3.9 * ours.memory_per_sample(32, 32)


def test_half_precision_overflow_falls_back_to_fp32(ref, ours):
    half = VAE(AutoencoderKL(ours.config), device="cpu", dtype=torch.float16)
    half.model.load_state_dict(ours.model.state_dict())
    z = torch.randn(1, 4, 4, 4) * 3e4  # overflows fp16 activations
    out = half.decode(z)
    assert torch.isfinite(out).all()
    assert half.dtype == torch.float32
    assert torch.allclose(out, ours.decode(z), atol=1e-5)


# ---- key layout at full size ---------------------------------------------------------------------

def full_size_reference_keys() -> dict[str, tuple]:
    """Key names/shapes of the released SD VAE: diffusers' default config on meta, mapped by the keymap."""
    from diffusers import AutoencoderKL as DiffusersKL
    with torch.device("meta"):
        ref = DiffusersKL(block_out_channels=(128, 256, 512, 512),
                          down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                          latent_channels=4, norm_num_groups=32)
    sd = diffusers_vae_to_original(ref.state_dict(), 4)
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_full_size_keys_and_shapes_match_released_layout():
    expected = full_size_reference_keys()
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == expected
    assert len(ours) == 248  # the released SD1/SDXL VAE's first_stage_model tensor count
    assert "encoder.mid.attn_1.q.weight" in ours and "decoder.up.3.upsample.conv.weight" in ours


def test_full_size_config_detected_from_keys():
    sd = {k: torch.empty(s, device="meta") for k, s in full_size_reference_keys().items()}
    assert detect_config(sd) == VAEConfig()
    vae = VAE.from_state_dict(sd, device="cpu", dtype=torch.float32)
    assert vae.downscale_ratio == 8 and vae.latent_channels == 4


# ---- errors --------------------------------------------------------------------------------------

def test_missing_key_is_named(ref):
    sd = diffusers_vae_to_original(ref.state_dict(), 2)
    del sd["decoder.up.1.block.0.conv2.bias"]
    with pytest.raises(VAEError, match=r"missing key 'decoder\.up\.1\.block\.0\.conv2\.bias'"):
        VAE.from_state_dict(sd)


def test_missing_detection_key_is_named(ref):
    sd = diffusers_vae_to_original(ref.state_dict(), 2)
    del sd["quant_conv.weight"]
    with pytest.raises(VAEError, match=r"'quant_conv\.weight'"):
        VAE.from_state_dict(sd)


def test_wrong_shape_is_named(ref):
    sd = diffusers_vae_to_original(ref.state_dict(), 2)
    sd["encoder.mid.block_1.norm2.weight"] = torch.zeros(7)
    with pytest.raises(VAEError, match=r"'encoder\.mid\.block_1\.norm2\.weight' has shape \[7\], expected \[64\]"):
        VAE.from_state_dict(sd)


def test_bad_inputs_are_reported(ours):
    with pytest.raises(VAEError, match="4 latent channels, got 16"):
        ours.decode(torch.zeros(1, 16, 8, 8))
    with pytest.raises(VAEError, match=r"IMAGE \[B,H,W,C\]"):
        ours.encode(torch.zeros(8, 8, 3))


def test_training_leftovers_ignored_and_unknown_keys_reported(ref, ours, caplog):
    sd = diffusers_vae_to_original(ref.state_dict(), 2)
    sd.update({"loss.logvar": torch.zeros(()), "model_ema.decay": torch.tensor(0.999),
               "decoder.extra.weight": torch.zeros(3)})
    with caplog.at_level("WARNING", logger="diffusion.loading.keymaps"):
        vae = VAE.from_state_dict(sd, device="cpu", dtype=torch.float32)
    assert "1 unexpected keys, e.g. 'decoder.extra.weight'" in caplog.text
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(vae.decode(z), ours.decode(z))
