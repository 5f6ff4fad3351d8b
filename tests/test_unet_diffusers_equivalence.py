"""Our UNet, loaded from an original-layout file, against diffusers' UNet2DConditionModel with the
same random weights. Tolerance: max |ours - diffusers| <= 1e-4 * max |diffusers| in float32."""
import pytest
import torch

from diffusion.loading.checkpoint import load_unet
from diffusion.sampling.model_sampling import ModelSampling
from unet_models import TINY, diffusers_unet, inputs, sdxl_y, write_unet_checkpoint

REL_TOL = 1e-4
EXPECTED_ARCH = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl"}


def _rel_err(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


_PAIRS = {}


def _make_pair(arch, tmp_path_factory):
    if arch not in _PAIRS:
        ref = diffusers_unet(TINY[arch], seed=3)
        path = tmp_path_factory.mktemp(arch) / f"tiny-{arch}.safetensors"
        write_unet_checkpoint(ref, path)
        _PAIRS[arch] = (arch, ref, load_unet(path))
    return _PAIRS[arch]


@pytest.fixture(scope="module", params=sorted(TINY))
def pair(request, tmp_path_factory):
    return _make_pair(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def sd1_pair(tmp_path_factory):
    return _make_pair("sd1", tmp_path_factory)


def test_detected_arch_and_sizes(pair):
    arch, ref, model = pair
    assert model.arch == EXPECTED_ARCH[arch]
    cfg = model.model.config
    assert cfg.model_channels == ref.config.block_out_channels[0]
    assert cfg.context_dim == ref.config.cross_attention_dim
    assert cfg.use_linear_in_transformer == ref.config.use_linear_projection
    assert len(cfg.channel_mult) == len(ref.config.block_out_channels)


def test_forward_matches_diffusers(pair):
    arch, ref, model = pair
    x, t, ctx, added = inputs(arch)
    y = None
    if added is not None:
        y = sdxl_y(added["text_embeds"], added["time_ids"], TINY[arch]["addition_time_embed_dim"])
    with torch.no_grad():
        expected = ref(x, t, ctx, added_cond_kwargs=added).sample
        got = model.model(x, t, ctx, y=y)
    assert got.shape == expected.shape
    assert _rel_err(got, expected) <= REL_TOL


def test_odd_latent_size_matches_diffusers(sd1_pair):
    # 9x9 -> 5x5: the upsampler must follow the skip connection's size.
    arch, ref, model = sd1_pair
    x, t, ctx, _ = inputs(arch, size=9)
    with torch.no_grad():
        expected = ref(x, t, ctx).sample
        got = model.model(x, t, ctx)
    assert _rel_err(got, expected) <= REL_TOL


def _expected_x0(ref, x, sigma, ctx, prediction):
    """k-diffusion's wrapper around an eps/v network, written out: c_in scaling, sigma -> nearest
    timestep of the SD schedule, then eps: x - s*out; v: x/(s^2+1) - s*out/sqrt(s^2+1)."""
    from diffusion.sampling.model_sampling import discrete_sigma_table

    sigmas = discrete_sigma_table()
    t = torch.stack([(sigmas.log() - s.log()).abs().argmin() for s in sigma]).float()
    c_in = 1.0 / (sigma ** 2 + 1).sqrt()
    with torch.no_grad():
        out = ref(x * c_in[:, None, None, None], t, ctx).sample
    s = sigma[:, None, None, None]
    if prediction == "eps":
        return x - out * s
    return x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt()


@pytest.mark.parametrize("prediction", ["eps", "v_prediction"])
def test_apply_model_matches_k_diffusion_formula(sd1_pair, prediction):
    arch, ref, model = sd1_pair
    m = model.clone()
    m.prediction = prediction
    m._model_sampling = ModelSampling(prediction=prediction)
    x, _, ctx, _ = inputs(arch)
    sigma = torch.tensor([14.6146, 0.5])
    got = m.apply_model(x, sigma, ctx)
    assert _rel_err(got, _expected_x0(ref, x, sigma, ctx, prediction)) <= REL_TOL


def test_sd2_v_file_is_detected_and_denoises_as_v(tmp_path_factory):
    arch, ref, _ = _make_pair("sd2", tmp_path_factory)
    path = tmp_path_factory.mktemp("sd2v") / "sd2-v.safetensors"
    write_unet_checkpoint(ref, path, metadata={"modelspec.prediction_type": "v"})
    model = load_unet(path)
    assert (model.arch, model.prediction) == ("sd2", "v_prediction")
    assert load_unet(path, prediction="eps").prediction == "eps"  # the option overrules the file
    x, _, ctx, _ = inputs(arch)
    sigma = torch.tensor([3.0, 0.1])
    got = model.apply_model(x, sigma, ctx)
    assert _rel_err(got, _expected_x0(ref, x, sigma, ctx, "v_prediction")) <= REL_TOL
