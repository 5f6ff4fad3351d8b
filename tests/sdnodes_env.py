"""Test helpers for the SD node tests: tiny checkpoints in a private model tree, API-format graphs.

`sd_home` (fixture, see tests/test_sdnodes_*.py) re-roots nodes.folder_paths at a temporary directory
holding models/checkpoints/{tiny-sd1,tiny-sdxl}.safetensors, so outputs and model listings never touch
the repository, and restores the previous roots afterwards.
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

SD1_NAME = "tiny-sd1.safetensors"
SDXL_NAME = "tiny-sdxl.safetensors"


@contextlib.contextmanager
def one_torch_thread():
    """The tiny networks are far too small to gain from intra-op threads; on a shared 2-core machine
    the threads' spin-waiting made one sampling step 25x slower in CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint_files(tmp_path_factory) -> dict[str, Path]:
    """Build the tiny SD1 and SDXL checkpoints once per test session."""
    from tools.make_tiny_checkpoint import make_tiny_sd1, make_tiny_sdxl

    root = tmp_path_factory.mktemp("sdnodes_ckpt")
    return {"sd1": make_tiny_sd1(root / SD1_NAME, seed=0), "sdxl": make_tiny_sdxl(root / SDXL_NAME, seed=0)}


@contextlib.contextmanager
def temporary_base(base: Path):
    """Re-root nodes.folder_paths at `base` (with output/, input/, temp/, user/, models/checkpoints/),
    one torch thread, and restore the previous roots afterwards."""
    from nodes import folder_paths

    saved = (folder_paths.base_path, folder_paths.output_directory, folder_paths.input_directory,
             folder_paths.temp_directory, folder_paths.user_directory)
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    for sub in ("output", "input", "temp", "user"):
        (base / sub).mkdir(exist_ok=True)
    folder_paths.set_base_path(str(base))
    try:
        with one_torch_thread():
            yield base
    finally:
        folder_paths.set_base_path(saved[0])
        folder_paths.set_output_directory(saved[1])
        folder_paths.set_input_directory(saved[2])
        folder_paths.set_temp_directory(saved[3])
        folder_paths.set_user_directory(saved[4])


@pytest.fixture
def sd_home(tmp_path, tiny_checkpoint_files):
    """A folder_paths base directory with both tiny checkpoints; yields the base Path."""
    ckpt_dir = tmp_path / "models" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    for path in tiny_checkpoint_files.values():
        (ckpt_dir / path.name).symlink_to(path)
    with temporary_base(tmp_path):
        yield tmp_path


@pytest.fixture(scope="module")
def registry():
    """All built-in nodes plus the test-only SDNodesCaptureLatent."""
    return registry_with_capture()


def txt2img_prompt(ckpt=SD1_NAME, size=64, steps=4, seed=1, cfg=5.0, sampler="euler", scheduler="normal",
                   denoise=1.0, positive="a red apple", negative="blurry", prefix="sdnodes") -> dict:
    """The classic text-to-image graph in API format, ComfyUI's node ids."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": scheduler, "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": denoise}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }


def copy_into_input(home: Path, image_path: Path, name: str = "source.png") -> str:
    shutil.copy(image_path, home / "input" / name)
    return name


class CaptureLatent:
    """Test-only output node: keeps the LATENT it receives in `CaptureLatent.seen[label]`."""

    seen: dict = {}
    CATEGORY = "_for_testing"
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "label": ("STRING", {"default": "x"})}}

    def capture(self, samples, label):
        CaptureLatent.seen[label] = samples
        return {}


def registry_with_capture():
    from nodes import load_registry

    reg = load_registry()
    reg.register("SDNodesCaptureLatent", CaptureLatent)
    return reg
