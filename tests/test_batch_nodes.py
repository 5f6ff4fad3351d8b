"""RebatchLatents / RebatchImages: ComfyUI's nodes_rebatch semantics, checked by hand on small batches
(each item is a constant tensor holding its own number, so every regrouping is visible)."""
from __future__ import annotations

import pytest
import torch

import nodes
from graph.runner import Runner


@pytest.fixture(scope="module")
def registry():
    reg = nodes.load_registry()
    reg.register("TestRecordCalls", RecordCalls)
    return reg


class RecordCalls:
    """Test-only output node: remembers the value of every call (one call per list item upstream)."""

    seen: list = []
    CATEGORY = "_for_testing"
    RETURN_TYPES = ()
    FUNCTION = "record"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*",)}}

    def record(self, value):
        RecordCalls.seen.append(value)
        return {}


def _items(first: int, n: int, h: int = 2, w: int = 2) -> torch.Tensor:
    """n latent items [n,4,h,w]; item k is filled with first + k."""
    return torch.arange(first, first + n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 4, h, w).clone()


def _ids(samples: torch.Tensor) -> list[int]:
    return [int(v) for v in samples[:, 0, 0, 0]]


def _rebatch_latents(registry, latents, size):
    cls = registry.get_class("RebatchLatents")
    (out,) = cls().execute(latents=latents, batch_size=[size])
    return out


def test_latents_runs_batches_indices_and_masks(registry):
    mask_b = torch.full((1, 16, 16), 0.25)  # one mask for B's two items
    a = {"samples": _items(0, 3)}
    b = {"samples": _items(10, 2), "noise_mask": mask_b}
    c = {"samples": _items(20, 1, 3, 3), "batch_index": [7]}  # another size: a new run
    d = {"samples": _items(30, 2, 3, 3)}
    out = _rebatch_latents(registry, [a, b, c, d], 2)

    assert [_ids(o["samples"]) for o in out] == [[0, 1], [2, 10], [11], [20, 30], [31]]
    # positions counted over everything before (c's own batch_index is kept)
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [7, 6], [7]]
    assert "noise_mask" not in out[0] and "noise_mask" not in out[3] and "noise_mask" not in out[4]
    # a's items get ones, b's the mask (cycled over its items), all at 8x the latent size
    assert out[1]["noise_mask"].shape == (2, 1, 16, 16)
    assert torch.equal(out[1]["noise_mask"][0], torch.ones(1, 16, 16))
    assert torch.equal(out[1]["noise_mask"][1], mask_b)
    assert torch.equal(out[2]["noise_mask"], mask_b.reshape(1, 1, 16, 16))
    # inputs untouched
    assert set(a) == {"samples"} and b["noise_mask"] is mask_b


def test_latents_batch_size_larger_than_everything(registry):
    out = _rebatch_latents(registry, [{"samples": _items(0, 2)}, {"samples": _items(5, 3)}], 64)
    assert len(out) == 1 and _ids(out[0]["samples"]) == [0, 1, 5, 6, 7]
    assert out[0]["batch_index"] == [0, 1, 2, 3, 4]


def test_latent_masks_of_other_resolutions_are_resized(registry):
    """ComfyUI fails to join masks of different sizes; we bring them to the latent's pixel size first."""
    small = torch.zeros(1, 1, 4, 4)
    small[..., :2, :] = 1.0
    out = _rebatch_latents(registry, [{"samples": _items(0, 1)}, {"samples": _items(1, 1), "noise_mask": small}], 2)
    mask = out[0]["noise_mask"]
    assert mask.shape == (2, 1, 16, 16)
    expected = torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear")
    assert torch.equal(mask[0], torch.ones(1, 16, 16)) and torch.equal(mask[1:], expected)


def test_images_flattened_and_cut(registry):
    imgs = [torch.arange(0, 3.0).reshape(3, 1, 1, 1).expand(3, 4, 5, 3).clone(),
            torch.arange(3, 5.0).reshape(2, 1, 1, 1).expand(2, 4, 5, 3).clone()]
    cls = registry.get_class("RebatchImages")
    (out,) = cls().execute(images=imgs, batch_size=[2])
    assert [[int(v) for v in o[:, 0, 0, 0]] for o in out] == [[0, 1], [2, 3], [4]]
    (out,) = cls().execute(images=imgs, batch_size=[1])
    assert [o.shape[0] for o in out] == [1] * 5


def test_images_of_different_sizes_in_one_batch_are_an_error(registry):
    cls = registry.get_class("RebatchImages")
    imgs = [torch.zeros(1, 4, 4, 3), torch.zeros(1, 8, 8, 3)]
    with pytest.raises(ValueError, match=r"RebatchImages: input 'images': images 0..1 .*differ in size"):
        cls().execute(images=imgs, batch_size=[2])
    (out,) = cls().execute(images=imgs, batch_size=[1])  # apart, they are fine
    assert [o.shape for o in out] == [(1, 4, 4, 3), (1, 8, 8, 3)]


def test_bad_batch_size_names_node_and_input(registry):
    with pytest.raises(ValueError, match="RebatchLatents: input 'batch_size'"):
        _rebatch_latents(registry, [{"samples": _items(0, 1)}], 0)


def test_object_info(registry):
    for name, category, kind, inp in (("RebatchLatents", "latent/batch", "LATENT", "latents"),
                                      ("RebatchImages", "image/batch", "IMAGE", "images")):
        info = registry.object_info_for(name)
        assert info["input"] == {"required": {inp: [kind], "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}}
        assert info["input_order"] == {"required": [inp, "batch_size"]}
        assert (info["output"], info["output_is_list"], info["output_name"]) == ([kind], [True], [kind])
        assert info["category"] == category
        assert info["python_module"] == "comfy_extras.nodes_rebatch"
        assert registry.get_class(name).INPUT_IS_LIST is True


def test_graph_runs_downstream_once_per_batch(registry):
    """OUTPUT_IS_LIST: the node after the rebatch runs once per batch; INPUT_IS_LIST: a second rebatch
    receives all of them in one call and joins them back."""
    RecordCalls.seen = []
    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 5}},
        "2": {"class_type": "RebatchLatents", "inputs": {"latents": ["1", 0], "batch_size": 2}},
        "3": {"class_type": "TestRecordCalls", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "RebatchLatents", "inputs": {"latents": ["2", 0], "batch_size": 8}},
        "5": {"class_type": "TestRecordCalls", "inputs": {"value": ["4", 0]}},
    }
    Runner(registry).run(prompt)
    assert sorted(v["samples"].shape[0] for v in RecordCalls.seen) == [1, 2, 2, 5]
    joined = next(v for v in RecordCalls.seen if v["samples"].shape[0] == 5)
    assert joined["batch_index"] == [0, 1, 2, 3, 4]
