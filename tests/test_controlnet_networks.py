"""ControlNet residuals and T2I-Adapter features against diffusers with the same random weights,
loaded from files in each layout our loader reads. Tolerance: max |ours - diffusers| <= 1e-4 x
max |diffusers| per tensor, in float32."""
from __future__ import annotations

import pytest
import torch

from controlnet_models import (TINY_ADAPTER, TINY_CONTROLNET, diffusers_adapter, diffusers_controlnet,
                               save_controlnet, tencentarc_state_dict)
from diffusion.loading.controlnet import load_controlnet
from diffusion.models.controlnet import ControlNet
from diffusion.models.t2i_adapter import T2IAdapter
from unet_models import TINY, inputs, sdxl_y

REL_TOL = 1e-4


def _rel_err(out, ref):
    return ((out - ref).abs().max() / ref.abs().max()).item()


_REFS = {}


def _reference(arch):
    if arch not in _REFS:
        _REFS[arch] = diffusers_controlnet(TINY_CONTROLNET[arch], seed=7)
    return _REFS[arch]


@pytest.mark.parametrize("layout", ["diffusers", "cldm", "cldm_pth"])
@pytest.mark.parametrize("arch", sorted(TINY_CONTROLNET))
def test_controlnet_residuals_match_diffusers(arch, layout, tmp_path):
    ref = _reference(arch)
    path = tmp_path / f"cn-{arch}-{layout}.safetensors"
    save_controlnet(ref, path, layout)
    control = load_controlnet(path)
    assert isinstance(control, ControlNet)
    assert control.network.config.arch == arch

    x, t, ctx, added = inputs(arch, size=8)
    hint = torch.rand(x.shape[0], 3, 64, 64, generator=torch.Generator().manual_seed(3))
    y = None
    if added is not None:
        y = sdxl_y(added["text_embeds"], added["time_ids"], TINY[arch]["addition_time_embed_dim"])
    with torch.no_grad():
        down, mid = ref(x, t, ctx, controlnet_cond=hint, added_cond_kwargs=added, return_dict=False)
        got = control.network(x, hint, t, ctx, y=y)
    assert len(got["output"]) == len(down) and len(got["middle"]) == 1
    for ours, theirs in zip(got["output"] + got["middle"], list(down) + [mid]):
        assert ours.shape == theirs.shape
        assert _rel_err(ours, theirs) <= REL_TOL


@pytest.mark.parametrize("layout", ["diffusers", "tencentarc"])
@pytest.mark.parametrize("kind", sorted(TINY_ADAPTER))
def test_t2i_adapter_features_match_diffusers(kind, layout, tmp_path):
    from safetensors.torch import save_file

    ref = diffusers_adapter(TINY_ADAPTER[kind], seed=5)
    sd = dict(ref.state_dict()) if layout == "diffusers" else tencentarc_state_dict(ref)
    path = tmp_path / f"t2i-{kind}-{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    control = load_controlnet(path)
    assert isinstance(control, T2IAdapter)
    cfg = control.network.config
    assert (cfg.kind, cfg.xl) == (kind.split("_")[0], kind.endswith("xl"))

    hint = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ref(hint)
        got = control.network(hint)
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert ours.shape == theirs.shape
        assert _rel_err(ours, theirs) <= REL_TOL
