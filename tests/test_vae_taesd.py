"""TAESD against diffusers' AutoencoderTiny with the same random weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from diffusion.loading import taesd
from diffusion.loading.config import TAESDConfig, TAESDError, VAEError
from diffusion.models import latent_formats
from diffusion.models.taesd import build_decoder, build_encoder
from tests.vae_keymap import diffusers_taesd_part_to_original, tiny_diffusers_taesd

REL_TOL = 1e-4  # float32, same weights


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    ref = tiny_diffusers_taesd()
    d = tmp_path_factory.mktemp("vae_approx")
    sd = ref.state_dict()
    save_file(diffusers_taesd_part_to_original(sd, "encoder"), str(d / "taesd_encoder.safetensors"))
    save_file(diffusers_taesd_part_to_original(sd, "decoder"), str(d / "taesd_decoder.safetensors"))
    return ref, d


@pytest.fixture(scope="module")
def ours(files):
    _, d = files
    return taesd.load_taesd_vae(d / "taesd_encoder.safetensors", d / "taesd_decoder.safetensors",
                                variant="taesd", device="cpu")


def test_decoder_matches_diffusers(files, ours):
    ref, _ = files
    torch.manual_seed(1)
    z = torch.randn(2, 4, 6, 5) * 2
    with torch.no_grad():
        expected = ref.decoder(z)  # diffusers returns -1..1
    got = ours.decoder(z) * 2 - 1
    assert got.shape == (2, 3, 48, 40)
    assert rel_err(got, expected) <= REL_TOL


def test_encoder_matches_diffusers(files, ours):
    ref, _ = files
    torch.manual_seed(2)
    image = torch.rand(1, 3, 32, 24)
    with torch.no_grad():
        expected = ref.encoder(image * 2 - 1)  # diffusers takes -1..1, TAESD proper takes 0..1
    got = ours.encoder(image)
    assert got.shape == (1, 4, 4, 3)
    assert rel_err(got, expected) <= REL_TOL


def test_vae_interface_scales_latents_and_round_trips_shapes(files, ours):
    ref, _ = files
    torch.manual_seed(3)
    samples = torch.randn(1, 4, 5, 7) * 5  # unscaled VAE space
    with torch.no_grad():
        expected = ((ref.decoder(samples * 0.18215) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    image = ours.decode(samples)
    assert image.shape == (1, 40, 56, 3) and image.dtype == torch.float32
    assert rel_err(image, expected) <= REL_TOL
    latent = ours.encode(torch.rand(2, 44, 61, 4))  # alpha dropped, cropped to 40x56
    assert latent.shape == (2, 4, 5, 7)
    with torch.no_grad():
        img = torch.rand(1, 16, 16, 3)
        expected_latent = ref.encoder(img.permute(0, 3, 1, 2) * 2 - 1) / 0.18215
    assert rel_err(ours.encode(img), expected_latent) <= REL_TOL
    assert ours.decode(latent).shape == (2, 40, 56, 3)


def test_single_tile_equals_whole(ours):
    z = torch.randn(1, 4, 6, 6)
    assert torch.equal(ours.decode_tiled(z, tile=64, overlap=0), ours.decode(z))


def test_full_size_keys_match_released_files():
    from diffusers import AutoencoderTiny
    with torch.device("meta"):
        ref = AutoencoderTiny()  # the released taesd configuration
        enc, dec = build_encoder(TAESDConfig()), build_decoder(TAESDConfig())
    sd = ref.state_dict()
    for part, ours in (("encoder", enc), ("decoder", dec)):
        expected = {k: tuple(v.shape) for k, v in diffusers_taesd_part_to_original(sd, part).items()}
        assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    # spot checks from the released files' layout: decoder starts at index 1, ends at 19
    assert tuple(dec.state_dict()["1.weight"].shape) == (64, 4, 3, 3)
    assert tuple(dec.state_dict()["19.weight"].shape) == (3, 64, 3, 3)
    assert tuple(enc.state_dict()["14.weight"].shape) == (4, 64, 3, 3)


def test_sixteen_channel_variant_detected(tmp_path):
    ref = tiny_diffusers_taesd(latent_channels=16, seed=4)
    sd = ref.state_dict()
    save_file(diffusers_taesd_part_to_original(sd, "decoder"), str(tmp_path / "taef1_decoder.safetensors"))
    vae = taesd.load_taesd_vae(None, tmp_path / "taef1_decoder.safetensors", variant="taef1", device="cpu")
    assert vae.latent_channels == 16
    fmt = latent_formats.Flux()
    z = torch.randn(1, 16, 3, 3)
    with torch.no_grad():
        expected = ((ref.decoder(fmt.process_in(z)) + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    assert rel_err(vae.decode(z), expected) <= REL_TOL
    with pytest.raises(TAESDError, match="taesd decoder has 16 latent channels, expected 4"):
        taesd.load_taesd_vae(None, tmp_path / "taef1_decoder.safetensors", variant="taesd")


def test_errors_name_the_key(files):
    ref, d = files
    sd = diffusers_taesd_part_to_original(ref.state_dict(), "decoder")
    del sd["8.conv.2.bias"]
    with pytest.raises(TAESDError, match=r"missing key '8\.conv\.2\.bias'"):
        taesd.load_part(sd, "decoder")
    sd = diffusers_taesd_part_to_original(ref.state_dict(), "decoder")
    sd["5.conv.4.weight"] = torch.zeros(16, 16, 1, 1)
    with pytest.raises(TAESDError, match=r"'5\.conv\.4\.weight' has shape \[16, 16, 1, 1\], expected \[16, 16, 3, 3\]"):
        taesd.load_part(sd, "decoder")
    with pytest.raises(TAESDError, match="taesd_encoder.safetensors"):
        taesd.load_file(d / "taesd_encoder.safetensors", "decoder")  # the wrong half
    with pytest.raises(VAEError, match="TAESD decode expects 4 latent channels, got 3"):
        taesd.load_taesd_vae(None, d / "taesd_decoder.safetensors", device="cpu").decode(torch.zeros(1, 3, 4, 4))
