"""Merging (ModelMerge*/CLIPMerge* as patches) and saving (CheckpointSave, LoraSave) on the tiny SD1
checkpoints: merged weights against the formulas, a saved checkpoint reloaded by our loader and by
diffusers' single-file converters (local configs, no hub), an extracted LoRA reproducing a difference."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from diffusion.loading.checkpoint import load_checkpoint
from diffusion.loading.files import read_state_dict
from diffusion.lora import apply_lora, extract_lora
from nodes import image_nodes
from nodes.lora_nodes import LoraSave
from nodes.merge_nodes import (CheckpointSave, CLIPMergeAdd, CLIPMergeSimple, CLIPMergeSubtract, ModelMergeAdd,
                               ModelMergeBlocks, ModelMergeSimple, ModelMergeSubtract)
from tools.make_tiny_checkpoint import make_tiny_sd1

LINEAR = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    return (load_checkpoint(make_tiny_sd1(root / "a.safetensors", seed=0)),
            load_checkpoint(make_tiny_sd1(root / "b.safetensors", seed=1)))


def _weights(model):
    return {k: v.float() for k, v in model.patched_state_dict().items()}


def _close(a, b, tol=1e-6):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def test_merge_simple_add_subtract_blocks(two_models):
    (m1, *_), (m2, *_) = two_models
    w1, w2 = _weights(m1), _weights(m2)
    simple = _weights(ModelMergeSimple().execute(m1, m2, 0.3)[0])
    add = _weights(ModelMergeAdd().execute(m1, m2)[0])
    sub = _weights(ModelMergeSubtract().execute(m1, m2, 0.5)[0])
    blocks = _weights(ModelMergeBlocks().execute(m1, m2, 0.2, 0.5, 0.9)[0])
    for k in w1:
        assert _close(simple[k], 0.3 * w1[k] + 0.7 * w2[k]), k
        assert _close(add[k], w1[k] + w2[k]), k
        assert _close(sub[k], 0.5 * (w1[k] - w2[k])), k
        r = 0.5 if k.startswith("middle") else 0.9 if k.startswith("out") else 0.2
        assert _close(blocks[k], r * w1[k] + (1 - r) * w2[k]), k
    assert m1.patches == {} and m2.patches == {}  # the inputs stay unpatched


def test_merging_a_model_with_a_lora_carries_the_lora(two_models):
    (m1, *_), (m2, *_) = two_models
    up, down = torch.randn(32, 2) * 0.1, torch.randn(2, 32) * 0.1
    m2_lora, _ = apply_lora(m2, None, {f"diffusion_model.{LINEAR[:-7]}.lora_up.weight": up,
                                       f"diffusion_model.{LINEAR[:-7]}.lora_down.weight": down}, 1.0, 0.0)
    merged = _weights(ModelMergeSimple().execute(m1, m2_lora, 0.25)[0])
    want = 0.25 * _weights(m1)[LINEAR] + 0.75 * (_weights(m2)[LINEAR] + up @ down)
    assert _close(merged[LINEAR], want)


def test_clip_merges(two_models):
    (_, c1, *_), (_, c2, *_) = two_models
    w1, w2 = c1.patcher.patched_state_dict(), c2.patcher.patched_state_dict()
    simple = CLIPMergeSimple().execute(c1, c2, 0.4)[0].patcher.patched_state_dict()
    add = CLIPMergeAdd().execute(c1, c2)[0].patcher.patched_state_dict()
    sub = CLIPMergeSubtract().execute(c1, c2, 2.0)[0].patcher.patched_state_dict()
    for k in w1:
        a, b = w1[k].float(), w2[k].float()
        assert _close(simple[k].float(), 0.4 * a + 0.6 * b, 1e-3), k  # stored in fp16
        assert _close(add[k].float(), a + b, 1e-3) and _close(sub[k].float(), 2.0 * (a - b), 1e-3), k


@pytest.fixture
def output_home(tmp_path, monkeypatch):
    from tests.sdnodes_env import temporary_base

    with temporary_base(tmp_path):
        yield tmp_path


def _merged_and_saved(two_models, output_home, prompt=None, extra=None):
    (m1, c1, v1, _), (m2, c2, *_) = two_models
    model = ModelMergeSimple().execute(m1, m2, 0.5)[0]
    clip = CLIPMergeSimple().execute(c1, c2, 0.5)[0]
    assert CheckpointSave().execute(model, clip, v1, "checkpoints/merged", prompt, extra) == {}
    files = sorted((output_home / "output" / "checkpoints").glob("merged_*_.safetensors"))
    assert [f.name for f in files] == ["merged_00001_.safetensors"]
    return model, clip, v1, files[0]


def test_checkpoint_save_reloads_bit_for_bit(two_models, output_home):
    prompt, extra = {"1": {"class_type": "X", "inputs": {}}}, {"workflow": {"nodes": []}}
    model, clip, vae, path = _merged_and_saved(two_models, output_home, prompt, extra)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == extra["workflow"]
    assert meta["modelspec.predict_key"] == "epsilon"
    back = load_checkpoint(path)
    assert back.arch == "sd1" and back.model.prediction == "eps"
    want = model.patched_state_dict()
    got = back.model.patched_state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k].to(got[k].dtype)) for k in want)
    want_c, got_c = clip.patcher.patched_state_dict(), back.clip.patcher.patched_state_dict()
    assert all(torch.equal(got_c[k], want_c[k]) for k in want_c)
    assert all(torch.equal(a, b) for a, b in zip(back.vae.model.state_dict().values(),
                                                   vae.model.state_dict().values()))
    tokens = clip.tokenize("a cat")
    assert torch.equal(back.clip.encode_from_tokens(tokens), clip.encode_from_tokens(tokens))


def test_disable_metadata(two_models, output_home, monkeypatch):
    monkeypatch.setattr(image_nodes, "DISABLE_METADATA", True)
    *_, path = _merged_and_saved(two_models, output_home, {"1": {}}, {"workflow": {}})
    with safe_open(str(path), "pt") as f:
        assert "prompt" not in f.metadata() and "workflow" not in f.metadata()


def test_saved_checkpoint_loads_in_diffusers_single_file_converters(two_models, output_home):
    """diffusers' own converters (what from_single_file runs) read every tensor into models built from
    local configs, and the UNet computes what ours does."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel

    model, clip, _, path = _merged_and_saved(two_models, output_home)
    sd, _ = read_state_dict(path)
    unet_cfg = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                    down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
                    cross_attention_dim=32, attention_head_dim=8)
    unet = UNet2DConditionModel(**unet_cfg).eval()
    unet.load_state_dict(convert_ldm_unet_checkpoint(sd, dict(unet_cfg, addition_embed_type=None,
                                                              class_embed_type=None, num_class_embeds=None)),
                         strict=True)
    vae_cfg = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                   down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    AutoencoderKL(**vae_cfg).load_state_dict(convert_ldm_vae_checkpoint(sd, vae_cfg), strict=True)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=2, hidden_act="quick_gelu"))
    converted = convert_ldm_clip_checkpoint(sd)
    if not hasattr(te, "text_model"):  # transformers 5 dropped that level
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    missing, unexpected = te.load_state_dict(converted, strict=False)
    assert [k for k in missing if "position_ids" not in k] == [] and unexpected == []

    g = torch.Generator().manual_seed(0)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 32, generator=g), torch.tensor([321.0])
    with torch.no_grad():
        want = unet(x, t, ctx).sample
        model.patch_model()
        got = model.model(x, t, ctx)
        model.unpatch_model()
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_extract_lora_reproduces_a_low_rank_difference():
    g = torch.Generator().manual_seed(0)
    diff = torch.randn(24, 3, generator=g) @ torch.randn(3, 16, generator=g) * 0.01
    up, down = extract_lora(diff, 3)
    assert up.shape == (24, 3) and down.shape == (3, 16)
    # exact but for the clamp of the factors to ±(0.99 quantile of their values), written out here
    u, s, vh = torch.linalg.svd(diff, full_matrices=False)
    u, vh = u[:, :3] * s[:3], vh[:3]
    hi = torch.quantile(torch.cat([u.flatten(), vh.flatten()]), 0.99)
    want = u.clamp(-hi, hi) @ vh.clamp(-hi, hi)
    assert (up @ down - want).abs().max() <= 1e-6 * want.abs().max()
    assert (up @ down - diff).norm() <= 0.1 * diff.norm()
    conv = torch.randn(8, 2, generator=g) @ torch.randn(2, 4 * 9, generator=g)
    up, down = extract_lora(conv.reshape(8, 4, 3, 3), 2)
    assert up.shape == (8, 2, 1, 1) and down.shape == (2, 4, 3, 3)


