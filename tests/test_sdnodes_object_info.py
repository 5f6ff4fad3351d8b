"""/object_info entries of the core SD nodes against COMPAT §9 (inputs, defaults, bounds, combos).

The expected values below are transcribed by hand from COMPAT.md §9/§10, not computed by our code.
"""
from __future__ import annotations

import pytest

from tests.sdnodes_env import SD1_NAME, SDXL_NAME, registry, sd_home, tiny_checkpoint_files  # noqa: F401

SEED_MAX = 2 ** 64 - 1
R = 16384  # MAX_RESOLUTION

# COMPAT §10, in combo order.
SAMPLERS = ("euler euler_cfg_pp euler_ancestral euler_ancestral_cfg_pp heun heunpp2 exp_heun_2_x0 "
            "exp_heun_2_x0_sde dpm_2 dpm_2_ancestral lms dpm_fast dpm_adaptive dpmpp_2s_ancestral "
            "dpmpp_2s_ancestral_cfg_pp dpmpp_sde dpmpp_sde_gpu dpmpp_2m dpmpp_2m_cfg_pp dpmpp_2m_sde "
            "dpmpp_2m_sde_gpu dpmpp_2m_sde_heun dpmpp_2m_sde_heun_gpu dpmpp_3m_sde dpmpp_3m_sde_gpu ddpm lcm "
            "ipndm ipndm_v deis res_multistep res_multistep_cfg_pp res_multistep_ancestral "
            "res_multistep_ancestral_cfg_pp gradient_estimation gradient_estimation_cfg_pp er_sde seeds_2 "
            "seeds_3 sa_solver sa_solver_pece ddim uni_pc uni_pc_bh2").split()
# Our extra samplers (plms) follow ComfyUI's 44 names: the combo must start with ComfyUI's list.
OUR_SAMPLERS = ["plms"]
SCHEDULERS = "simple sgm_uniform karras exponential ddim_uniform beta normal linear_quadratic kl_optimal".split()

# (name, type, default, min, max, step); None = not stated in COMPAT / not applicable.
SAMPLER_COMMON = [
    ("model", "MODEL", None, None, None, None),
    ("seed", "INT", 0, 0, SEED_MAX, None),
    ("steps", "INT", 20, 1, 10000, None),
    ("cfg", "FLOAT", 8.0, 0.0, 100.0, 0.1),
    ("sampler_name", SAMPLERS, None, None, None, None),
    ("scheduler", SCHEDULERS, None, None, None, None),
    ("positive", "CONDITIONING", None, None, None, None),
    ("negative", "CONDITIONING", None, None, None, None),
    ("latent_image", "LATENT", None, None, None, None),
]
TILED = [("tile_size", "INT", 512, 64, 4096, None), ("overlap", "INT", 64, 0, 4096, 32),
         ("temporal_size", "INT", 64, 8, 4096, 4), ("temporal_overlap", "INT", 8, 4, 4096, 4)]

EXPECTED = {
    "KSampler": ("sampling", SAMPLER_COMMON + [("denoise", "FLOAT", 1.0, 0.0, 1.0, 0.01)], ["LATENT"]),
    "KSamplerAdvanced": ("sampling", [
        SAMPLER_COMMON[0], ("add_noise", ["enable", "disable"], None, None, None, None),
        ("noise_seed", "INT", 0, 0, SEED_MAX, None), *SAMPLER_COMMON[2:],
        ("start_at_step", "INT", 0, 0, 10000, None), ("end_at_step", "INT", 10000, 0, 10000, None),
        ("return_with_leftover_noise", ["disable", "enable"], None, None, None, None)], ["LATENT"]),
    "CheckpointLoaderSimple": ("loaders", [("ckpt_name", "checkpoints", None, None, None, None)],
                               ["MODEL", "CLIP", "VAE"]),
    "CheckpointLoader": ("advanced/loaders", [("config_name", "configs", None, None, None, None),
                                              ("ckpt_name", "checkpoints", None, None, None, None)],
                         ["MODEL", "CLIP", "VAE"]),
    "VAELoader": ("loaders", [("vae_name", "vae", None, None, None, None)], ["VAE"]),
    "CLIPTextEncode": ("conditioning", [("text", "STRING", None, None, None, None),
                                        ("clip", "CLIP", None, None, None, None)], ["CONDITIONING"]),
    "CLIPSetLastLayer": ("conditioning", [("clip", "CLIP", None, None, None, None),
                                          ("stop_at_clip_layer", "INT", -1, -24, -1, 1)], ["CLIP"]),
    "VAEDecode": ("latent", [("samples", "LATENT", None, None, None, None),
                             ("vae", "VAE", None, None, None, None)], ["IMAGE"]),
    "VAEEncode": ("latent", [("pixels", "IMAGE", None, None, None, None),
                             ("vae", "VAE", None, None, None, None)], ["LATENT"]),
    "EmptyLatentImage": ("latent", [("width", "INT", 512, 16, R, 8), ("height", "INT", 512, 16, R, 8),
                                    ("batch_size", "INT", 1, 1, 4096, None)], ["LATENT"]),
    "VAEDecodeTiled": ("_for_testing", [("samples", "LATENT", None, None, None, None),
                                        ("vae", "VAE", None, None, None, None),
                                        ("tile_size", "INT", 512, 64, 4096, 32), *TILED[1:]], ["IMAGE"]),
    "VAEEncodeTiled": ("_for_testing", [("pixels", "IMAGE", None, None, None, None),
                                        ("vae", "VAE", None, None, None, None),
                                        ("tile_size", "INT", 512, 64, 4096, 64), *TILED[1:]], ["LATENT"]),
    "CLIPTextEncodeSDXL": ("advanced/conditioning", [
        ("clip", "CLIP", None, None, None, None), ("width", "INT", 1024, 0, R, None),
        ("height", "INT", 1024, 0, R, None), ("crop_w", "INT", 0, 0, R, None), ("crop_h", "INT", 0, 0, R, None),
        ("target_width", "INT", 1024, 0, R, None), ("target_height", "INT", 1024, 0, R, None),
        ("text_g", "STRING", None, None, None, None), ("text_l", "STRING", None, None, None, None)],
        ["CONDITIONING"]),
    "CLIPTextEncodeSDXLRefiner": ("advanced/conditioning", [
        ("ascore", "FLOAT", 6.0, 0.0, 1000.0, 0.01), ("width", "INT", 1024, 0, R, None),
        ("height", "INT", 1024, 0, R, None), ("text", "STRING", None, None, None, None),
        ("clip", "CLIP", None, None, None, None)], ["CONDITIONING"]),
}


