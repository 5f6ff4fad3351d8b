"""Node-level checks of the SD nodes and the tiny checkpoint builder (no engine involved)."""
from __future__ import annotations

import re

import pytest
import torch

from tests.sdnodes_env import one_torch_thread, sd_home, tiny_checkpoint_files  # noqa: F401


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def sd1(tiny_checkpoint_files):  # noqa: F811
    from diffusion.loading.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint_files["sd1"])


@pytest.fixture(scope="module")
def sdxl(tiny_checkpoint_files):  # noqa: F811
    from diffusion.loading.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint_files["sdxl"])


# --- tools/make_tiny_checkpoint.py --------------------------------------------------------------

def test_tiny_checkpoint_uses_original_single_file_layout(tiny_checkpoint_files):  # noqa: F811
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint_files["sd1"]), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                "first_stage_model.decoder.conv_out.weight", "first_stage_model.quant_conv.weight",
                "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                "cond_stage_model.transformer.text_model.final_layer_norm.weight"):
        assert key in keys, key
    assert meta["latentgraph.num_heads"] == "8"
    assert tiny_checkpoint_files["sd1"].stat().st_size < 12 * 2 ** 20  # "a few MB"


def test_tiny_checkpoints_load_with_detected_architecture(sd1, sdxl):
    model, clip, vae, arch = sd1
    assert arch == "sd1" and model.model.config.context_dim == 32 and model.model.config.adm_in_channels is None
    assert clip.arch == "sd1" and vae.downscale_ratio == 8 and vae.latent_channels == 4
    model, clip, vae, arch = sdxl
    assert arch == "sdxl" and clip.arch == "sdxl"
    cfg = model.model.config
    assert cfg.context_dim == 32 + 64 and cfg.adm_in_channels == 64 + 6 * 256 and cfg.transformer_depth[0] == 0


def test_tiny_checkpoint_is_deterministic_per_seed():
    from tools.make_tiny_checkpoint import TinySD1, build_sd1_state_dict

    small = TinySD1(clip_layers=1)
    a, meta_a = build_sd1_state_dict(small, seed=3)
    b, meta_b = build_sd1_state_dict(small, seed=3)
    c, _ = build_sd1_state_dict(small, seed=4)
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert meta_a == meta_b and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a[key], c[key])


def test_tool_writes_a_loadable_file_and_refuses_to_overwrite(tmp_path, capsys):
    from tools.make_tiny_checkpoint import main

    from diffusion.loading.checkpoint import detect_arch
    from diffusion.loading.files import read_state_dict

    out = tmp_path / "ckpt.safetensors"
    assert main(["--out", str(out)]) == 0 and out.is_file()
    assert detect_arch(*read_state_dict(out)) == "sd1"
    before = out.stat().st_mtime_ns
    assert main(["--out", str(out)]) == 0
    assert out.stat().st_mtime_ns == before and "exists" in capsys.readouterr().out


# --- latent nodes ----------------------------------------------------------------------------------

def test_empty_latent_shape_and_zeros():
    from nodes.sd_latent import EmptyLatentImage

    (latent,) = EmptyLatentImage().execute(width=96, height=72, batch_size=2)
    assert set(latent) == {"samples"}
    s = latent["samples"]
    assert s.shape == (2, 4, 9, 12) and s.dtype == torch.float32 and s.device.type == "cpu"
    assert torch.count_nonzero(s) == 0


def test_vae_encode_crops_to_multiple_of_8_and_drops_alpha(sd1):
    from nodes.sd_latent import VAEDecode, VAEEncode

    vae = sd1.vae
    image = torch.rand(1, 70, 66, 4)  # RGBA, 66 wide: crops 1 px each side horizontally, 3 and 3 vertically
    (latent,) = VAEEncode().execute(image, vae)
    assert latent["samples"].shape == (1, 4, 8, 8)
    torch.testing.assert_close(latent["samples"], vae.encode(image[:, 3:67, 1:65, :3]), atol=1e-6, rtol=1e-6)
    (decoded,) = VAEDecode().execute(latent, vae)
    assert decoded.shape == (1, 64, 64, 3) and 0.0 <= float(decoded.min()) and float(decoded.max()) <= 1.0


