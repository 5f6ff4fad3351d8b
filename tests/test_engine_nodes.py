"""Node contract side: registry and /object_info, the declarative spec, folder_paths, built-ins."""
import json
import os

import numpy as np
import pytest

import nodes
from graph.executor import Executor
from graph.validate import validate_prompt
from nodes import folder_paths
from nodes.registry import NodeRegistry
from nodes.spec import Combo, Float, Int, Link, Out, String, node


@pytest.fixture
def base(tmp_path):
    old = folder_paths.base_path
    folder_paths.set_base_path(str(tmp_path))
    yield tmp_path
    folder_paths.set_base_path(old)


def test_spec_compiles_to_classic_interface_and_object_info():
    @node(category="test/cat", display_name="Spec Node", description="d",
          outputs=[Out("INT", "count", tooltip="n"), Out("STRING", is_list=True)],
          inputs=[Int("n", 3, min=1, max=9), Float("f", 0.5, step=0.1), String("s", "x", multiline=True),
                  Combo("c", lambda: ["p", "q"], "p"), Link("img", "IMAGE", optional=True)],
          hidden={"uid": "UNIQUE_ID"})
    class SpecNode:
        def execute(self, n, f, s, c, img=None, uid=None):
            return (n, [s] * n)

    reg = NodeRegistry()
    reg.register("SpecNode", SpecNode)
    info = reg.object_info_for("SpecNode")
    assert info == {
        "input": {"required": {"n": ["INT", {"default": 3, "min": 1, "max": 9}],
                               "f": ["FLOAT", {"default": 0.5, "step": 0.1}],
                               "s": ["STRING", {"default": "x", "multiline": True}],
                               "c": [["p", "q"], {"default": "p"}]},
                  "optional": {"img": ["IMAGE"]}, "hidden": {"uid": "UNIQUE_ID"}},
        "input_order": {"required": ["n", "f", "s", "c"], "optional": ["img"], "hidden": ["uid"]},
        "output": ["INT", "STRING"], "output_is_list": [False, True], "output_name": ["count", "STRING"],
        "name": "SpecNode", "display_name": "Spec Node", "description": "d", "python_module": "nodes",
        "category": "test/cat", "output_node": False, "output_tooltips": ["n", ""]}
    json.dumps(reg.object_info())
    # bounds from the declaration are what validation enforces
    p = {"1": {"class_type": "SpecNode", "inputs": {"n": 10, "f": 1, "s": "a", "c": "z"}}}
    SpecNode.OUTPUT_NODE = True
    r = validate_prompt(p, reg)
    assert sorted(e["type"] for e in r.node_errors["1"]["errors"]) == ["value_bigger_than_max",
                                                                      "value_not_in_list"]


@pytest.mark.parametrize("signature,problem", [
    ("def execute(self, n): pass", "declared input 'img' is not a parameter"),
    ("def execute(self, n, img): pass", "optional input 'img' needs a default value"),
    ("def execute(self, n, img=None, extra=1): pass", "parameter 'extra' is not a declared input"),
    ("def execute(self, n, /, img=None): pass", "parameter 'n' is positional-only"),
])
def test_spec_rejects_an_execute_that_does_not_match_the_inputs(signature, problem):
    namespace: dict = {}
    exec(f"class Bad:\n    {signature}\n", namespace)
    with pytest.raises(TypeError, match=rf"Bad\.execute: {problem}"):
        node(inputs=[Int("n", 1), Link("img", "IMAGE", optional=True)], outputs=[Out("INT")])(namespace["Bad"])


def test_spec_accepts_kwargs_defaults_on_required_inputs_and_static_methods():
    decorate = node(inputs=[Int("n", 1), Link("img", "IMAGE", optional=True)], outputs=[Out("INT")],
                    hidden={"uid": "UNIQUE_ID"})

    @decorate
    class TakesKwargs:
        def execute(self, n=1, **rest):
            return (n,)

    @decorate
    class Static:
        @staticmethod
        def execute(n, img=None, uid=None):
            return (n,)

    assert TakesKwargs.FUNCTION == Static.FUNCTION == "execute"


