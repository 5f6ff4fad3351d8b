"""End to end, headless, on the tiny SD1 checkpoint, with the UI-format fixtures in
tests/fixtures/workflows/: one LoRA, two stacked LoRAs, a textual-inversion embedding plus a LoRA,
and a merge saved as a checkpoint and loaded back.

The LoRA files are written here: one in diffusers/PEFT format (`unet.<diffusers name>.lora_A/B`,
`text_encoder.…`), the same one converted to kohya's format (`lora_unet_…`, `lora_te_…`, alpha = rank)
by renaming keys, with diffusers' names taken from the independent test key map (tests/unet_keymap.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.sdnodes_env import SD1_NAME, registry, sd_home, tiny_checkpoint_files  # noqa: F401
from unet_keymap import diffusers_to_original_key

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "workflows"
RANK = 2
# diffusers' description of the tiny SD1 UNet (tools/make_tiny_checkpoint.py TinySD1)
TINY_SD1_DIFFUSERS = dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                          down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
                          cross_attention_dim=32, attention_head_dim=8)


def _diffusers_modules():
    """(diffusers module name, weight shape) of the tiny UNet's attention and resnet layers."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**TINY_SD1_DIFFUSERS)
    up_attn = [len(getattr(b, "attentions", [])) > 0 for b in unet.up_blocks]
    out = []
    for key, p in unet.state_dict().items():
        if key.endswith(".weight") and p.dim() >= 2 and ("attentions" in key or "resnets" in key):
            diffusers_to_original_key(key, 1, up_attn)  # a layer the original layout has
            out.append((key[: -len(".weight")], tuple(p.shape)))
    return out


def _peft_lora(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def add(module, shape):
        out_c, in_c, *k = shape
        sd[f"{module}.lora_A.weight"] = torch.randn(RANK, in_c, *k, generator=g) * 0.3
        sd[f"{module}.lora_B.weight"] = torch.randn(out_c, RANK, *[1] * len(k), generator=g) * 0.3

    for module, shape in _diffusers_modules():
        add(f"unet.{module}", shape)
    for layer in range(2):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"):
            add(f"text_encoder.text_model.encoder.layers.{layer}.{proj}", (32, 32))
        add(f"text_encoder.text_model.encoder.layers.{layer}.mlp.fc1", (128, 32))
    return sd


def _to_kohya(peft: dict) -> dict:
    out = {}
    for key, t in peft.items():
        module, role = key.rsplit(".lora_", 1)
        top, rest = module.split(".", 1)
        name = ("lora_unet_" if top == "unet" else "lora_te_") + rest.replace(".", "_")
        out[f"{name}.lora_{'down' if role.startswith('A') else 'up'}.weight"] = t
        out[f"{name}.alpha"] = torch.tensor(float(RANK))  # alpha = rank: scale 1, as PEFT without alpha
    return out


@pytest.fixture
def home(sd_home):  # noqa: F811
    loras = sd_home / "models" / "loras"
    loras.mkdir(parents=True)
    save_file(_peft_lora(1), str(loras / "style_peft.safetensors"))
    save_file(_to_kohya(_peft_lora(1)), str(loras / "style_kohya.safetensors"))
    save_file(_peft_lora(2), str(loras / "detail_peft.safetensors"))
    emb = sd_home / "models" / "embeddings"
    emb.mkdir(parents=True)
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(3)) * 0.02},
              str(emb / "tiny_concept.safetensors"))
    return sd_home


def _run(registry, workflow, **replace):  # noqa: F811
    from graph.runner import Runner
    from graph.workflow_formats import ui_to_api

    prompt = ui_to_api(workflow, registry.object_info_for) if "nodes" in workflow else workflow
    for path, value in replace.items():
        node, name = path.split("__")
        prompt[node]["inputs"][name] = value
    Runner(registry).run(prompt)
    return prompt


