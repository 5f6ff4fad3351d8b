"""UI-format workflows (tests/fixtures/workflows/) run headless on the tiny SD1 checkpoint: GLIGEN text
boxes (closed gates give the plain image, open gates another), and FreeU_V2 + RescaleCFG (changes the
image)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from gligen_tiny import tiny_gligen_state_dict
from tests.sdnodes_env import SD1_NAME, registry, sd_home, tiny_checkpoint_files, txt2img_prompt  # noqa: F401

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "workflows"


def _workflow(name: str) -> dict:
    wf = json.loads((FIXTURES / name).read_text())
    for n in wf["nodes"]:
        if n["type"] == "CheckpointLoaderSimple":
            n["widgets_values"] = [SD1_NAME]
    return wf


def _pixels(result) -> np.ndarray:
    from nodes import folder_paths

    (path,) = result.files(folder_paths)
    return np.asarray(Image.open(path), dtype=np.int16)


def _run(registry, prompt):  # noqa: F811
    from graph.runner import Runner

    return Runner(registry).run(prompt)


def _write_gligen(home: Path, gate: float) -> None:
    from diffusion.loading.checkpoint import load_checkpoint
    from nodes import folder_paths
    from safetensors.torch import save_file

    loaded = load_checkpoint(folder_paths.get_full_path("checkpoints", SD1_NAME))
    _, pooled = loaded.clip.encode_from_tokens(loaded.clip.tokenize("x"), return_pooled="unprojected")
    sd = tiny_gligen_state_dict(loaded.model.model, pooled.shape[-1], seed=1, gate=gate)
    folder = home / "models" / "gligen"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "tiny-gligen.safetensors"))


def _plain(prompt_text, seed, prefix):
    return txt2img_prompt(steps=3, seed=seed, cfg=6.0, positive=prompt_text, negative="blurry", prefix=prefix)


def test_gligen_textboxes_workflow(registry, sd_home):  # noqa: F811
    plain = _pixels(_run(registry, _plain("a cat and a dog on a lawn", 7, "plain")))
    _write_gligen(sd_home, gate=0.0)
    result = _run(registry, _workflow("gligen_textboxes.json"))
    assert {n["class_type"] for n in result.prompt.values()} >= {"GLIGENLoader", "GLIGENTextBoxApply"}
    closed = _pixels(result)
    # closed gates: the plain image up to float rounding (the boxed prompt runs in its own forward)
    assert np.abs(closed - plain).max() <= 1
    for f in (sd_home / "output").glob("*.png"):
        f.unlink()
    _write_gligen(sd_home, gate=1.0)
    wf = _workflow("gligen_textboxes.json")
    wf["nodes"][1]["widgets_values"] = ["tiny-gligen.safetensors"]
    opened = _pixels(_run(registry, wf))
    assert opened.shape == (64, 64, 3) and np.abs(opened - plain).max() > 4


def test_freeu_v2_and_rescale_cfg_workflow(registry, sd_home):  # noqa: F811
    plain = _pixels(_run(registry, _plain("a lighthouse at dusk", 11, "plain")))
    for f in (sd_home / "output").glob("*.png"):
        f.unlink()
    result = _run(registry, _workflow("freeu_v2_rescale_cfg.json"))
    assert [result.prompt[k]["class_type"] for k in ("2", "3")] == ["FreeU_V2", "RescaleCFG"]
    patched = _pixels(result)
    assert patched.shape == (64, 64, 3) and np.abs(patched - plain).max() > 4
