"""ComfyUI's template "basic_mask_operations_and_compositing" (PyPI comfyui-workflow-templates-json,
pinned in tests/templates_env.py), unchanged, run headless through our Runner. It uses only image
and mask nodes; the previews it writes are checked against numpy written here from the template's
widget values (1024² canvases, squares placed by MaskComposite, FeatherMask 40 on every side)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.sdnodes_env import temporary_base
from tests.templates_env import load_template, require_templates_package

NAME = "basic_mask_operations_and_compositing.json"
N = 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    require_templates_package()
    import nodes
    from graph.runner import Runner

    base = tmp_path_factory.mktemp("mask_template")
    with temporary_base(base):
        # The template's LoadImage is not wired to anything, so it never runs or validates.
        result = Runner(nodes.load_registry()).run(load_template(NAME))
    temp = base / "temp"

    def preview(node_id: str) -> np.ndarray:
        (entry,) = result.outputs[node_id]["images"]
        with Image.open(Path(temp, entry["subfolder"], entry["filename"])) as png:
            return np.asarray(png).astype(np.int16)

    return result, preview


def _png(values: np.ndarray) -> np.ndarray:
    return np.clip(values * 255.0, 0, 255).astype(np.uint8).astype(np.int16)


def _canvas_with_square(top_left: int, size: int) -> np.ndarray:
    """SolidMask 0.5 at 1024² with a SolidMask 1.0 square added at (top_left, top_left), clamped."""
    m = np.full((N, N), 0.5, np.float32)
    m[top_left:top_left + size, top_left:top_left + size] = 1.0
    return m


def _feather(m: np.ndarray, width: int) -> np.ndarray:
    ramp = np.ones(N, np.float32)
    ramp[:width] = np.arange(1, width + 1) / width
    both = ramp * ramp[::-1]
    return m * both[None, :] * both[:, None]


def test_every_node_of_the_template_ran_and_every_preview_was_written(run):
    result, _ = run
    prompt = result.prompt
    previews = [nid for nid, n in prompt.items() if n["class_type"] in ("PreviewImage", "MaskPreview")]
    assert len(previews) == 18 and all(result.outputs[nid]["images"] for nid in previews)
    # all but the unwired LoadImage (no output needs it)
    assert set(prompt) - set(result.ran) == {"374"} and prompt["374"]["class_type"] == "LoadImage"


def test_mask_composite_previews(run):
    _, preview = run
    a = _canvas_with_square(128, 512)     # node 383: the first square, with "add"
    b = _canvas_with_square(512, 512)     # node 398: the second square
    assert np.array_equal(preview("384")[..., 0], _png(a))
    assert np.array_equal(preview("399")[..., 0], _png(b))
    # each row combines b, shifted by (256, 256), into a; what falls outside a is dropped
    a_on, b_on = np.round(a).astype(bool), np.round(b).astype(bool)
    region = (slice(256, N), slice(256, N))
    for node_id, op in {"388": np.logical_and, "390": np.logical_or, "392": np.logical_xor}.items():
        expected = a.copy()
        expected[region] = op(a_on[region], b_on[:N - 256, :N - 256])
        assert np.array_equal(preview(node_id)[..., 0], _png(expected)), node_id
    multiplied = a.copy()
    multiplied[region] = a[region] * b[:N - 256, :N - 256]
    assert np.array_equal(preview("378")[..., 0], _png(multiplied))


def test_feathered_composite_preview(run):
    _, preview = run
    mask = _feather(_canvas_with_square(128, 512), 40)
    assert np.abs(preview("402")[..., 0] - _png(mask)).max() <= 1
    # red (0xFF0000) pasted onto black through the feathered mask: red = mask, green = blue = 0
    final = preview("368")
    assert np.abs(final[..., 0] - _png(mask)).max() <= 1 and not final[..., 1:].any()
