"""LoadImageOutput: LoadImage's loading rules applied to the output folder, and nothing outside it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from graph.runner import Runner, RunError
from tests.sdnodes_env import temporary_base


@pytest.fixture
def home(tmp_path):
    with temporary_base(tmp_path):
        yield tmp_path


@pytest.fixture(scope="module")
def registry():
    return nodes.load_registry()


def _rgba(path, seed=0, size=(5, 4)):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").save(path)
    return pixels


def _load(registry, image):
    cls = registry.get_class("LoadImageOutput")
    return cls().execute(image=image)


def test_loads_plain_annotated_and_subfolder_names(home, registry):
    pixels = _rgba(home / "output" / "render.png")
    sub = _rgba(home / "output" / "runs" / "b.png", seed=1)
    for name, px in (("render.png", pixels), ("render.png [output]", pixels), ("runs/b.png", sub),
                     ("runs/b.png [output]", sub)):
        image, mask = _load(registry, name)
        # independent of our loader: RGB / 255 and mask = 1 - alpha / 255
        assert image.shape == (1, px.shape[0], px.shape[1], 3)
        assert torch.equal(image[0], torch.from_numpy(px[..., :3].astype(np.float32) / 255.0))
        assert torch.equal(mask[0], 1.0 - torch.from_numpy(px[..., 3].astype(np.float32) / 255.0))


def test_same_as_load_image_of_the_same_file(home, registry):
    _rgba(home / "output" / "render.png", seed=3)
    (home / "input" / "render.png").write_bytes((home / "output" / "render.png").read_bytes())
    ours = _load(registry, "render.png")
    cls = registry.get_class("LoadImage")
    theirs = cls().execute(image="render.png")
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_names_outside_the_output_folder_are_refused(home, registry):
    _rgba(home / "input" / "secret.png")
    cls = registry.get_class("LoadImageOutput")
    for bad in ("../input/secret.png", "../input/secret.png [output]", str(home / "input" / "secret.png"),
                "secret.png [input]", "x.png [temp]", "", None):
        with pytest.raises(ValueError, match="LoadImageOutput: input 'image'"):
            cls().execute(image=bad)
        assert cls.VALIDATE_INPUTS(image=bad) is not True
    assert "not in the output folder" in cls.VALIDATE_INPUTS(image="missing.png")


def test_is_changed_follows_the_file(home, registry):
    cls = registry.get_class("LoadImageOutput")
    _rgba(home / "output" / "render.png", seed=0)
    first = cls.IS_CHANGED(image="render.png")
    assert cls.IS_CHANGED(image="render.png [output]") == first
    _rgba(home / "output" / "render.png", seed=1)
    assert cls.IS_CHANGED(image="render.png") != first


def test_runs_in_a_workflow_without_an_options_list(home, registry):
    """Its COMBO has no options in /object_info; validation checks the file instead."""
    _rgba(home / "output" / "render.png")
    prompt = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "render.png"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    result = Runner(registry).run(prompt)
    assert result.outputs["2"]["images"][0]["type"] == "temp"
    prompt["1"]["inputs"]["image"] = "nothing.png"
    with pytest.raises(RunError, match="Invalid image file: nothing.png"):
        Runner(registry).run(prompt)


def test_object_info(registry):
    info = registry.object_info_for("LoadImageOutput")
    assert info["input"] == {"required": {"image": ["COMBO", {
        "image_upload": True, "image_folder": "output",
        "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"}}]}}
    assert info["input_order"] == {"required": ["image"]}
    assert (info["output"], info["output_name"]) == (["IMAGE", "MASK"], ["IMAGE", "MASK"])
    assert info["category"] == "image" and info["python_module"] == "nodes"
    assert info["display_name"] == "Load Image (from Outputs)"
    assert info["experimental"] is True and "deprecated" not in info


def test_ui_workflow_converts(registry):
    """A UI-format node stores the name, then the upload button's value (and a refresh one in newer
    frontends); only the name is an input."""
    from graph.workflow_formats import ui_to_api

    for values in (["render.png [output]", "image", ""], ["render.png [output]"]):
        ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"]], "nodes": [
            {"id": 1, "type": "LoadImageOutput", "inputs": [], "mode": 0, "widgets_values": values,
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}, {"name": "MASK", "type": "MASK", "links": []}]},
            {"id": 2, "type": "PreviewImage", "inputs": [{"name": "images", "type": "IMAGE", "link": 1}],
             "outputs": [], "widgets_values": [], "mode": 0}]}
        api = ui_to_api(ui, registry.object_info_for)
        assert api["1"]["inputs"] == {"image": "render.png [output]"}
