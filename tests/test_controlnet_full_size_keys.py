"""Full-size key tables on the meta device: the public layouts of the SD1.5 ControlNet 1.1 (cldm and
diffusers) and of the T2I-Adapter depth model (TencentARC and diffusers) load into our networks with
no missing and no unexpected key, every shape equal. The tables come from diffusers' own classes
with the released configs, renamed to the original layouts by the test key maps."""
from __future__ import annotations

import torch

from controlnet_models import (DEPTH_SD14, SD15_CONTROLNET, cldm_state_dict, diffusers_adapter,
                               diffusers_controlnet, tencentarc_state_dict)
from diffusion.loading.controlnet import (build_controlnet_model, build_t2i_adapter_model,
                                          diffusers_controlnet_to_cldm, diffusers_adapter_to_original)


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _assert_same_table(net, expected: dict):
    got = _shapes(net.state_dict())
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert got == _shapes(expected)


def test_sd15_controlnet_11_cldm_layout():
    ref = diffusers_controlnet(SD15_CONTROLNET, meta=True)
    sd = cldm_state_dict(ref)
    net, unexpected = build_controlnet_model(sd, device="meta")
    assert unexpected == []
    _assert_same_table(net, sd)
    cfg = net.config
    assert (cfg.arch, cfg.model_channels, cfg.channel_mult, cfg.context_dim, cfg.num_heads) == (
        "sd1", 320, (1, 2, 4, 4), 768, 8)
    assert len(net.zero_convs) == 12 and net.hint_channels == 3


def test_sd15_controlnet_11_diffusers_layout():
    ref = diffusers_controlnet(SD15_CONTROLNET, meta=True)
    sd, leftover = diffusers_controlnet_to_cldm(dict(ref.state_dict()))
    assert leftover == []
    assert sd.keys() == cldm_state_dict(ref).keys()
    net, unexpected = build_controlnet_model(sd, device="meta")
    assert unexpected == []
    _assert_same_table(net, sd)


def _on_meta(sd: dict) -> dict:
    return {k: torch.empty(v.shape, device="meta") for k, v in sd.items()}


def test_t2i_adapter_depth_tencentarc_layout():
    ref = diffusers_adapter(DEPTH_SD14, meta=True)
    sd = _on_meta(tencentarc_state_dict(ref))
    net, unexpected = build_t2i_adapter_model(sd, device="meta")
    assert unexpected == []
    _assert_same_table(net, sd)
    cfg = net.config
    assert (cfg.kind, cfg.channels, cfg.num_res_blocks, cfg.hint_channels, cfg.xl, cfg.ksize) == (
        "full", (320, 640, 1280, 1280), 2, 1, False, 1)


def test_t2i_adapter_depth_diffusers_layout():
    ref = diffusers_adapter(DEPTH_SD14, meta=True)
    sd = _on_meta(diffusers_adapter_to_original(dict(ref.state_dict())))
    net, unexpected = build_t2i_adapter_model(sd, device="meta")
    assert unexpected == []
    _assert_same_table(net, sd)
