"""diffusion/loading/diffusers_layout.py against the tests' own key maps, which go the same way but are
written independently (tests/unet_keymap.py, tests/vae_keymap.py), at full released size (meta device)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from diffusion.loading.config import detect_unet_config  # noqa: E402
from diffusion.loading.diffusers_layout import (LayoutError, unet_head_metadata, unet_to_original,  # noqa: E402
                                                vae_to_original)
from unet_keymap import diffusers_unet_to_original  # noqa: E402
from unet_models import FULL, diffusers_unet  # noqa: E402
from vae_keymap import diffusers_vae_to_original, tiny_diffusers_vae  # noqa: E402


@pytest.mark.parametrize("arch", sorted(FULL))
def test_unet_keys_match_the_test_map(arch):
    ref = diffusers_unet(FULL[arch], meta=True)
    sd = ref.state_dict()
    ours = unet_to_original(sd)
    theirs = diffusers_unet_to_original(ref)
    # names and shapes here; values (no block swapped for one of equal shape) in test_loader_diffusers.py
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("arch", sorted(FULL))
def test_unet_head_metadata_gives_diffusers_heads(arch):
    """The heads unet/config.json declares reach the network: every attention has diffusers' head count."""
    ref = diffusers_unet(FULL[arch], meta=True)
    sd = ref.state_dict()
    metadata = unet_head_metadata(dict(ref.config), sd)
    assert metadata
    config = detect_unet_config(unet_to_original(sd), metadata)
    from diffusion.models.unet import UNetModel
    with torch.device("meta"):
        ours = UNetModel(config)
    expected = sorted(m.heads for n, m in ref.named_modules() if n.endswith("attn1"))
    assert sorted(m.heads for n, m in ours.named_modules() if n.endswith("attn1")) == expected


def test_head_metadata_rules():
    sd = {"down_blocks.0.attentions.0.x": None, "down_blocks.1.attentions.0.x": None}
    assert unet_head_metadata({"attention_head_dim": 8, "block_out_channels": [320, 640]}, sd) == \
        {"latentgraph.num_heads": "8"}
    assert unet_head_metadata({"attention_head_dim": [5, 10], "block_out_channels": [320, 640]}, sd) == \
        {"latentgraph.num_head_channels": "64"}
    # num_attention_heads overrides attention_head_dim, as in diffusers
    assert unet_head_metadata({"attention_head_dim": 8, "num_attention_heads": [4, 4],
                               "block_out_channels": [320, 640]}, sd) == {"latentgraph.num_heads": "4"}
    # no single layout for every level: leave it to detection
    assert unet_head_metadata({"attention_head_dim": [5, 7], "block_out_channels": [320, 640]}, sd) == {}
    assert unet_head_metadata({}, sd) == {}


@pytest.mark.parametrize("levels", [2, 4])
def test_vae_keys_match_the_test_map(levels):
    vae = tiny_diffusers_vae(0, block_out_channels=(32,) * levels)
    sd = vae.state_dict()
    ours = vae_to_original(sd)
    theirs = diffusers_vae_to_original(sd, levels, linear_attention=True)
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_vae_old_attention_names():
    """diffusers folders saved before 0.14 name the VAE attention query/key/value/proj_attn."""
    sd = tiny_diffusers_vae(0, block_out_channels=(32, 32)).state_dict()
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn", "group_norm": "group_norm"}
    renamed = {}
    for k, v in sd.items():
        for new, legacy in old.items():
            if f".attentions.0.{new}." in k:
                k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
                break
        renamed[k] = v
    assert renamed.keys() != sd.keys()
    assert vae_to_original(renamed).keys() == vae_to_original(sd).keys()


def test_wrong_network_is_refused():
    with pytest.raises(LayoutError, match="not a diffusers UNet"):
        unet_to_original({"input_blocks.0.0.weight": torch.zeros(1)})
    with pytest.raises(LayoutError, match="not a diffusers AutoencoderKL"):
        vae_to_original({"encoder.conv_in.weight": torch.zeros(1)})
    with pytest.raises(LayoutError, match="no original name for 'extra.weight'"):
        unet_to_original({"conv_in.weight": torch.zeros(1), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1),
                          "extra.weight": torch.zeros(1)})