class _RecordingVAE:
    def __init__(self):
        self.calls = []

    def decode(self, samples):
        self.calls.append(("decode", tuple(samples.shape)))
        return torch.zeros(1, 8, 8, 3)

    def decode_tiled(self, samples, tile, overlap):
        self.calls.append(("decode_tiled", tuple(samples.shape), tile, overlap))
        return torch.zeros(1, 8, 8, 3)

    def encode_tiled(self, image, tile, overlap):
        self.calls.append(("encode_tiled", tuple(image.shape), tile, overlap))
        return torch.zeros(1, 4, 1, 1)


def test_tiled_nodes_pass_pixel_tiles_and_shrink_wide_overlap():
    from nodes.sd_latent import VAEDecodeTiled, VAEEncodeTiled

    vae = _RecordingVAE()
    VAEDecodeTiled().execute({"samples": torch.zeros(1, 4, 16, 16)}, vae, tile_size=64, overlap=64)
    VAEDecodeTiled().execute({"samples": torch.zeros(1, 4, 16, 16)}, vae, tile_size=512, overlap=64)
    VAEEncodeTiled().execute(torch.zeros(1, 8, 8, 4), vae, tile_size=128, overlap=32)
    # An overlap wider than a quarter of the tile leaves no tile interior: it becomes tile/4.
    assert vae.calls == [("decode_tiled", (1, 4, 16, 16), 64, 16), ("decode_tiled", (1, 4, 16, 16), 512, 64),
                         ("encode_tiled", (1, 8, 8, 3), 128, 32)]


def _run_in_engine(node_cls, links: dict, constants: dict = None) -> dict:
    """Run one node through the engine, each of `links` arriving over a link from a node that
    outputs that value with the declared type; the execution_error data (or {} on success)."""
    from graph.executor import Executor
    from nodes.registry import NodeRegistry

    registry = NodeRegistry()
    registry.register(node_cls.__name__, node_cls)
    declared = {**node_cls.INPUT_TYPES()["required"], **node_cls.INPUT_TYPES().get("optional", {})}
    prompt = {"1": {"class_type": node_cls.__name__, "inputs": dict(constants or {})}}
    for name, value in links.items():
        source = type(f"Source_{name}", (), {
            "INPUT_TYPES": classmethod(lambda cls: {"required": {}}), "FUNCTION": "run",
            "RETURN_TYPES": (declared[name][0],), "run": lambda self, v=value: (v,)})
        registry.register(source.__name__, source)
        prompt[f"src_{name}"] = {"class_type": source.__name__, "inputs": {}}
        prompt["1"]["inputs"][name] = [f"src_{name}", 0]
    result = Executor(registry).execute(prompt, "p", outputs=["1"])
    return result.error or {}


def test_latent_nodes_name_the_bad_input():
    from nodes.sd_latent import VAEDecode, VAEEncode

    vae = _RecordingVAE()
    err = _run_in_engine(VAEDecode, {"samples": torch.zeros(1, 4, 8, 8), "vae": vae})
    assert err["node_id"] == "1" and err["node_type"] == "VAEDecode"
    assert re.match(r"VAEDecode \(node 1\): input 'samples' must be a LATENT", err["exception_message"])
    err = _run_in_engine(VAEEncode, {"pixels": torch.zeros(1, 8, 8, 3), "vae": None})
    assert re.match(r"VAEEncode \(node 1\): required input 'vae' is None.*holds no VAE",
                    err["exception_message"])
    err = _run_in_engine(VAEEncode, {"pixels": torch.zeros(8, 8, 3), "vae": vae})
    assert re.match(r"VAEEncode \(node 1\): input 'pixels' must be an IMAGE tensor \[B,H,W,C\], "
                    r"got Tensor of shape \[8, 8, 3\]", err["exception_message"])
    assert vae.calls == []


def test_pixel_space_vae_round_trips_images(sd_home):  # noqa: F811
    from nodes.sd_loaders import VAELoader

    (vae,) = VAELoader().execute("pixel_space")
    image = torch.rand(2, 5, 7, 3)
    latent = vae.encode(image)
    assert latent.shape == (2, 3, 5, 7) and float(latent.min()) >= -1.0
    torch.testing.assert_close(vae.decode(latent), image)


# --- conditioning nodes ------------------------------------------------------------------------------