@pytest.mark.parametrize("lora_type", ["standard", "full_diff"])
def test_lora_save_round_trip(two_models, output_home, lora_type):
    """LoraSave of (model1 + lora) - model1 gives a LoRA that re-creates the patched weight: exactly
    (to fp16) as a full difference, up to the factor clamp as an SVD LoRA."""
    (m1, *_), _ = two_models
    up, down = torch.randn(32, 2) * 0.1, torch.randn(2, 32) * 0.1
    module = f"diffusion_model.{LINEAR[:-7]}"
    with_lora, _ = apply_lora(m1, None, {f"{module}.lora_up.weight": up, f"{module}.lora_down.weight": down}, 1.0, 0.0)
    diff = ModelMergeSubtract().execute(with_lora, m1, 1.0)[0]
    assert LoraSave().execute("loras/extracted", 4, lora_type, True, model_diff=diff) == {}
    path, = (output_home / "output" / "loras").glob("extracted_*.safetensors")
    lora, _ = read_state_dict(path)
    if lora_type == "standard":
        assert lora[f"{module}.lora_up.weight"].dtype == torch.float16
        assert f"input_blocks.1.0.in_layers.2.lora_down.weight" in " ".join(lora)  # 3x3 convs too
    else:
        assert f"{module}.diff" in lora and f"{module.replace('.weight', '')}.lora_up.weight" not in lora
    back, _ = apply_lora(m1, None, lora, 1.0, 0.0)
    got, want = _weights(back)[LINEAR], _weights(with_lora)[LINEAR]
    delta = up @ down
    tol = 2e-3 * delta.abs().max() if lora_type == "full_diff" else 0.15 * delta.norm()
    assert (got - want).norm() <= tol if lora_type == "standard" else (got - want).abs().max() <= tol
