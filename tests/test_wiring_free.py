"""POST /free's unload hook: wiring.unload_models empties diffusion's loaded-model list."""
import torch

import wiring
from diffusion import memory
from diffusion.model_patcher import ModelPatcher


def test_unload_models_unloads_every_loaded_model():
    net = torch.nn.Linear(4, 4)
    patcher = ModelPatcher(net, arch="sd1", load_device="cpu", offload_device="cpu")
    memory.load_models([patcher])
    assert any(p is patcher for p in memory.loaded_models())
    wiring.unload_models()
    assert not any(p is patcher for p in memory.loaded_models())
