"""Batch nodes: LatentFromBatch, RepeatLatentBatch, LatentBatch, LatentBatchSeedBehavior.

The bookkeeping is checked directly, and end to end through KSampler on the tiny SD1 checkpoint:
an item taken out of a batch (with its noise mask) samples to exactly what it was inside the batch,
because batch_index gives it the same noise (COMPAT §10).
"""
from __future__ import annotations

import pytest
import torch

from nodes import latent_nodes as ln
from tests.sdnodes_env import SD1_NAME, CaptureLatent, registry, sd_home, tiny_checkpoint_files  # noqa: F401


def _items(n, size=4):
    return torch.arange(float(n)).reshape(n, 1, 1, 1).expand(n, 4, size, size).clone()


def test_from_batch_slices_clamps_and_sets_batch_index():
    latent = {"samples": _items(5)}
    (out,) = ln.LatentFromBatch().execute(latent, 1, 3)
    assert out["samples"][:, 0, 0, 0].tolist() == [1, 2, 3] and out["batch_index"] == [1, 2, 3]
    (out,) = ln.LatentFromBatch().execute(latent, 9, 4)  # past the end: the last item
    assert out["samples"][:, 0, 0, 0].tolist() == [4] and out["batch_index"] == [4]
    (again,) = ln.LatentFromBatch().execute({"samples": _items(3), "batch_index": [7, 8, 9]}, 1, 5)
    assert again["batch_index"] == [8, 9]
    assert "batch_index" not in latent


def test_from_batch_masks_follow_their_items():
    masks = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    (out,) = ln.LatentFromBatch().execute({"samples": _items(4), "noise_mask": masks}, 2, 2)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [0, 1]  # the 2-mask batch cycles over 4 items
    one = torch.ones(1, 1, 8, 8)
    (out,) = ln.LatentFromBatch().execute({"samples": _items(4), "noise_mask": one}, 3, 1)
    assert torch.equal(out["noise_mask"], one) and out["noise_mask"] is not one


def test_repeat_extends_batch_index_and_masks():
    (out,) = ln.RepeatLatentBatch().execute({"samples": _items(2)}, 3)
    assert out["samples"][:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1] and "batch_index" not in out
    (out,) = ln.RepeatLatentBatch().execute({"samples": _items(2), "batch_index": [4, 6]}, 3)
    assert out["batch_index"] == [4, 6, 7, 9, 10, 12]  # offset = 6 - 4 + 1
    masks = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)
    (out,) = ln.RepeatLatentBatch().execute({"samples": _items(3), "noise_mask": masks}, 2)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [0, 1, 0, 0, 1, 0]  # paired per item, then repeated


def test_latent_batch_joins_resizes_and_keeps_noise_positions():
    a = {"samples": _items(2, 4)}
    b = {"samples": _items(1, 2) + 10, "batch_index": [5]}
    (out,) = ln.LatentBatch().execute(a, b)
    assert out["samples"].shape == (3, 4, 4, 4)
    assert out["samples"][:, 0, 0, 0].tolist() == [0, 1, 10]  # b resized (constant stays constant)
    assert out["batch_index"] == [0, 1, 5]
    assert "noise_mask" not in out


def test_latent_batch_gives_each_item_its_own_mask():
    mask = torch.zeros(1, 32, 32)
    mask[:, :, 16:] = 1
    a = {"samples": _items(1, 4), "noise_mask": mask.reshape(1, 1, 32, 32)}
    (out,) = ln.LatentBatch().execute(a, {"samples": _items(2, 4)})
    m = out["noise_mask"]
    assert m.shape == (3, 1, 4, 4)
    assert m[0, 0, 0].tolist() == [0, 0, 1, 1] and torch.all(m[1:] == 1)  # b had none: all of it denoised


def test_seed_behavior():
    (fixed,) = ln.LatentBatchSeedBehavior().execute({"samples": _items(3), "batch_index": [4, 5, 6]}, "fixed")
    assert fixed["batch_index"] == [4, 4, 4]
    (fixed,) = ln.LatentBatchSeedBehavior().execute({"samples": _items(2)}, "fixed")
    assert fixed["batch_index"] == [0, 0]
    (rand,) = ln.LatentBatchSeedBehavior().execute({"samples": _items(2), "batch_index": [1, 2]}, "random")
    assert "batch_index" not in rand


# -- through the sampler --------------------------------------------------------------------------------

def _graph(latent_nodes: dict, latent_src: str, seed=4, steps=3) -> dict:
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": SD1_NAME}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 3}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a house", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": [latent_src, 0],
            "denoise": 1.0}},
        "cap": {"class_type": "SDNodesCaptureLatent", "inputs": {"samples": ["3", 0], "label": "out"}},
    }
    prompt.update(latent_nodes)
    return prompt


def _sample(registry, latent_nodes, latent_src):  # noqa: F811
    from graph.runner import Runner

    Runner(registry).run(_graph(latent_nodes, latent_src))
    return CaptureLatent.seen["out"]


def test_item_from_batch_samples_as_inside_the_batch(registry, sd_home):  # noqa: F811
    whole = _sample(registry, {}, "5")["samples"]
    one = _sample(registry, {"10": {"class_type": "LatentFromBatch",
                                    "inputs": {"samples": ["5", 0], "batch_index": 2, "length": 1}}}, "10")
    assert one["batch_index"] == [2]
    torch.testing.assert_close(one["samples"], whole[2:3], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(whole[0], whole[2], atol=1e-2)  # items do get different noise


def test_fixed_seed_behavior_gives_every_item_the_same_noise(registry, sd_home):  # noqa: F811
    fixed = _sample(registry, {"10": {"class_type": "LatentBatchSeedBehavior",
                                      "inputs": {"samples": ["5", 0], "seed_behavior": "fixed"}}}, "10")["samples"]
    torch.testing.assert_close(fixed[1], fixed[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fixed[2], fixed[0], atol=1e-4, rtol=1e-4)


def test_masked_batch_item_keeps_its_mask_and_noise(registry, sd_home):  # noqa: F811
    # per-item masks: item k keeps the top k*2 latent rows; LatentFromBatch must carry item 2's mask
    masks = torch.ones(3, 64, 64)
    for k in range(3):
        masks[k, :16 * k] = 0
    class MaskSource:
        CATEGORY, RETURN_TYPES, FUNCTION = "_for_testing", ("MASK",), "make"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def make(self):
            return (masks,)

    registry.register("LatentTestMasks", MaskSource)
    base = {"11": {"class_type": "LatentTestMasks", "inputs": {}},
            "12": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["5", 0], "mask": ["11", 0]}}}
    whole = _sample(registry, base, "12")["samples"]
    picked = _sample(registry, {**base, "10": {"class_type": "LatentFromBatch",
                                               "inputs": {"samples": ["12", 0], "batch_index": 2, "length": 1}}},
                     "10")
    assert picked["noise_mask"].shape == (1, 1, 64, 64)
    torch.testing.assert_close(picked["samples"], whole[2:3], atol=1e-4, rtol=1e-4)
    # the kept rows stay as they were (the last Euler step's x - (x/σ)·σ leaves float round-off)
    assert picked["samples"][0, :, :4].abs().max() < 1e-6
    assert picked["samples"][0, :, 4:].abs().max() > 1e-2
