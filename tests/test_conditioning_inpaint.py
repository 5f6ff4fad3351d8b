"""Inpainting UNets (9 input channels): detection, the forward against diffusers, the concat inputs
(mask, masked-image latent) and an InpaintModelConditioning + KSampler run end to end."""
import pytest
import torch
import torch.nn.functional as F

from diffusion.loading.checkpoint import load_unet
from diffusion.models.inpaint import GREY_LATENT, concat_channels, concat_inputs, masked_pixels
from tests.sdnodes_env import temporary_base
from unet_models import TINY, diffusers_unet, write_unet_checkpoint

REL_TOL = 1e-4


class Scale:
    latent_channels = 4

    def process_in(self, x):
        return x * 0.5


@pytest.mark.parametrize("arch", ["sd1", "sd2"])
def test_nine_channel_unet_matches_diffusers(arch, tmp_path):
    ref = diffusers_unet({**TINY[arch], "in_channels": 9}, seed=4)
    path = tmp_path / f"inpaint-{arch}.safetensors"
    write_unet_checkpoint(ref, path)
    model = load_unet(path)
    assert model.arch == arch and model.model.config.in_channels == 9
    assert model.prediction == "eps"  # SD2 inpainting models are eps; the v signature is not read
    assert concat_channels(model) == 5
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 9, 8, 8, generator=gen)
    t = torch.tensor([15.0, 700.0])
    ctx = torch.randn(2, 7, TINY[arch]["cross_attention_dim"], generator=gen)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = model.model(x, t, ctx)
    assert ((got - expected).abs().max() / expected.abs().max()).item() <= REL_TOL


def test_concat_from_the_conditioning_is_rounded_mask_then_scaled_latent():
    image = torch.randn(1, 4, 4, 4)
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, 16:] = 0.8  # rounds to 1
    mask[..., :, 8:16] = 0.3  # rounds to 0
    out = concat_inputs({"concat_latent_image": image, "concat_mask": mask}, (2, 4, 4, 4), Scale())
    assert out.shape == (2, 5, 4, 4)
    small = F.interpolate(mask, size=(4, 4), mode="bilinear").round()
    assert torch.equal(out[:, :1], small.expand(2, 1, 4, 4))
    assert torch.equal(out[:, 1:], (image * 0.5).expand(2, 4, 4, 4))


def test_concat_falls_back_to_noise_mask_and_latent_then_to_grey():
    latent = torch.randn(1, 4, 4, 4)
    denoise_mask = torch.zeros(1, 4, 4, 4)
    denoise_mask[..., 2:, :] = 1
    out = concat_inputs({}, (1, 4, 4, 4), Scale(), latent_image=latent, denoise_mask=denoise_mask)
    assert torch.equal(out[:, :1], denoise_mask[:, :1]) and torch.equal(out[:, 1:], latent)
    blank = concat_inputs({}, (1, 4, 4, 4), Scale())
    assert torch.equal(blank[:, 0], torch.ones(1, 4, 4))
    assert torch.equal(blank[0, 1:, 0, 0], torch.tensor(GREY_LATENT))


def test_concat_latent_of_another_size_is_centre_cropped_and_resized():
    image = torch.arange(4 * 8.0).reshape(1, 1, 4, 8).repeat(1, 4, 1, 1)
    out = concat_inputs({"concat_latent_image": image, "concat_mask": torch.ones(4, 4)}, (1, 4, 4, 4), Scale())
    # a 4x8 latent into 4x4: the middle 4 columns, already the right size
    assert torch.equal(out[0, 1:], image[0, :, :, 2:6] * 0.5)


def test_masked_pixels_grey_out_the_rounded_mask_but_keep_it_soft():
    pixels = torch.rand(1, 20, 17, 3)
    mask = torch.zeros(1, 20, 17)
    mask[:, :10] = 0.6
    grey, m = masked_pixels(pixels, mask)
    assert grey.shape == (1, 16, 16, 3) and m.shape == (1, 1, 16, 16)
    top, left = 2, 0  # (20 % 8) // 2, (17 % 8) // 2
    assert torch.allclose(m[0, 0], mask[0, top:top + 16, left:left + 16])
    assert torch.equal(grey[0, :8], torch.full((8, 16, 3), 0.5))
    assert torch.equal(grey[0, 8:], pixels[0, top + 8:top + 16, left:left + 16])


def test_other_input_widths_are_refused():
    class Odd:
        config = type("C", (), {"in_channels": 8})()
        latent_format = Scale()

    with pytest.raises(ValueError, match="reads 8 input channels"):
        concat_channels(Odd())


@pytest.fixture(scope="module")
def inpaint_checkpoint(tmp_path_factory):
    from tools.make_tiny_checkpoint import TinySD1, make_tiny_sd1

    root = tmp_path_factory.mktemp("inpaint_ckpt")
    return make_tiny_sd1(root / "tiny-sd1-inpainting.safetensors", seed=1, sizes=TinySD1(unet_in_channels=9))


def test_inpaint_model_conditioning_through_ksampler_keeps_unmasked_latents(inpaint_checkpoint, tmp_path):
    from nodes.conditioning_nodes import InpaintModelConditioning
    from nodes.sd_conditioning import CLIPTextEncode
    from nodes.sd_loaders import CheckpointLoaderSimple
    from nodes.sd_sampling import KSampler

    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / inpaint_checkpoint.name).symlink_to(inpaint_checkpoint)
    with temporary_base(tmp_path):
        model, clip, vae = CheckpointLoaderSimple().execute(inpaint_checkpoint.name)
        assert model.model.config.in_channels == 9
        pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
        mask = torch.zeros(1, 64, 64)
        mask[:, 16:48, 24:56] = 1.0
        (pos,), (neg,) = CLIPTextEncode().execute(clip, "a cat"), CLIPTextEncode().execute(clip, "blurry")
        positive, negative, latent = InpaintModelConditioning().execute(pos, neg, vae, pixels, mask, True)
        assert latent["noise_mask"].shape == (1, 1, 64, 64)
        assert torch.equal(latent["samples"], vae.encode(pixels))
        seen = []
        apply_model = model.apply_model

        def spy(x, sigma, c_crossattn, c_concat=None, **kwargs):
            seen.append(c_concat)
            return apply_model(x, sigma, c_crossattn, c_concat=c_concat, **kwargs)

        model.apply_model = spy
        (out,) = KSampler().execute(model, 3, 3, 6.0, "euler", "normal", positive, negative, latent, 1.0)
    samples, source = out["samples"], latent["samples"]
    assert torch.isfinite(samples).all()
    latent_mask = F.interpolate(latent["noise_mask"], size=source.shape[-2:], mode="bilinear")[0, 0]
    keep = latent_mask == 0
    assert keep.sum() > 0 and (~keep).sum() > 0
    scale = max(1.0, float(source.abs().max()))
    assert (samples[..., keep] - source[..., keep]).abs().max() <= 1e-6 * scale
    assert (samples[..., ~keep] - source[..., ~keep]).abs().max() > 1e-2
    # every forward got the 5 extra channels: the rounded mask, then the scaled grey-masked latent
    assert seen and all(c is not None and c.shape[1] == 5 for c in seen)
    grey_latent = vae.encode(masked_pixels(pixels, mask)[0])
    assert torch.allclose(seen[0][0, 1:], model.latent_format.process_in(grey_latent)[0], atol=1e-6)
    assert torch.equal(seen[0][0, 0], latent_mask.round())
