"""UI-format workflows with ControlNets and a T2I-Adapter (tests/fixtures/workflows/), run headless
end to end on a tiny SD1-layout checkpoint with random ControlNets / adapter made for it: one
ControlNet; two mixed ControlNets (cldm and diffusers layouts, each with its own percent range);
a depth T2I-Adapter through ControlNetLoader and the classic Apply ControlNet (OLD)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from controlnet_models import (E2E_CONTROLNET, E2E_DEPTH_ADAPTER, diffusers_adapter, diffusers_controlnet,
                               save_controlnet, tencentarc_state_dict)
from tests.sdnodes_env import temporary_base

FIXTURES = Path(__file__).parent / "fixtures" / "workflows"
CKPT = "tiny-sd1-blocks.safetensors"
STEPS = 4


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from tools.make_tiny_checkpoint import TinySD1, make_tiny_sd1

    root = tmp_path_factory.mktemp("cn_models")
    files = {"checkpoints": [make_tiny_sd1(root / CKPT, seed=0,
                                           sizes=TinySD1(channel_mult=(1, 2, 2, 2), num_res_blocks=2))]}
    canny, depth = root / "control_tiny_canny.safetensors", root / "diffusers_tiny_depth.safetensors"
    save_controlnet(diffusers_controlnet(E2E_CONTROLNET, seed=1), canny, "cldm_pth", dtype=torch.float16)
    save_controlnet(diffusers_controlnet(E2E_CONTROLNET, seed=2), depth, "diffusers")
    adapter = root / "t2iadapter_tiny_depth.safetensors"
    save_file({k: v.contiguous() for k, v in tencentarc_state_dict(diffusers_adapter(E2E_DEPTH_ADAPTER, 3)).items()},
              str(adapter))
    files["controlnet"] = [canny, depth]
    files["t2i_adapter"] = [adapter]  # ComfyUI's second controlnet folder
    return files


@pytest.fixture
def home(tmp_path, model_files):
    for folder, paths in model_files.items():
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        for p in paths:
            (tmp_path / "models" / folder / p.name).symlink_to(p)
    with temporary_base(tmp_path):
        gen = np.random.default_rng(0)
        Image.fromarray(gen.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "input" / "canny_hint.png")
        Image.fromarray(gen.integers(0, 256, (96, 80), dtype=np.uint8)).convert("RGB").save(
            tmp_path / "input" / "depth_hint.png")
        yield tmp_path


@pytest.fixture(scope="module")
def registry():
    from nodes import load_registry

    return load_registry()


@pytest.fixture
def calls(monkeypatch):
    """Timesteps each ControlNet network and adapter was called at."""
    from diffusion.models.controlnet import ControlNetModel
    from diffusion.models.t2i_adapter import T2IAdapterModel

    seen = {"controlnet": [], "adapter": 0}
    cn_forward, ad_forward = ControlNetModel.forward, T2IAdapterModel.forward

    def cn_spy(self, x, hint, timesteps, *args, **kwargs):
        seen["controlnet"].append((id(self), float(timesteps.reshape(-1)[0])))
        return cn_forward(self, x, hint, timesteps, *args, **kwargs)

    def ad_spy(self, hint):
        seen["adapter"] += 1
        return ad_forward(self, hint)

    monkeypatch.setattr(ControlNetModel, "forward", cn_spy)
    monkeypatch.setattr(T2IAdapterModel, "forward", ad_spy)
    return seen


def _run(registry, workflow: dict) -> np.ndarray:
    from graph.runner import Runner
    from nodes import folder_paths

    result = Runner(registry).run(workflow)
    files = result.files(folder_paths)
    assert len(files) == 1, files
    image = Image.open(files[0])
    assert image.size == (64, 64)
    return np.asarray(image).astype(int)


def _without_controls(workflow: dict) -> dict:
    """The same workflow with the sampler fed the text encodings directly (controls unused)."""
    wf = copy.deepcopy(workflow)
    by_id = {n["id"]: n for n in wf["nodes"]}
    sampler = by_id[3]
    for slot, (name, text_node) in enumerate((("positive", 6), ("negative", 7))):
        link = next(i for i in sampler["inputs"] if i["name"] == name)["link"]
        for entry in wf["links"]:
            if entry[0] == link:
                entry[1], entry[2] = text_node, 0
    return wf


def _load(name):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def _sigma_range(start, end):
    from diffusion.sampling.model_sampling import ModelSampling

    ms = ModelSampling(prediction="eps")
    return ms.timestep(torch.tensor([ms.percent_to_sigma(end)])).item(), ms.timestep(
        torch.tensor([ms.percent_to_sigma(start)])).item()


def test_controlnet_workflow(registry, home, calls):
    workflow = _load("controlnet.json")
    with_control = _run(registry, workflow)
    assert len(calls["controlnet"]) == STEPS  # one batched cond + uncond call per step
    plain = _run(registry, _without_controls(workflow))
    assert np.abs(with_control - plain).max() > 0


def test_two_mixed_controlnets_workflow(registry, home, calls):
    workflow = _load("controlnet_two_mixed.json")
    with_control = _run(registry, workflow)
    by_net = {}
    for net, t in calls["controlnet"]:
        by_net.setdefault(net, []).append(t)
    assert len(by_net) == 2
    # the canny net (0.0..0.6) and the depth net (0.2..1.0): each only inside its range, both some steps
    ranges = [_sigma_range(0.0, 0.6), _sigma_range(0.2, 1.0)]
    for ts in by_net.values():
        assert 0 < len(ts) < STEPS
        assert any(all(lo <= t <= hi for t in ts) for lo, hi in ranges)
    assert sorted(len(ts) for ts in by_net.values()) != [STEPS, STEPS]
    plain = _run(registry, _without_controls(workflow))
    assert np.abs(with_control - plain).max() > 0


def test_depth_t2i_adapter_workflow(registry, home, calls):
    workflow = _load("t2i_adapter_depth.json")
    with_adapter = _run(registry, workflow)
    # features depend on the hint alone: computed once for the run, cond and uncond batched together
    assert calls["adapter"] == 1 and calls["controlnet"] == []
    plain = _run(registry, _without_controls(workflow))
    assert np.abs(with_adapter - plain).max() > 0