def test_load_registry_tolerates_a_broken_module(caplog):
    reg = nodes.load_registry(nodes.BUILTIN_MODULES + ["nodes.does_not_exist"])
    assert "EmptyImage" in reg and "PrimitiveInt" in reg
    assert "nodes.does_not_exist" in caplog.text
    assert reg.object_info_for("LoadImage")["input_order"] == {"required": ["image"]}
    assert reg.object_info_for("SaveImage")["output_node"] is True
    assert reg.object_info_for("Nope") is None


def test_registry_rejects_incomplete_class_and_keeps_core_names():
    reg = NodeRegistry()
    with pytest.raises(TypeError, match="lacks FUNCTION"):
        reg.register("Bad", type("Bad", (), {"INPUT_TYPES": classmethod(lambda c: {}),
                                             "RETURN_TYPES": ()}))
    core = nodes.load_registry()
    original = core.get_class("EmptyImage")
    added = core.register_mappings({"EmptyImage": object, "New": original}, override=False)
    assert added == ["New"] and core.get_class("EmptyImage") is original


def test_folder_paths(base):
    ckpt = base / "models" / "checkpoints"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "a.safetensors").write_bytes(b"x")
    (ckpt / "sub" / "b.ckpt").write_bytes(b"x")
    (ckpt / "notes.txt").write_text("x")
    assert folder_paths.get_filename_list("checkpoints") == ["a.safetensors", os.path.join("sub", "b.ckpt")]
    (ckpt / "c.pt").write_bytes(b"x")  # directory mtime changes: the cache refreshes
    assert "c.pt" in folder_paths.get_filename_list("checkpoints")
    assert folder_paths.get_full_path("checkpoints", "a.safetensors") == str(ckpt / "a.safetensors")
    assert folder_paths.get_full_path("checkpoints", "../../etc/passwd") is None
    assert folder_paths.get_full_path("checkpoints", "/etc/passwd") is None
    with pytest.raises(FileNotFoundError):
        folder_paths.get_full_path_or_raise("checkpoints", "zz.safetensors")
    assert folder_paths.get_folder_paths("clip") == folder_paths.get_folder_paths("text_encoders")
    with pytest.raises(KeyError):
        folder_paths.get_folder_paths("nope")
    extra = base / "extra"
    extra.mkdir()
    folder_paths.add_model_folder_path("checkpoints", str(extra), is_default=True)
    assert folder_paths.get_folder_paths("checkpoints")[0] == str(extra)
    assert folder_paths.annotated_filepath("x.png [output]") == ("x.png", folder_paths.get_output_directory())
    assert folder_paths.get_annotated_filepath("y.png") == os.path.join(folder_paths.get_input_directory(), "y.png")


def test_save_image_path_counter_and_escape(base):
    out = folder_paths.get_output_directory()
    os.makedirs(os.path.join(out, "sub"))
    for name in ("img_00003_.png", "img_00010_.png", "other_00099_.png"):
        open(os.path.join(out, "sub", name), "w").close()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path("sub/img", out, 64, 32)
    assert (folder, filename, counter, subfolder) == (os.path.join(out, "sub"), "img", 11, "sub")
    assert folder_paths.get_save_image_path("x_%width%x%height%", out, 64, 32)[1] == "x_64x32"
    with pytest.raises(ValueError, match="outside the output folder"):
        folder_paths.get_save_image_path("../escape", out)


# -- image nodes (torch) ---------------------------------------------------------------------
torch = pytest.importorskip("torch")


def run_prompt(prompt, extra=None):
    reg = nodes.load_registry()
    checked = validate_prompt(prompt, reg)
    assert checked.ok, checked.node_errors
    result = Executor(reg).execute(prompt, "p", extra or {}, checked.outputs)
    assert result.status_str == "success", result.error
    return result


def test_empty_image_color_and_invert_does_not_mutate():
    from nodes.image_nodes import EmptyImage, ImageInvert
    (img,) = EmptyImage().execute(4, 3, 2, 0xFF8000)
    assert img.shape == (2, 3, 4, 3) and img.dtype == torch.float32
    assert torch.allclose(img[0, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]))
    before = img.clone()
    (inv,) = ImageInvert().execute(img)
    assert torch.equal(img, before)  # the input (maybe a cached output) is untouched
    assert torch.allclose(inv, 1.0 - before)


