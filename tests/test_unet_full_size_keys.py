"""At full size, our networks have exactly the tensor names and shapes of the released checkpoints'
UNets. The expected tables are generated from diffusers' configs on the meta device and renamed by
the test key map (tests/unet_keymap.py), not typed by hand."""
import pytest
import torch

from diffusion.loading.config import detect_unet_config
from diffusion.models.unet import UNetModel
from unet_keymap import diffusers_unet_to_original
from unet_models import FULL, diffusers_unet

# Facts about the released models (their published configs), to check detection reads them right.
RELEASED = {
    "sd1": dict(model_channels=320, channel_mult=(1, 2, 4, 4), context_dim=768, num_heads=8,
                use_linear_in_transformer=False, adm_in_channels=None, transformer_depth_middle=1),
    "sd2": dict(model_channels=320, channel_mult=(1, 2, 4, 4), context_dim=1024, num_head_channels=64,
                use_linear_in_transformer=True, adm_in_channels=None, transformer_depth_middle=1),
    "sdxl": dict(model_channels=320, channel_mult=(1, 2, 4), context_dim=2048, num_head_channels=64,
                 use_linear_in_transformer=True, adm_in_channels=2816, transformer_depth_middle=10,
                 transformer_depth=(0, 0, 2, 2, 10, 10)),
    "sdxl_refiner": dict(model_channels=384, channel_mult=(1, 2, 4, 4), context_dim=1280,
                         num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=2560,
                         transformer_depth_middle=4, transformer_depth=(0, 0, 4, 4, 4, 4, 0, 0)),
}


@pytest.mark.parametrize("arch", sorted(FULL))
def test_full_size_key_table(arch):
    expected = {k: tuple(v.shape) for k, v in diffusers_unet_to_original(
        diffusers_unet(FULL[arch], meta=True)).items()}
    config = detect_unet_config(expected)
    assert config.arch == arch
    for field, value in RELEASED[arch].items():
        assert getattr(config, field) == value, field
    with torch.device("meta"):
        ours = UNetModel(config)
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert got == expected


@pytest.mark.parametrize("arch", sorted(FULL))
def test_head_layout_matches_diffusers(arch):
    """Heads per transformer equal diffusers' (whose attention_head_dim counts heads)."""
    ref = diffusers_unet(FULL[arch], meta=True)
    expected = [m.heads for n, m in ref.named_modules() if n.endswith("attn1")]
    config = detect_unet_config(diffusers_unet_to_original(ref))
    with torch.device("meta"):
        ours = UNetModel(config)
    got = [m.heads for n, m in ours.named_modules() if n.endswith("attn1")]
    assert sorted(got) == sorted(expected) and len(got) > 0