@pytest.mark.parametrize("class_type", sorted(EXPECTED))
def test_object_info_matches_compat(class_type, registry, sd_home):  # noqa: F811
    from nodes import folder_paths

    category, inputs, outputs = EXPECTED[class_type]
    info = registry.object_info_for(class_type)
    assert info is not None, f"{class_type} is not registered"
    assert info["name"] == class_type
    assert info["category"] == category
    assert info["output"] == outputs
    assert info["output_is_list"] == [False] * len(outputs)
    assert info["output_node"] is False
    assert info["input_order"]["required"] == [i[0] for i in inputs]
    assert "optional" not in info["input"]
    required = info["input"]["required"]
    for name, kind, default, lo, hi, step in inputs:
        spec = required[name]
        opts = spec[1] if len(spec) > 1 else {}
        if kind is SAMPLERS:  # ComfyUI's sampler names first, then ours
            assert spec[0] == SAMPLERS + OUR_SAMPLERS, f"{class_type}.{name} combo options"
        elif isinstance(kind, (list, tuple)):  # literal combo
            assert spec[0] == list(kind), f"{class_type}.{name} combo options"
        elif kind.islower():  # combo listing a model folder
            assert isinstance(spec[0], list)
            assert spec[0][:len(folder_paths.get_filename_list(kind))] == folder_paths.get_filename_list(kind)
        else:
            assert spec[0] == kind, f"{class_type}.{name} type"
        for key, want in (("default", default), ("min", lo), ("max", hi), ("step", step)):
            if want is not None:
                assert opts.get(key) == want, f"{class_type}.{name} {key}"
                assert type(opts.get(key)) is type(want), f"{class_type}.{name} {key} type"


def test_checkpoint_combo_lists_files_in_model_folder(registry, sd_home):  # noqa: F811
    info = registry.object_info_for("CheckpointLoaderSimple")
    assert info["input"]["required"]["ckpt_name"][0] == [SD1_NAME, SDXL_NAME]
    # Files dropped in later appear without a restart (combo rebuilt on each request).
    (sd_home / "models" / "checkpoints" / "later.safetensors").write_bytes(b"x")
    info = registry.object_info_for("CheckpointLoaderSimple")
    assert "later.safetensors" in info["input"]["required"]["ckpt_name"][0]


def test_seed_widgets_ask_for_control_after_generate(registry, sd_home):  # noqa: F811
    for class_type, name in (("KSampler", "seed"), ("KSamplerAdvanced", "noise_seed")):
        opts = registry.object_info_for(class_type)["input"]["required"][name][1]
        assert opts.get("control_after_generate") is True


def test_vae_loader_lists_vae_files_then_pixel_space(registry, sd_home):  # noqa: F811
    (sd_home / "models" / "vae").mkdir(parents=True, exist_ok=True)
    (sd_home / "models" / "vae" / "my_vae.safetensors").write_bytes(b"x")
    options = registry.object_info_for("VAELoader")["input"]["required"]["vae_name"][0]
    assert options[0] == "my_vae.safetensors"
    assert options[-1] == "pixel_space"


def test_deprecated_flag_and_display_names(registry, sd_home):  # noqa: F811
    assert registry.object_info_for("CheckpointLoader").get("deprecated") is True
    assert registry.object_info_for("CheckpointLoaderSimple").get("deprecated") is None
    names = {c: registry.object_info_for(c)["display_name"] for c in
             ("CheckpointLoaderSimple", "CLIPTextEncode", "KSamplerAdvanced", "VAEDecode", "EmptyLatentImage")}
    assert names == {"CheckpointLoaderSimple": "Load Checkpoint", "CLIPTextEncode": "CLIP Text Encode (Prompt)",
                     "KSamplerAdvanced": "KSampler (Advanced)", "VAEDecode": "VAE Decode",
                     "EmptyLatentImage": "Empty Latent Image"}


@pytest.mark.parametrize("class_type,module", [
    ("KSampler", "nodes"), ("CheckpointLoaderSimple", "nodes"),
    ("CLIPTextEncodeSDXL", "comfy_extras.nodes_clip_sdxl"),
    ("CLIPTextEncodeSDXLRefiner", "comfy_extras.nodes_clip_sdxl")])
def test_python_module_as_comfyui_reports_it(class_type, module, registry, sd_home):  # noqa: F811
    assert registry.object_info_for(class_type)["python_module"] == module