def test_clip_text_encode_gives_cond_and_pooled(sd1):
    from nodes.sd_conditioning import CLIPTextEncode

    (cond,) = CLIPTextEncode().execute(sd1.clip, "a photo of a cat")
    assert len(cond) == 1
    tensor, extra = cond[0]
    assert tensor.shape == (1, 77, 32) and extra["pooled_output"].shape == (1, 32)
    long_prompt = " ".join(["cat"] * 100)  # > 75 tokens: two chunks on the token axis
    assert CLIPTextEncode().execute(sd1.clip, long_prompt)[0][0][0].shape == (1, 154, 32)


def test_clip_set_last_layer_clones_and_changes_output(sd1):
    from nodes.sd_conditioning import CLIPSetLastLayer, CLIPTextEncode

    (skipped,) = CLIPSetLastLayer().execute(sd1.clip, -2)
    assert skipped is not sd1.clip and sd1.clip.layer_idx is None and skipped.layer_idx == -2
    base = CLIPTextEncode().execute(sd1.clip, "a dog")[0][0][0]
    assert not torch.allclose(CLIPTextEncode().execute(skipped, "a dog")[0][0][0], base)
    (last,) = CLIPSetLastLayer().execute(sd1.clip, -1)  # SD1: -1 is the default output
    torch.testing.assert_close(CLIPTextEncode().execute(last, "a dog")[0][0][0], base)


def test_clip_text_encode_without_clip_says_what_to_do(sd1):
    from nodes.sd_conditioning import CLIPTextEncode

    err = _run_in_engine(CLIPTextEncode, {"clip": None}, {"text": "x"})
    assert err["node_type"] == "CLIPTextEncode"
    assert re.match(r"CLIPTextEncode \(node 1\): required input 'clip' is None.*no text encoder",
                    err["exception_message"])
    err = _run_in_engine(CLIPTextEncode, {"clip": sd1.clip, "text": 5})
    assert re.match(r"CLIPTextEncode \(node 1\): input 'text' must be a string, got int",
                    err["exception_message"])


