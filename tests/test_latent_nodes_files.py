"""SaveLatent / LoadLatent: the .latent safetensors format, file naming, metadata, legacy scaling."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffusion.loading.files import CheckpointError
from nodes import image_nodes
from nodes import latent_nodes as ln
from tests.sdnodes_env import temporary_base


@pytest.fixture
def home(tmp_path):
    with temporary_base(tmp_path):
        yield tmp_path


def _save(samples, prefix="latents/ComfyUI", prompt=None, extra=None):
    return ln.SaveLatent().execute({"samples": samples}, prefix, prompt=prompt, extra_pnginfo=extra)


def test_save_then_load_is_bit_exact(home):
    samples = torch.randn(2, 4, 5, 7)
    ui = _save(samples)["ui"]["latents"]
    assert ui == [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}]
    path = home / "output" / "latents" / "ComfyUI_00001_.latent"
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert f.get_tensor("latent_format_version_0").numel() == 0
    (home / "input" / "a.latent").write_bytes(path.read_bytes())
    (loaded,) = ln.LoadLatent().execute("a.latent")
    assert loaded["samples"].dtype == torch.float32 and torch.equal(loaded["samples"], samples)
    # straight from the output folder with the annotation, as the editor offers it
    (again,) = ln.LoadLatent().execute("latents/ComfyUI_00001_.latent [output]")
    assert torch.equal(again["samples"], samples)


def test_counter_and_metadata(home):
    prompt = {"1": {"class_type": "SaveLatent", "inputs": {}}}
    _save(torch.zeros(1, 4, 2, 2), "run", prompt, {"workflow": {"nodes": []}})
    second = _save(torch.zeros(1, 4, 2, 2), "run")["ui"]["latents"][0]
    assert second["filename"] == "run_00002_.latent" and second["subfolder"] == ""
    with safe_open(str(home / "output" / "run_00001_.latent"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == {"nodes": []}
    with safe_open(str(home / "output" / "run_00002_.latent"), "pt") as f:
        assert f.metadata() == {"prompt": ""}


def test_disable_metadata_writes_none(home, monkeypatch):
    monkeypatch.setattr(image_nodes, "DISABLE_METADATA", True)
    _save(torch.zeros(1, 4, 2, 2), "quiet", {"1": {}}, {"workflow": {}})
    with safe_open(str(home / "output" / "quiet_00001_.latent"), "pt") as f:
        assert not f.metadata()


def test_files_without_the_version_marker_hold_scaled_latents(home):
    scaled = torch.randn(1, 4, 3, 3)
    save_file({"latent_tensor": scaled}, str(home / "input" / "old.latent"))
    (loaded,) = ln.LoadLatent().execute("old.latent")
    torch.testing.assert_close(loaded["samples"], scaled / 0.18215, rtol=1e-6, atol=0)
    save_file({"latent_tensor": scaled.half(), "latent_format_version_0": torch.tensor([])},
              str(home / "input" / "half.latent"))
    (half,) = ln.LoadLatent().execute("half.latent")
    assert half["samples"].dtype == torch.float32 and torch.equal(half["samples"], scaled.half().float())


def test_listing_validation_and_bad_files(home):
    (home / "input" / "b.latent").write_bytes(b"")
    (home / "input" / "a.latent").write_bytes(b"")
    (home / "input" / "image.png").write_bytes(b"")
    (home / "input" / "sub").mkdir()
    (home / "input" / "sub" / "c.latent").write_bytes(b"")
    assert ln.LoadLatent.INPUT_TYPES()["required"]["latent"][0] == ["a.latent", "b.latent"]
    assert ln.LoadLatent.VALIDATE_INPUTS("a.latent") is True
    assert ln.LoadLatent.VALIDATE_INPUTS("gone.latent") == "Invalid latent file: gone.latent"
    assert ln.LoadLatent.VALIDATE_INPUTS("../../etc/passwd") == "Invalid latent file: ../../etc/passwd"
    with pytest.raises(ValueError, match="escapes its folder"):
        ln.LoadLatent().execute("../../etc/passwd")
    with pytest.raises(CheckpointError, match="a.latent"):
        ln.LoadLatent().execute("a.latent")
    save_file({"weights": torch.zeros(2)}, str(home / "input" / "model.latent"))
    with pytest.raises(CheckpointError, match="not a latent file.*'latent_tensor'"):
        ln.LoadLatent().execute("model.latent")


def test_is_changed_follows_the_file_content(home):
    save_file({"latent_tensor": torch.zeros(1, 4, 2, 2)}, str(home / "input" / "x.latent"))
    first = ln.LoadLatent.IS_CHANGED("x.latent")
    assert ln.LoadLatent.IS_CHANGED("x.latent") == first
    save_file({"latent_tensor": torch.ones(1, 4, 2, 2)}, str(home / "input" / "x.latent"))
    assert ln.LoadLatent.IS_CHANGED("x.latent") != first


def test_headless_run_lists_the_saved_latent(home):
    from graph.runner import Runner
    from nodes import folder_paths, load_registry

    prompt = {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["1", 0], "upscale_method": "bislerp",
                                                          "scale_by": 2.0}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "latents/hires"}},
    }
    result = Runner(load_registry()).run(prompt)
    files = result.files(folder_paths)
    assert files == [str(home / "output" / "latents" / "hires_00001_.latent")]
    with safe_open(files[0], "pt") as f:
        assert f.get_tensor("latent_tensor").shape == (2, 4, 16, 16)
        assert json.loads(f.metadata()["prompt"])["3"]["class_type"] == "SaveLatent"
