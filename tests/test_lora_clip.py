"""LoRAs on the text encoders of a tiny SDXL checkpoint (CLIP-L + open_clip bigG): kohya te1/te2 names,
diffusers names, and LoRAs on open_clip's stacked in_proj, whose rows land on q, k and v. The reference is
a CLIP built from the file's weights with the delta merged in by the test (file layout, independently)."""
from __future__ import annotations

import pytest
import torch

from diffusion.loading.checkpoint import load_checkpoint
from diffusion.loading.files import read_state_dict
from diffusion.loading.text_encoders import clip_from_state_dict
from diffusion.lora import apply_lora, load_lora
from tests.sdnodes_env import tiny_checkpoint_files  # noqa: F401

G = "conditioner.embedders.1.model."
L = "conditioner.embedders.0.transformer."
R = 2


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.05


@pytest.fixture(scope="module")
def sdxl(tiny_checkpoint_files):  # noqa: F811
    path = tiny_checkpoint_files["sdxl"]
    sd, _ = read_state_dict(path)
    clip_sd = {k: v for k, v in sd.items() if k.startswith("conditioner.")}
    return load_checkpoint(path, output_vae=False).clip, clip_sd


def _encode(clip, text="a red cube on a table"):
    cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    return torch.cat([cond.flatten(), pooled.flatten()])


def _compare(clip, lora_sd, file_deltas, clip_sd, strength=1.0):
    model_patches, clip_patches, unused = load_lora(lora_sd, None, clip)
    assert unused == [] and model_patches == {}
    _, patched = apply_lora(None, clip, lora_sd, 0.0, strength)
    merged = dict(clip_sd)
    for k, d in file_deltas.items():
        merged[k] = (merged[k].float() + strength * d).to(merged[k].dtype)
    ref = clip_from_state_dict(merged, "sdxl")
    got, want = _encode(patched), _encode(ref)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert (got - _encode(clip)).abs().max() > 1e-4


def test_kohya_te1_and_te2_names(sdxl):
    clip, clip_sd = sdxl
    w = clip_sd[G + "transformer.resblocks.1.mlp.c_fc.weight"]
    up_l, down_l = _rand(32, R, seed=1), _rand(R, 32, seed=2)
    up_g, down_g = _rand(w.shape[0], R, seed=3), _rand(R, w.shape[1], seed=4)
    sd = {"lora_te1_text_model_encoder_layers_0_self_attn_v_proj.lora_up.weight": up_l,
          "lora_te1_text_model_encoder_layers_0_self_attn_v_proj.lora_down.weight": down_l,
          "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight": up_g,
          "lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight": down_g}
    _compare(clip, sd, {L + "text_model.encoder.layers.0.self_attn.v_proj.weight": up_l @ down_l,
                        G + "transformer.resblocks.1.mlp.c_fc.weight": up_g @ down_g}, clip_sd, strength=0.8)


def test_diffusers_text_encoder_2_name_on_bigg_k_proj(sdxl):
    """bigG's k_proj is rows D..2D of the file's in_proj."""
    clip, clip_sd = sdxl
    width = clip_sd[G + "transformer.resblocks.0.attn.out_proj.weight"].shape[0]
    up, down = _rand(width, R, seed=5), _rand(R, width, seed=6)
    sd = {"text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_B.weight": up,
          "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora_A.weight": down}
    delta = torch.zeros(3 * width, width)
    delta[width: 2 * width] = up @ down
    _compare(clip, sd, {G + "transformer.resblocks.0.attn.in_proj_weight": delta}, clip_sd)


@pytest.mark.parametrize("kind", ["lora", "loha"])
def test_lora_on_the_stacked_in_proj(sdxl, kind):
    """A LoRA naming open_clip's in_proj (3·D rows) is split into row slices for q, k and v."""
    clip, clip_sd = sdxl
    width = clip_sd[G + "transformer.resblocks.0.attn.out_proj.weight"].shape[0]
    key = "lora_te2_transformer_resblocks_0_attn_in_proj"
    if kind == "lora":
        up, down = _rand(3 * width, R, seed=7), _rand(R, width, seed=8)
        sd = {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down, f"{key}.alpha": torch.tensor(1.0)}
        delta = up @ down / R
    else:
        a1, b1, a2, b2 = (_rand(3 * width, R, seed=9), _rand(R, width, seed=10),
                          _rand(3 * width, R, seed=11), _rand(R, width, seed=12))
        sd = {f"text_encoders.clip_g.transformer.transformer.resblocks.0.attn.in_proj.hada_{n}": t
              for n, t in (("w1_a", a1), ("w1_b", b1), ("w2_a", a2), ("w2_b", b2))}
        sd["text_encoders.clip_g.transformer.transformer.resblocks.0.attn.in_proj.alpha"] = torch.tensor(20.0 * R)
        delta = (a1 @ b1) * (a2 @ b2) * 20.0  # alpha / rank
    _compare(clip, sd, {G + "transformer.resblocks.0.attn.in_proj_weight": delta}, clip_sd)