def test_sdxl_encode_puts_size_conditioning_in_the_dict_and_pads_prompts(sdxl):
    from nodes.sd_conditioning import CLIPTextEncodeSDXL

    clip = sdxl.clip
    (cond,) = CLIPTextEncodeSDXL().execute(clip, 832, 1216, 16, 8, 1024, 960, "castle", " ".join(["stone"] * 90))
    tensor, extra = cond[0]
    assert {k: extra[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")} == {
        "width": 832, "height": 1216, "crop_w": 16, "crop_h": 8, "target_width": 1024, "target_height": 960}
    assert extra["pooled_output"].shape == (1, 64)
    # text_l needs two chunks; text_g is padded with an empty chunk instead of text_l being cut.
    assert tensor.shape == (1, 154, 96)
    empty = clip.tokenize("")
    empty_cond = clip.encode_from_tokens({"l": empty["l"], "g": empty["g"]})
    torch.testing.assert_close(tensor[:, 77:, 32:], empty_cond[:, :, 32:], atol=1e-5, rtol=1e-5)
    # text_g feeds bigG: the pooled output is the one of "castle", whatever text_l says.
    g_only = clip.tokenize("castle")
    _, pooled = clip.encode_from_tokens(g_only, return_pooled=True)
    torch.testing.assert_close(extra["pooled_output"], pooled)


class _FakeClip:
    def tokenize(self, text):
        return {"g": [[(1, 1.0)]]}

    def encode_from_tokens(self, tokens, return_pooled=False):
        return torch.zeros(1, 77, 8), torch.ones(1, 8)


def test_sdxl_refiner_encode_carries_aesthetic_score_and_size():
    from nodes.sd_conditioning import CLIPTextEncodeSDXLRefiner

    (cond,) = CLIPTextEncodeSDXLRefiner().execute(_FakeClip(), 2.5, 768, 512, "a boat")
    extra = cond[0][1]
    assert extra["aesthetic_score"] == 2.5 and extra["width"] == 768 and extra["height"] == 512
    assert torch.equal(extra["pooled_output"], torch.ones(1, 8))


# --- sampler nodes -----------------------------------------------------------------------------------

@pytest.fixture
def recorded_sample(monkeypatch):
    from nodes import sd_sampling

    calls = []

    def fake_sample(model, noise, positive, negative, cfg, sampler_name, scheduler, steps, latent_image, **kw):
        calls.append(dict(noise=noise, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, steps=steps,
                          latent_image=latent_image, **kw))
        return latent_image + 1.0

    monkeypatch.setattr(sd_sampling.sampling, "sample", fake_sample)
    return calls


COND = [[torch.zeros(1, 77, 8), {"pooled_output": torch.zeros(1, 8)}]]


def test_ksampler_noise_recipe_and_latent_dict_passthrough(recorded_sample):
    from nodes.sd_sampling import KSampler

    latent = {"samples": torch.zeros(2, 4, 2, 2), "batch_index": [3, 1], "noise_mask": torch.ones(1, 2, 2)}
    (out,) = KSampler().execute(object(), 0, 7, 6.5, "euler", "karras", COND, COND, latent, denoise=0.5)
    call = recorded_sample[0]
    # COMPAT §10: seed 0 -> torch.manual_seed(0) draws, one [1,4,2,2] draw per batch index 0..3.
    g = torch.Generator().manual_seed(0)
    draws = [torch.randn(1, 4, 2, 2, generator=g) for _ in range(4)]
    torch.testing.assert_close(call["noise"], torch.cat([draws[3], draws[1]]))
    assert call["noise"][0, 0, 0, 0].item() != 0.0
    assert (call["denoise"], call["steps"], call["cfg"], call["scheduler"]) == (0.5, 7, 6.5, "karras")
    assert call["noise_mask"] is latent["noise_mask"] and call["seed"] == 0
    assert out["batch_index"] == [3, 1] and out["noise_mask"] is latent["noise_mask"]
    assert torch.equal(out["samples"], latent["samples"] + 1.0) and torch.count_nonzero(latent["samples"]) == 0


def test_first_noise_values_match_compat_reference(recorded_sample):
    from nodes.sd_sampling import KSampler

    KSampler().execute(object(), 0, 1, 1.0, "euler", "normal", COND, COND, {"samples": torch.zeros(1, 4, 2, 2)})
    first = recorded_sample[0]["noise"].flatten()[:6].tolist()
    assert first == pytest.approx([-1.1258398, -1.1523602, -0.2505786, -0.4338788, 0.8487104, 0.6920092],
                                  abs=1e-6)


@pytest.mark.parametrize("add_noise,leftover,zero_noise,full", [
    ("enable", "disable", False, True), ("disable", "enable", True, False)])
def test_ksampler_advanced_maps_its_options(recorded_sample, add_noise, leftover, zero_noise, full):
    from nodes.sd_sampling import KSamplerAdvanced

    latent = {"samples": torch.zeros(1, 4, 2, 2)}
    KSamplerAdvanced().execute(object(), add_noise, 5, 12, 8.0, "euler", "normal", COND, COND, latent,
                               start_at_step=3, end_at_step=9, return_with_leftover_noise=leftover)
    call = recorded_sample[0]
    assert bool(torch.count_nonzero(call["noise"]) == 0) is zero_noise
    assert (call["start_step"], call["last_step"], call["force_full_denoise"], call["denoise"]) == (3, 9, full, 1.0)


def test_sampler_names_the_bad_input(recorded_sample):
    from types import SimpleNamespace

    from nodes.sd_sampling import KSampler

    model = SimpleNamespace(apply_model=lambda *a, **k: None)
    latent = {"samples": torch.zeros(1, 4, 2, 2)}
    constants = {"seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
                 "denoise": 1.0}
    err = _run_in_engine(KSampler, {"model": model, "positive": COND, "negative": COND,
                                    "latent_image": torch.zeros(1, 4, 2, 2)}, constants)
    assert re.match(r"KSampler \(node 1\): input 'latent_image' must be a LATENT", err["exception_message"])
    err = _run_in_engine(KSampler, {"model": model, "positive": COND, "negative": "text",
                                    "latent_image": latent}, constants)
    assert re.match(r"KSampler \(node 1\): input 'negative' must be CONDITIONING", err["exception_message"])
    err = _run_in_engine(KSampler, {"model": None, "positive": COND, "negative": COND,
                                    "latent_image": latent}, constants)
    assert re.match(r"KSampler \(node 1\): required input 'model' is None", err["exception_message"])
    assert recorded_sample == []


def test_checkpoint_loader_with_config_ignores_the_config(sd_home):  # noqa: F811
    from nodes.sd_loaders import CheckpointLoader

    model, clip, vae = CheckpointLoader().execute("v1-inference.yaml", "tiny-sd1.safetensors")
    assert model.arch == "sd1" and clip.arch == "sd1" and vae.latent_channels == 4