def _image(home, prefix):
    files = sorted((home / "output").glob(f"{prefix}_*.png"))
    with Image.open(files[-1]) as im:
        return np.asarray(im).astype(np.int16)


def _fixture(name):
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_one_lora_and_its_diffusers_twin_give_the_same_image(registry, home):  # noqa: F811
    wf = _fixture("lora_one")
    _run(registry, wf)
    kohya = _image(home, "one_lora")
    _run(registry, wf, **{"10__lora_name": "style_peft.safetensors", "9__filename_prefix": "peft"})
    assert np.array_equal(_image(home, "peft"), kohya)
    _run(registry, wf, **{"10__strength_model": 0.0, "10__strength_clip": 0.0, "9__filename_prefix": "off"})
    assert np.abs(_image(home, "off") - kohya).max() > 8  # the LoRA does change the picture


def test_two_stacked_loras(registry, home):  # noqa: F811
    wf = _fixture("lora_two_stacked")
    _run(registry, wf)
    both = _image(home, "two_loras")
    _run(registry, wf, **{"11__strength_model": 0.0, "11__strength_clip": 0.0, "9__filename_prefix": "first"})
    _run(registry, _fixture("lora_one"), **{"9__filename_prefix": "single"})
    assert np.array_equal(_image(home, "first"), _image(home, "single"))  # strength 0 passes through
    assert np.abs(both - _image(home, "first")).max() > 8


def test_textual_inversion_with_a_lora(registry, home, caplog):  # noqa: F811
    wf = _fixture("lora_textual_inversion")
    _run(registry, wf)
    with_embedding = _image(home, "ti_lora")
    assert not any("tiny_concept" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    _run(registry, wf, **{"6__text": "a photo of tiny_concept on a table", "9__filename_prefix": "plain"})
    assert np.abs(with_embedding - _image(home, "plain")).max() > 0


def test_merge_saved_and_reloaded(registry, home, tiny_checkpoint_files):  # noqa: F811
    from tools.make_tiny_checkpoint import make_tiny_sd1

    make_tiny_sd1(home / "models" / "checkpoints" / "tiny-sd1-b.safetensors", seed=1)
    _run(registry, _fixture("merge_save"))
    saved, = (home / "output" / "checkpoints").glob("merged_*_.safetensors")
    (home / "models" / "checkpoints" / "merged.safetensors").symlink_to(saved)
    # the same merge computed in the graph, and the saved file loaded back, sample the same picture
    merged_graph = _fixture("lora_one")
    prompt = _run(registry, merged_graph, **{"10__strength_model": 0.0, "10__strength_clip": 0.0,
                                              "9__filename_prefix": "unsaved"})
    prompt = {k: v for k, v in prompt.items() if k != "10"}
    prompt.update({
        "12": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1-b.safetensors"}},
        "13": {"class_type": "ModelMergeSimple", "inputs": {"ratio": 0.4, "model1": ["4", 0], "model2": ["12", 0]}},
        "14": {"class_type": "CLIPMergeSimple", "inputs": {"ratio": 0.6, "clip1": ["4", 1], "clip2": ["12", 1]}}})
    prompt["3"]["inputs"]["model"] = ["13", 0]
    prompt["6"]["inputs"]["clip"] = prompt["7"]["inputs"]["clip"] = ["14", 0]
    prompt["9"]["inputs"]["filename_prefix"] = "in_graph"
    _run(registry, prompt)
    reloaded = {k: v for k, v in prompt.items() if k not in ("12", "13", "14")}
    reloaded["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "merged.safetensors"}}
    for node in ("6", "7"):
        reloaded[node]["inputs"]["clip"] = ["4", 1]
    reloaded["3"]["inputs"]["model"] = ["4", 0]
    reloaded["9"]["inputs"]["filename_prefix"] = "reloaded"
    _run(registry, reloaded)
    assert np.array_equal(_image(home, "reloaded"), _image(home, "in_graph"))
    assert np.abs(_image(home, "reloaded") - _image(home, "unsaved")).max() > 8
