"""The CLIP vision tower against transformers' CLIPVisionModelWithProjection with the same random
weights, in both file layouts; the preprocessing against a Pillow reference; full-size key tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.loading.files import CheckpointError
from diffusion.loading.vision import clip_vision_from_state_dict
from diffusion.loading.vision_config import ClipVisionConfig
from diffusion.models.clip_vision import CLIP_MEAN, CLIP_STD, ClipVisionModel, clip_preprocess
from tests.clip_vision_reference import FULL, TINY, hf_file, hf_vision, open_clip_file

REL = 1e-4


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_embeddings_equal_transformers(layout, activation):
    ref = hf_vision(TINY, activation)
    sd = hf_file(ref) if layout == "hf" else open_clip_file(ref)
    vision = clip_vision_from_state_dict(sd, dtype=torch.float32, activation=activation, device="cpu")
    assert vision.config.layout == layout and vision.image_size == 56 and vision.config.mlp_width == 160
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = ref(pixel_values=pixels, output_hidden_states=True)
        last, penultimate, embeds = vision.model(pixels)
    assert _rel(embeds, want.image_embeds) <= REL
    assert _rel(last, want.last_hidden_state) <= REL
    assert _rel(penultimate, want.hidden_states[-2]) <= REL


def test_state_dict_speaks_the_file_layout():
    ref = hf_vision(TINY)
    sd = open_clip_file(ref, prefix="")
    vision = clip_vision_from_state_dict(sd, dtype=torch.float32, device="cpu")
    saved = vision.get_sd()
    assert set(saved) == set(sd)
    for k, v in sd.items():
        assert torch.equal(saved[k], v), k


def test_encode_image_output_object_and_storage_dtype():
    ref = hf_vision(TINY)
    vision = clip_vision_from_state_dict(hf_file(ref), device="cpu")  # default: fp16 layers
    layer = vision.model.vision_model.encoder.layers[0].mlp.fc1.weight
    assert layer.dtype == torch.float16
    assert vision.model.visual_projection.weight.dtype == torch.float32
    assert vision.model.vision_model.embeddings.class_embedding.dtype == torch.float32
    image = torch.rand(1, 40, 70, 3)
    out = vision.encode_image(image, crop=True)
    assert out.image_embeds.shape == (1, 48) and out["last_hidden_state"].shape == (1, 17, 64)
    assert out.penultimate_hidden_states.shape == (1, 17, 64) and "image_embeds" in out
    out["extra"] = 1
    assert out.extra == 1


def _pil_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's antialiased bicubic (mode "F", channel by channel): [H, W, C] -> [h, w, C]."""
    chans = [np.asarray(Image.fromarray(image[..., c].numpy(), mode="F").resize((size[1], size[0]), Image.BICUBIC))
             for c in range(image.shape[-1])]
    return torch.from_numpy(np.stack(chans, axis=-1))


def _reference_preprocess(image: torch.Tensor, size: int, crop: bool) -> torch.Tensor:
    h, w = image.shape[1:3]
    if crop:
        s = size / min(h, w)
        target = (int(s * h + 0.5), int(s * w + 0.5))
    else:
        target = (size, size)
    x = _pil_resize(image[0, ..., :3], target)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    x = x[top:top + size, left:left + size]
    x = np.floor(np.clip(x.numpy() * 255.0, 0, 255) + 0.5) / 255.0
    x = (x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return torch.from_numpy(x).permute(2, 0, 1).float()[None]


@pytest.mark.parametrize("shape,crop", [((90, 60), True), ((30, 50), True), ((90, 60), False), ((28, 28), True)])
def test_preprocess_matches_pillow_reference(shape, crop):
    torch.manual_seed(1)
    image = torch.rand(1, *shape, 4)  # an alpha channel is dropped
    got = clip_preprocess(image, 28, crop=crop)
    want = _reference_preprocess(image, 28, crop)
    assert got.shape == want.shape == (1, 3, 28, 28)
    # Both round to 8 bits; a value within float error of a half step may round apart (one step).
    step = 1 / 255 / min(CLIP_STD)
    diff = (got - want).abs()
    assert float(diff.max()) <= step + 1e-5
    assert float((diff > 1e-4).float().mean()) < 0.02


def test_preprocess_rejects_grey_images():
    with pytest.raises(ValueError, match="RGB IMAGE"):
        clip_preprocess(torch.rand(1, 8, 8, 1), 28)


@pytest.mark.parametrize("name", ["L", "H", "G"])
@pytest.mark.parametrize("layout", ["hf", "open_clip"])
def test_full_size_key_tables(name, layout):
    """Released towers' key tables (from transformers' model on the meta device, and its open_clip
    renaming) fit our network with no missing or unexpected key and equal shapes."""
    ref = hf_vision(FULL[name], FULL[name]["hidden_act"], meta=True)
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    if layout == "open_clip":
        sd = open_clip_file(ref, prefix="")
    table = {k: tuple(v.shape) for k, v in sd.items()}
    config = ClipVisionConfig.from_state_dict(table_as_tensors(table))
    assert (config.width, config.layers, config.mlp_width, config.projection_dim, config.image_size) == (
        FULL[name]["hidden_size"], FULL[name]["num_hidden_layers"], FULL[name]["intermediate_size"],
        FULL[name]["projection_dim"], 224)
    assert config.activation == FULL[name]["hidden_act"]
    with torch.device("meta"):
        ours = ClipVisionModel(config)
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got == table


def table_as_tensors(table: dict) -> dict:
    return {k: torch.empty(s, device="meta") for k, s in table.items()}


def test_not_a_vision_tower():
    with pytest.raises(CheckpointError, match="no CLIP vision tower"):
        clip_vision_from_state_dict({"foo.weight": torch.zeros(2)})