def test_save_image_png_chunks_naming_and_no_mutation(base):
    from PIL import Image
    from nodes.image_nodes import SaveImage
    img = torch.rand(2, 5, 7, 3)
    img[0, 0, 0] = torch.tensor([0.999, 1.5, -0.2])
    before = img.clone()
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    ui = SaveImage().execute(img, "run/pic", prompt=prompt, extra_pnginfo={"workflow": {"nodes": []}})
    assert torch.equal(img, before)
    assert ui == {"ui": {"images": [{"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
                                    {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"}]}}
    path = os.path.join(folder_paths.get_output_directory(), "run", "pic_00001_.png")
    with Image.open(path) as png:
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == {"nodes": []}
        px = png.getpixel((0, 0))
    assert px == (254, 255, 0)  # 0.999*255 = 254.7 truncated; clipped to 0..255
    assert SaveImage().execute(img[:1], "run/pic")["ui"]["images"][0]["filename"] == "pic_00003_.png"
    with pytest.raises(ValueError):
        SaveImage().execute(img, "../../evil")


def test_preview_image_goes_to_temp(base):
    from nodes.image_nodes import PreviewImage
    (entry,) = PreviewImage().execute(torch.zeros(1, 2, 2, 3))["ui"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    assert os.path.isfile(os.path.join(folder_paths.get_temp_directory(), entry["filename"]))


def test_load_image_mask_hash_and_annotations(base):
    from PIL import Image
    from nodes.image_nodes import LoadImage
    inp = folder_paths.get_input_directory()
    os.makedirs(inp)
    rgba = Image.new("RGBA", (6, 4), (255, 0, 0, 64))
    rgba.save(os.path.join(inp, "a.png"))
    Image.new("RGB", (6, 4), (0, 0, 255)).save(os.path.join(inp, "b.png"))
    assert LoadImage.INPUT_TYPES()["required"]["image"][0] == ["a.png", "b.png"]
    image, mask = LoadImage().execute("a.png")
    assert image.shape == (1, 4, 6, 3) and torch.allclose(image[0, 0, 0], torch.tensor([1.0, 0, 0]))
    assert mask.shape == (1, 4, 6) and torch.allclose(mask, torch.full_like(mask, 1 - 64 / 255))
    _, mask_b = LoadImage().execute("b.png")
    assert mask_b.shape == (1, 64, 64) and not mask_b.any()
    h1 = LoadImage.IS_CHANGED("a.png")
    Image.new("RGBA", (6, 4), (0, 255, 0, 64)).save(os.path.join(inp, "a.png"))
    assert LoadImage.IS_CHANGED("a.png") != h1
    out = folder_paths.get_output_directory()
    os.makedirs(out)
    Image.new("RGB", (3, 3)).save(os.path.join(out, "o.png"))
    assert LoadImage.VALIDATE_INPUTS("o.png [output]") is True
    assert "Invalid image file" in LoadImage.VALIDATE_INPUTS("missing.png")
    assert "escapes" in LoadImage.VALIDATE_INPUTS("../../x.png")
    # through validation: VALIDATE_INPUTS owns `image`, so a name outside the combo list is fine
    p = {"1": {"class_type": "LoadImage", "inputs": {"image": "o.png [output]"}},
         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    assert run_prompt(p).outputs["2"]["images"][0]["type"] == "temp"


def test_example_workflow_runs(base):
    with open(os.path.join(os.path.dirname(__file__), "..", "workflows", "example_images.json")) as f:
        prompt = json.load(f)
    result = run_prompt(prompt, {"extra_pnginfo": {"workflow": {"k": 1}}})
    (entry,) = result.outputs["3"]["images"]
    from PIL import Image
    with Image.open(os.path.join(folder_paths.get_output_directory(), entry["subfolder"], entry["filename"])) as png:
        assert png.size == (64, 48)
        # COMPAT §1.6: float32 pixel * 255, truncated (not rounded): green 1-128/255 gives 126
        green = np.float32(1.0) - np.float32(128) / np.float32(255)
        assert png.getpixel((0, 0)) == (0, int(green * np.float32(255.0)), 255)
        assert json.loads(png.text["prompt"])["3"]["class_type"] == "SaveImage"
