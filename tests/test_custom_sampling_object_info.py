"""/object_info of the custom-sampling nodes against COMPAT §9 (transcribed by hand from its table and
ComfyUI's nodes_custom_sampler declarations), and the plms sampler after ComfyUI's names."""
from __future__ import annotations

import pytest

from tests.sdnodes_env import registry, sd_home, tiny_checkpoint_files  # noqa: F401

SEED = ("INT", {"default": 0, "min": 0, "max": 2 ** 64 - 1, "control_after_generate": True})
CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})
STEPS = ("INT", {"default": 20, "min": 1, "max": 10000})
SIGMA_MAX = ("FLOAT", {"default": 14.614642, "min": 0.0, "max": 5000.0, "step": 0.01, "round": False})
SIGMA_MIN = ("FLOAT", {"default": 0.0291675, "min": 0.0, "max": 5000.0, "step": 0.01, "round": False})
SCHEDULERS = "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal".split()
C = "sampling/custom_sampling"

# class: (category, [(input, spec)], outputs, output names)
EXPECTED = {
    "SamplerCustom": (C, [("model", ("MODEL",)), ("add_noise", ("BOOLEAN", {"default": True})),
                          ("noise_seed", SEED), ("cfg", CFG), ("positive", ("CONDITIONING",)),
                          ("negative", ("CONDITIONING",)), ("sampler", ("SAMPLER",)), ("sigmas", ("SIGMAS",)),
                          ("latent_image", ("LATENT",))], ["LATENT", "LATENT"], ["output", "denoised_output"]),
    "SamplerCustomAdvanced": (C, [("noise", ("NOISE",)), ("guider", ("GUIDER",)), ("sampler", ("SAMPLER",)),
                                  ("sigmas", ("SIGMAS",)), ("latent_image", ("LATENT",))],
                              ["LATENT", "LATENT"], ["output", "denoised_output"]),
    "BasicScheduler": (C + "/schedulers", [("model", ("MODEL",)), ("scheduler", (SCHEDULERS,)), ("steps", STEPS),
                                           ("denoise", ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0,
                                                                  "step": 0.01}))], ["SIGMAS"], ["SIGMAS"]),
    "KarrasScheduler": (C + "/schedulers", [("steps", STEPS), ("sigma_max", SIGMA_MAX), ("sigma_min", SIGMA_MIN),
                                            ("rho", ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0,
                                                               "step": 0.01, "round": False}))],
                        ["SIGMAS"], ["SIGMAS"]),
    "SDTurboScheduler": (C + "/schedulers", [("model", ("MODEL",)),
                                             ("steps", ("INT", {"default": 1, "min": 1, "max": 10})),
                                             ("denoise", ("FLOAT", {"default": 1.0, "min": 0, "max": 1.0,
                                                                    "step": 0.01}))], ["SIGMAS"], ["SIGMAS"]),
    "KSamplerSelect": (C + "/samplers", [("sampler_name", None)], ["SAMPLER"], ["SAMPLER"]),
    "SplitSigmas": (C + "/sigmas", [("sigmas", ("SIGMAS",)), ("step", ("INT", {"default": 0, "min": 0,
                                                                              "max": 10000}))],
                    ["SIGMAS", "SIGMAS"], ["high_sigmas", "low_sigmas"]),
    "CFGGuider": (C + "/guiders", [("model", ("MODEL",)), ("positive", ("CONDITIONING",)),
                                   ("negative", ("CONDITIONING",)), ("cfg", CFG)], ["GUIDER"], ["GUIDER"]),
    "BasicGuider": (C + "/guiders", [("model", ("MODEL",)), ("conditioning", ("CONDITIONING",))],
                    ["GUIDER"], ["GUIDER"]),
    "DualCFGGuider": (C + "/guiders", [("model", ("MODEL",)), ("cond1", ("CONDITIONING",)),
                                       ("cond2", ("CONDITIONING",)), ("negative", ("CONDITIONING",)),
                                       ("cfg_conds", CFG), ("cfg_cond2_negative", CFG),
                                       ("style", (["regular", "nested"],))], ["GUIDER"], ["GUIDER"]),
    "RandomNoise": (C + "/noise", [("noise_seed", SEED)], ["NOISE"], ["NOISE"]),
    "DisableNoise": (C + "/noise", [], ["NOISE"], ["NOISE"]),
}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_comfyui(class_type, registry, sd_home):  # noqa: F811
    category, inputs, outputs, names = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert info["category"] == category
    assert info["python_module"] == "comfy_extras.nodes_custom_sampler"
    assert info["output"] == outputs and info["output_name"] == names
    assert info["input_order"]["required"] == [name for name, _ in inputs]
    for name, spec in inputs:
        if spec is not None:
            assert tuple(info["input"]["required"][name]) == spec, name


def test_sampler_combo_is_comfyuis_list_then_plms(registry, sd_home):  # noqa: F811
    from tests.test_sampling_registry import COMPAT_ORDER

    for class_type in ("KSamplerSelect", "KSampler", "KSamplerAdvanced"):
        required = registry.object_info_for(class_type)["input"]["required"]
        assert required["sampler_name"][0] == COMPAT_ORDER + ["plms"]


def test_every_node_of_the_module_is_registered(registry, sd_home):  # noqa: F811
    listed = ("SamplerCustom BasicScheduler KarrasScheduler ExponentialScheduler PolyexponentialScheduler "
              "LaplaceScheduler VPScheduler BetaSamplingScheduler SDTurboScheduler KSamplerSelect "
              "SamplerEulerAncestral SamplerEulerAncestralCFGPP SamplerLMS SamplerDPMPP_3M_SDE SamplerDPMPP_2M_SDE "
              "SamplerDPMPP_SDE SamplerDPMPP_2S_Ancestral SamplerDPMAdaptative SamplerER_SDE SamplerSASolver "
              "SamplerSEEDS2 SplitSigmas SplitSigmasDenoise FlipSigmas SetFirstSigma SamplingPercentToSigma "
              "CFGGuider DualCFGGuider BasicGuider RandomNoise DisableNoise AddNoise SamplerCustomAdvanced "
              "ManualSigmas").split()
    for class_type in listed:
        assert registry.object_info_for(class_type)["python_module"] == "comfy_extras.nodes_custom_sampler"
