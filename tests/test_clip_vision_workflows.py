"""UI-format workflows (tests/fixtures/workflows/) run headless on tiny models: SDXL revision with
text prompts (ComfyUI's template, shrunk) and with a zeroed prompt, unCLIP image variations, and a
T2I style model. The ADM inputs the UNet receives are checked against the embeddings the CLIP
vision node produced, noised by the formula of tests/test_clip_vision_unclip.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests import vision_env
from tests.sdnodes_env import temporary_base

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"


@pytest.fixture(scope="module")
def registry():
    from nodes import load_registry

    return load_registry()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from tools.make_tiny_checkpoint import make_tiny_sd1, make_tiny_sdxl

    root = tmp_path_factory.mktemp("vision_models")
    return {
        ("checkpoints", "sd_xl_base_1.0.safetensors"): make_tiny_sdxl(root / "sdxl.safetensors", seed=0),
        ("checkpoints", "tiny-sd1.safetensors"): make_tiny_sd1(root / "sd1.safetensors", seed=0),
        ("checkpoints", "tiny-unclip.safetensors"): vision_env.unclip_checkpoint(root / "unclip.safetensors"),
        ("clip_vision", "clip_vision_g.safetensors"): vision_env.clip_vision_file(root / "g.safetensors", 64),
        ("clip_vision", "clip_vision_l.safetensors"): vision_env.clip_vision_file(root / "l.safetensors", 32, 1),
        ("style_models", "t2iadapter_style.safetensors"): vision_env.style_model_file(root / "style.safetensors"),
    }


@pytest.fixture
def home(tmp_path, files):
    with temporary_base(tmp_path):
        for (folder, name), path in files.items():
            (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
            (tmp_path / "models" / folder / name).symlink_to(path)
        for i, name in enumerate(["revision_ref_image1.png", "revision_ref_image2.png", "revision_ref.png",
                                  "unclip_ref.png", "style_ref.png"]):
            vision_env.image_file(tmp_path / "input" / name, seed=i)
        yield tmp_path


@pytest.fixture
def seen(monkeypatch):
    """Every ADM input and every CLIP_VISION_OUTPUT made."""
    from diffusion.model_patcher import ModelPatcher
    from diffusion.models.clip_vision import ClipVision

    record = {"adm": [], "vision": [], "context": []}
    encode_adm, encode_image, apply_model = ModelPatcher.encode_adm, ClipVision.encode_image, ModelPatcher.apply_model

    def spy_adm(self, cond, batch):
        y = encode_adm(self, cond, batch)
        record["adm"].append((cond.get("prompt_type"), cond, y))
        return y

    def spy_image(self, image, crop=True):
        out = encode_image(self, image, crop)
        record["vision"].append(out)
        return out

    def spy_apply(self, x, sigma, c_crossattn, *args, **kwargs):
        record["context"].append(c_crossattn)
        return apply_model(self, x, sigma, c_crossattn, *args, **kwargs)

    monkeypatch.setattr(ModelPatcher, "encode_adm", spy_adm)
    monkeypatch.setattr(ClipVision, "encode_image", spy_image)
    monkeypatch.setattr(ModelPatcher, "apply_model", spy_apply)
    return record


def _run(registry, name):
    from graph.runner import Runner

    workflow = json.loads((FIXTURES / name).read_text())
    return Runner(registry).run(workflow)  # raises RunError when a node fails


def _saved(home: Path, prefix: str) -> list:
    return sorted((home / "output").glob(f"{prefix}*.png"))


def _noised(embeds, seed, level=0):
    """ComfyUI's augmentation at `level` with the noise of seed - 10 (tests/test_clip_vision_unclip.py)."""
    from tests.test_clip_vision_unclip import _expected

    noise = torch.randn((1, embeds.shape[-1]), generator=torch.manual_seed(seed - 10))
    return _expected(embeds.reshape(1, -1), level, noise)


def test_sdxl_revision_with_text_prompts(registry, home, seen):
    _run(registry, "sdxl_revision_text_prompts.json")
    assert len(_saved(home, "ComfyUI")) == 1
    first, second = seen["vision"]
    positive = [y for side, _, y in seen["adm"] if side == "positive"][0]
    negative = [(c, y) for side, c, y in seen["adm"] if side == "negative"][0]
    # two images at strength 0.75, level 0, summed, then the merge noise (level 0) from the same generator
    gen_seed = 5 - 10
    parts = []
    for out in (first, second):
        torch.manual_seed(gen_seed)
        noise = torch.randn((1, 64))
        from tests.test_clip_vision_unclip import _expected

        parts.append(_expected(out.image_embeds, 0, noise) * 0.75)
    merged = _expected(parts[0] + parts[1], 0, torch.randn((1, 64)))
    assert torch.allclose(positive[:1, :64], merged, rtol=1e-5, atol=1e-5)
    cond, y = negative
    assert torch.allclose(y[:1, :64], cond["pooled_output"].reshape(1, -1))  # the text's pooled output


def test_sdxl_revision_with_zeroed_prompt(registry, home, seen):
    _run(registry, "sdxl_revision_zeroed_prompt.json")
    assert len(_saved(home, "revision_zeroed")) == 1
    (out,) = seen["vision"]
    positive = [y for side, _, y in seen["adm"] if side == "positive"][0]
    negative = [y for side, _, y in seen["adm"] if side == "negative"][0]
    assert torch.allclose(positive[:1, :64], _noised(out.image_embeds, 7), rtol=1e-5, atol=1e-5)
    assert float(negative[:, :64].abs().max()) == 0  # zeroed text pooled output
    assert all(float(c.abs().max()) == 0 for c in seen["context"])  # both prompts zeroed


def test_unclip_variations(registry, home, seen):
    _run(registry, "unclip_variations.json")
    assert len(_saved(home, "unclip_variations")) == 2
    (out,) = seen["vision"]
    assert out.image_embeds.shape == (1, vision_env.UNCLIP_EMBED)
    positive = [y for side, _, y in seen["adm"] if side == "positive"][0]
    negative = [y for side, _, y in seen["adm"] if side == "negative"][0]
    assert positive.shape == (2, 2 * vision_env.UNCLIP_EMBED)
    assert torch.allclose(positive[:1, :32], _noised(out.image_embeds, 3, level=round(999 * 0.1)),
                          rtol=1e-5, atol=1e-5)
    assert float(negative.abs().max()) == 0  # no image on the negative side: zeros, as ComfyUI


def test_unclip_checkpoint_is_v_prediction_sd2(files):
    from diffusion.loading.checkpoint import load_checkpoint

    loaded = load_checkpoint(files[("checkpoints", "tiny-unclip.safetensors")], output_clip_vision=True)
    assert loaded.arch == "sd2" and loaded.model.prediction == "v_prediction"
    assert loaded.clip_vision.config.layout == "open_clip"


def test_style_model(registry, home, seen):
    _run(registry, "style_model.json")
    assert len(_saved(home, "style_model")) == 1
    assert {c.shape[1] for c in seen["context"]} <= {77, 81, 77 * 81}  # 77 text + 4 style tokens (padded batch)
    assert any(c.shape[1] in (81, 77 * 81) for c in seen["context"])
