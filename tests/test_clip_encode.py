"""The CLIP runtime object: per-architecture outputs, clip skip, prompt weights, embeddings, loading.

Reference: transformers' CLIP text models with the same random weights, saved in the original
checkpoint layouts (tests/clip_reference.py) and read back from .safetensors.
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.loading.files import CheckpointError
from diffusion.loading.checkpoint import load_text_encoders
from diffusion.loading.text_encoders import clip_from_state_dict, clip_from_text_encoder_files
from diffusion.text.encoder import BOS, EOS, TextEncoderError, empty_tokens
from tests.clip_reference import (
    TINY_SIZES, checkpoint_text_weights, final_norm_of, hf_layout, hf_model, max_rel_err, open_clip_layout,
    reference_outputs, with_prefix,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def refs():
    return {"L": hf_model(TINY_SIZES["L"], False, seed=0),
            "H": hf_model(TINY_SIZES["H"], True, seed=1),
            "G": hf_model(TINY_SIZES["G"], True, seed=2)}


@pytest.fixture(scope="module")
def checkpoints(refs, tmp_path_factory):
    """arch -> path of a .safetensors holding that arch's text-encoder weights (original keys)."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for arch in ("sd1", "sd2", "sdxl", "sdxl_refiner"):
        sd = {k: v.contiguous() for k, v in checkpoint_text_weights(arch, refs).items()}
        paths[arch] = root / f"{arch}.safetensors"
        save_file(sd, str(paths[arch]))
    return paths


def _load(checkpoints, arch, **kw):
    return clip_from_state_dict(load_file(str(checkpoints[arch])), arch, dtype=torch.float32, device="cpu", **kw)


def _chunk(words, pad, weights=None):
    """One 77-token chunk as (token, weight) pairs: BOS, words, EOS, padding."""
    ids = [BOS] + list(words) + [EOS]
    ids += [pad] * (77 - len(ids))
    weights = weights or {}
    return [(t, weights.get(i, 1.0)) for i, t in enumerate(ids)]


def _ids(chunk):
    return torch.tensor([[t for t, _ in chunk]])


WORDS = [320, 1125, 539, 320, 2368, 530, 518, 3772]  # arbitrary in-vocabulary ids
WORDS2 = [49405, 7, 12000, 42]


def test_sd1_default_and_clip_skip(checkpoints, refs):
    clip = _load(checkpoints, "sd1")
    chunk = _chunk(WORDS, EOS)
    hidden, last, pooled, _ = reference_outputs(refs["L"], _ids(chunk))
    cond, out_pooled = clip.encode_from_tokens({"l": [chunk]}, return_pooled=True)
    assert cond.shape == (1, 77, 64) and cond.dtype == torch.float32 and cond.device.type == "cpu"
    assert max_rel_err(cond, last) <= TOL
    assert max_rel_err(out_pooled, pooled) <= TOL  # CLIP-L: final-normed EOS state, no projection
    norm = final_norm_of(refs["L"])
    skip = clip.clone()
    skip.set_last_layer(-2)  # SD1: hidden layer -2 through final_layer_norm
    with torch.no_grad():
        assert max_rel_err(skip.encode_from_tokens({"l": [chunk]}), norm(hidden[-2])) <= TOL
        skip.set_last_layer(-1)  # equals the default
        assert max_rel_err(skip.encode_from_tokens({"l": [chunk]}), last) <= TOL
    skip.set_last_layer(-24)  # beyond the 3 layers: default output, as ComfyUI
    assert max_rel_err(skip.encode_from_tokens({"l": [chunk]}), last) <= TOL
    # the original is untouched by the clone's setting
    assert clip.layer_idx is None


def test_sd2_penultimate_through_final_norm(checkpoints, refs):
    """SD2 (ComfyUI's SD2ClipHModel keeps layer_norm_hidden_state=True; diffusers' SD2 text encoder is
    the 23-layer model, whose last_hidden_state is final-normed): final_layer_norm(hidden_states[-2])."""
    clip = _load(checkpoints, "sd2")
    chunk = _chunk(WORDS, 0)
    hidden, last, _, projected = reference_outputs(refs["H"], _ids(chunk))
    norm = final_norm_of(refs["H"])
    cond, pooled = clip.encode_from_tokens({"h": [chunk]}, return_pooled=True)
    with torch.no_grad():
        assert max_rel_err(cond, norm(hidden[-2])) <= TOL
        assert max_rel_err(cond, hidden[-2]) > 0.01  # the un-normed state is a different thing
    assert pooled.shape == (1, 48) and max_rel_err(pooled, projected) <= TOL
    _, unprojected = clip.encode_from_tokens({"h": [chunk]}, return_pooled="unprojected")
    eos = len(WORDS) + 1
    assert unprojected.shape == (1, 64) and max_rel_err(unprojected[0], last[0, eos]) <= TOL
    clip.set_last_layer(-1)  # the last layer through the norm: last_hidden_state
    assert max_rel_err(clip.encode_from_tokens({"h": [chunk]}), last) <= TOL
    clip.set_last_layer(-3)
    with torch.no_grad():
        assert max_rel_err(clip.encode_from_tokens({"h": [chunk]}), norm(hidden[-3])) <= TOL


def test_sdxl_concatenates_l_and_g_and_pools_g(checkpoints, refs):
    clip = _load(checkpoints, "sdxl")
    chunk_l, chunk_g = _chunk(WORDS, EOS), _chunk(WORDS, 0)
    hidden_l, *_ = reference_outputs(refs["L"], _ids(chunk_l))
    hidden_g, _, _, projected_g = reference_outputs(refs["G"], _ids(chunk_g))
    cond, pooled = clip.encode_from_tokens({"l": [chunk_l], "g": [chunk_g]}, return_pooled=True)
    assert cond.shape == (1, 77, 64 + 32)
    assert max_rel_err(cond[..., :64], hidden_l[-2]) <= TOL
    assert max_rel_err(cond[..., 64:], hidden_g[-2]) <= TOL
    assert pooled.shape == (1, 40) and max_rel_err(pooled, projected_g) <= TOL
    # a longer prompt on one side is cut to the shorter side's chunk count
    cond2 = clip.encode_from_tokens({"l": [chunk_l, chunk_l], "g": [chunk_g]})
    assert torch.equal(cond2, cond)
    clip.set_last_layer(-3)  # applies to both towers, no final norm
    cond = clip.encode_from_tokens({"l": [chunk_l], "g": [chunk_g]})
    assert max_rel_err(cond[..., :64], hidden_l[-3]) <= TOL
    assert max_rel_err(cond[..., 64:], hidden_g[-3]) <= TOL


def test_sdxl_refiner_is_bigg_only(checkpoints, refs):
    clip = _load(checkpoints, "sdxl_refiner")
    chunk = _chunk(WORDS, 0)
    hidden, _, _, projected = reference_outputs(refs["G"], _ids(chunk))
    cond, pooled = clip.encode_from_tokens({"g": [chunk]}, return_pooled=True)
    assert max_rel_err(cond, hidden[-2]) <= TOL and max_rel_err(pooled, projected) <= TOL


@pytest.mark.parametrize("arch,key,pad,ref", [("sd1", "l", EOS, "L"), ("sd2", "h", 0, "H")])
def test_weights_follow_the_formula(checkpoints, refs, arch, key, pad, ref):
    clip = _load(checkpoints, arch)
    weights = {1: 1.21, 2: 0.5, 5: 1.5, 9: 1.1}
    chunk = _chunk(WORDS, pad, weights)
    cond = clip.encode_from_tokens({key: [chunk]})
    plain = clip.encode_from_tokens({key: [_chunk(WORDS, pad)]})
    empty = clip.encode_from_tokens({key: [_chunk([], pad)]})
    # the empty prompt used for weighting is [BOS, EOS, pad...]
    assert [t for t, _ in _chunk([], pad)] == empty_tokens(pad)
    w = torch.tensor([weights.get(i, 1.0) for i in range(77)])[None, :, None]
    want = (plain - empty) * w + empty
    assert max_rel_err(cond, want) <= TOL
    # weight-1 tokens are bit-identical to the unweighted encoding
    unchanged = (w == 1.0).squeeze(-1)[0]
    assert torch.equal(cond[0, unchanged], plain[0, unchanged])
    assert not torch.allclose(cond[0, 1], plain[0, 1])


def test_chunks_concatenate_and_pool_from_first(checkpoints, refs):
    clip = _load(checkpoints, "sd2")
    c1, c2 = _chunk(WORDS, 0), _chunk(WORDS2, 0, {2: 1.3})
    cond, pooled = clip.encode_from_tokens({"h": [c1, c2]}, return_pooled=True)
    assert cond.shape == (1, 154, 64)
    assert max_rel_err(cond[:, :77], clip.encode_from_tokens({"h": [c1]})) <= TOL
    assert max_rel_err(cond[:, 77:], clip.encode_from_tokens({"h": [c2]})) <= TOL
    _, first_pooled = clip.encode_from_tokens({"h": [c1]}, return_pooled=True)
    assert max_rel_err(pooled, first_pooled) <= TOL


def test_embedding_vectors_are_input_embeddings(checkpoints, refs):
    clip = _load(checkpoints, "sd1")
    table = clip.encoders["l"].token_embedding_weight
    # a vector equal to token 1125's embedding, put where token 7 was, must act as token 1125
    as_vector = _chunk(WORDS[:3] + [table[1125].clone()] + WORDS[4:], EOS)
    as_ids = _chunk(WORDS[:3] + [1125] + WORDS[4:], EOS)
    other = _chunk(WORDS, EOS)
    got = clip.encode_from_tokens({"l": [as_vector]})
    assert torch.equal(got, clip.encode_from_tokens({"l": [as_ids]}))
    assert not torch.allclose(got, clip.encode_from_tokens({"l": [other]}))
    bad = _chunk([torch.zeros(65)], EOS)
    with pytest.raises(TextEncoderError, match="65 values.*needs 64"):
        clip.encode_from_tokens({"l": [bad]})


def test_pooled_position_is_first_eos(checkpoints, refs):
    """SD1 pads with EOS: the pooled state is the one at the end of the text, not at the last pad."""
    clip = _load(checkpoints, "sd1")
    chunk = _chunk(WORDS, EOS)
    cond, pooled = clip.encode_from_tokens({"l": [chunk]}, return_pooled=True)
    assert torch.equal(pooled[0], cond[0, len(WORDS) + 1])


def test_fp16_storage_default_and_clone_shares_weights(checkpoints, refs):
    clip = clip_from_state_dict(load_file(str(checkpoints["sd1"])), "sd1", device="cpu")
    assert clip.dtype == torch.float16 and clip.compute_dtype == torch.float32
    twin = clip.clone()
    twin.set_last_layer(-2)
    assert twin.encoders["l"] is clip.encoders["l"] and clip.layer_idx is None
    chunk = _chunk(WORDS, EOS)
    cond = clip.encode_from_tokens({"l": [chunk]})
    assert cond.dtype == torch.float32
    _, last, _, _ = reference_outputs(refs["L"], _ids(chunk))
    assert max_rel_err(cond, last) <= 5e-3  # fp16-rounded weights, fp32 compute


def test_state_dict_round_trips_original_keys(checkpoints):
    sd = load_file(str(checkpoints["sdxl"]))
    clip = clip_from_state_dict(sd, "sdxl", dtype=torch.float32, device="cpu")
    out = clip.state_dict()
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


def test_checkpoint_extras_are_ignored_and_errors_name_the_problem(checkpoints):
    sd = load_file(str(checkpoints["sdxl"]))
    sd["conditioner.embedders.1.model.logit_scale"] = torch.tensor(4.6)
    sd["conditioner.embedders.0.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    clip_from_state_dict(sd, "sdxl", dtype=torch.float32, device="cpu")
    with pytest.raises(TextEncoderError, match="unknown architecture 'sd3'"):
        clip_from_state_dict(sd, "sd3")
    with pytest.raises(TextEncoderError, match="no text encoder weights under 'cond_stage_model.transformer.'"):
        clip_from_state_dict(sd, "sd1")
    del sd["conditioner.embedders.1.model.ln_final.bias"]
    with pytest.raises(TextEncoderError, match=r"'g' text encoder.*missing 1 weights.*ln_final.bias"):
        clip_from_state_dict(sd, "sdxl", dtype=torch.float32, device="cpu")
    clip = _load(checkpoints, "sdxl")
    with pytest.raises(TextEncoderError, match="needs tokens for 'g'"):
        clip.encode_from_tokens({"l": [_chunk(WORDS, EOS)]})
    with pytest.raises(TypeError, match="expects an int"):
        clip.set_last_layer("-2")


# --- separate text-encoder files -----------------------------------------------------------------

def test_load_text_encoders_single_and_dual(tmp_path, refs):
    l_sd = hf_layout(refs["L"].state_dict())
    h_hf = hf_layout(refs["H"].state_dict())  # OpenCLIP-H saved in HF layout (with text_projection.weight)
    files = {
        "clip_l.safetensors": with_prefix("clip_l.transformer.", l_sd),  # a prefixed HF file
        "clip_h.safetensors": h_hf,
    }
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / name))
    chunk = _chunk(WORDS, EOS)

    sd1 = load_text_encoders(tmp_path / "clip_l.safetensors", "stable_diffusion", dtype=torch.float32, device="cpu")
    assert sd1.arch == "sd1"
    _, last, _, _ = reference_outputs(refs["L"], _ids(chunk))
    assert max_rel_err(sd1.encode_from_tokens({"l": [chunk]}), last) <= TOL

    sd2 = load_text_encoders([tmp_path / "clip_h.safetensors"], "sd2", dtype=torch.float32, device="cpu")
    hidden, _, _, projected = reference_outputs(refs["H"], _ids(_chunk(WORDS, 0)))
    cond, pooled = sd2.encode_from_tokens({"h": [_chunk(WORDS, 0)]}, return_pooled=True)
    with torch.no_grad():
        assert max_rel_err(cond, final_norm_of(refs["H"])(hidden[-2])) <= TOL
    assert max_rel_err(pooled, projected) <= TOL

    with pytest.raises(TextEncoderError, match="takes 2 file"):
        load_text_encoders([tmp_path / "clip_l.safetensors"], "sdxl")
    with pytest.raises(CheckpointError, match="nope.safetensors.*not found"):
        load_text_encoders([tmp_path / "nope.safetensors"], "sd1")
    with pytest.raises(TextEncoderError, match="unknown text encoder type 'flux'"):
        clip_from_text_encoder_files([l_sd], "flux")
    with pytest.raises(TextEncoderError, match="no CLIP text model found"):
        clip_from_text_encoder_files([{"x.weight": torch.zeros(2)}], "sd1", names=["junk.safetensors"])


def test_dual_loader_assigns_towers_by_size(tmp_path):
    """Full-width-ratio stand-ins: CLIP-L narrower than bigG (as 768 < 1280), files in either order."""
    small = hf_model(dict(TINY_SIZES["G"], hidden_act="quick_gelu", projection_dim=32), False, seed=3)
    big = hf_model(TINY_SIZES["H"], True, seed=4)
    sds = [open_clip_layout(big.state_dict(), 3), hf_layout(small.state_dict())]
    for order in (sds, sds[::-1]):
        clip = clip_from_text_encoder_files(order, "sdxl", dtype=torch.float32, device="cpu")
        assert clip.encoders["l"].config.width == 32 and clip.encoders["g"].config.width == 64
        assert clip.encoders["l"].config.activation == "quick_gelu"
        assert clip.encoders["g"].config.activation == "gelu"
        chunk_l, chunk_g = _chunk(WORDS, EOS), _chunk(WORDS, 0)
        hidden_l, *_ = reference_outputs(small, _ids(chunk_l))
        hidden_g, _, _, projected = reference_outputs(big, _ids(chunk_g))
        cond, pooled = clip.encode_from_tokens({"l": [chunk_l], "g": [chunk_g]}, return_pooled=True)
        assert max_rel_err(cond[..., :32], hidden_l[-2]) <= TOL
        assert max_rel_err(cond[..., 32:], hidden_g[-2]) <= TOL
        assert max_rel_err(pooled, projected) <= TOL


# --- with the real tokenizer and embedding files ---------------------------------------------------

def test_tokenize_pads_per_tower_and_encodes(checkpoints):
    xl = _load(checkpoints, "sdxl")
    tokens = xl.tokenize("a photo of a (cat:1.5)")
    assert sorted(tokens) == ["g", "l"]
    ids_l = [t for t, _ in tokens["l"][0]]
    ids_g = [t for t, _ in tokens["g"][0]]
    n = ids_l.index(EOS)
    assert ids_l[:n] == ids_g[:n] and ids_l[0] == BOS
    assert set(ids_l[n:]) == {EOS}  # CLIP-L pads with EOS
    assert ids_g[n] == EOS and set(ids_g[n + 1:]) == {0}  # bigG pads with 0
    assert [w for _, w in tokens["g"][0]][n - 1] == 1.5
    cond, pooled = xl.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 77, 96) and pooled.shape == (1, 40)
    assert list(_load(checkpoints, "sd2").tokenize("x")) == ["h"]
    long = xl.tokenize(" ".join(["word"] * 100))
    assert len(long["l"]) == 2 and xl.encode_from_tokens(long).shape == (1, 154, 96)


def test_textual_inversion_from_embedding_folder(checkpoints, tmp_path):
    clip = clip_from_state_dict(load_file(str(checkpoints["sdxl"])), "sdxl", [tmp_path],
                                dtype=torch.float32, device="cpu")
    table_l = clip.encoders["l"].token_embedding_weight
    table_g = clip.encoders["g"].token_embedding_weight
    cat = clip.tokenize("cat")["l"][0][1][0]
    # an SDXL embedding whose single vector per tower equals the word "cat"'s embedding
    save_file({"clip_l": table_l[cat][None].clone(), "clip_g": table_g[cat][None].clone()},
              str(tmp_path / "fakecat.safetensors"))
    via_embedding = clip.tokenize("a embedding:fakecat")
    assert isinstance(via_embedding["l"][0][2][0], torch.Tensor)
    assert via_embedding["g"][0][2][0].shape[-1] == 32
    assert torch.equal(clip.encode_from_tokens(via_embedding), clip.encode_from_tokens(clip.tokenize("a cat")))


def test_patches_apply_to_a_clone_only(checkpoints):
    clip = _load(checkpoints, "sd1")
    chunk = {"l": [_chunk(WORDS, EOS)]}
    base = clip.encode_from_tokens(chunk)
    key = "clip_l.transformer.text_model.final_layer_norm.bias"
    bias = clip.encoders["l"].text_model.final_layer_norm.bias
    ptr = bias.data_ptr()
    shift = torch.linspace(-1, 1, 64)
    patched = clip.clone()
    assert patched.add_patches({key: shift, "lora_unet_foo": torch.zeros(1)}, strength_patch=0.5) == [key]
    # SD1's default output ends in final_layer_norm: a bias difference shifts every token by it
    assert torch.allclose(patched.encode_from_tokens(chunk), base + 0.5 * shift, atol=1e-6)
    assert torch.equal(clip.encode_from_tokens(chunk), base)  # the original restores its base weights
    assert clip.encoders["l"].text_model.final_layer_norm.bias.data_ptr() == ptr


def test_checkpoint_module_loads_text_encoder_files(tmp_path, refs):
    from diffusion.loading import checkpoint

    path = tmp_path / "clip_l.safetensors"
    save_file({k: v.contiguous() for k, v in hf_layout(refs["L"].state_dict()).items()}, str(path))
    clip = checkpoint.load_text_encoders([path], "stable_diffusion")
    assert clip.arch == "sd1" and clip.dtype == torch.float16
    assert clip.encode_from_tokens({"l": [_chunk(WORDS, EOS)]}).shape == (1, 77, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_matches_cpu(checkpoints):
    cpu = clip_from_state_dict(load_file(str(checkpoints["sdxl"])), "sdxl", device="cpu")
    gpu = clip_from_state_dict(load_file(str(checkpoints["sdxl"])), "sdxl", device="cuda")
    assert gpu.compute_dtype == torch.float16
    tokens = {"l": [_chunk(WORDS, EOS, {3: 1.2})], "g": [_chunk(WORDS, 0, {3: 1.2})]}
    cond_cpu, pooled_cpu = cpu.encode_from_tokens(tokens, return_pooled=True)
    cond_gpu, pooled_gpu = gpu.encode_from_tokens(tokens, return_pooled=True)
    assert cond_gpu.device.type == "cpu" and cond_gpu.dtype == torch.float32
    assert max_rel_err(cond_gpu, cond_cpu) <= 1e-2 and max_rel_err(pooled_gpu, pooled_cpu) <= 1e-2


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_random_weights_load_as_checkpoints(arch):
    from diffusion.text.encoder import TOWERS
    from tests.clip_reference import random_text_encoder_weights

    sd = random_text_encoder_weights(arch, widths={"l": 32, "g": 64}, layers=2, seed=5)
    assert all(k.startswith(tuple(s.prefix for s in TOWERS[arch])) for k in sd)
    assert torch.equal(sd[next(iter(sd))], random_text_encoder_weights(arch, widths={"l": 32, "g": 64},
                                                                       layers=2, seed=5)[next(iter(sd))])
    clip = clip_from_state_dict(sd, arch, dtype=torch.float32, device="cpu")
    assert set(clip.state_dict()) == set(sd)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red fox"), return_pooled=True)
    width = {"sd1": 32, "sd2": 32, "sdxl": 96, "sdxl_refiner": 64}[arch]
    assert cond.shape == (1, 77, width) and torch.isfinite(cond).all() and torch.isfinite(pooled).all()


def test_comfyui_method_names_for_plugins(checkpoints):
    clip = _load(checkpoints, "sd2")
    tokens = {"h": [_chunk(WORDS, 0, {2: 1.3})]}
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    [[c, extra]] = clip.encode_from_tokens_scheduled(tokens, add_dict={"strength": 0.5})
    assert torch.equal(c, cond) and torch.equal(extra["pooled_output"], pooled) and extra["strength"] == 0.5
    skip = clip.clone()
    skip.clip_layer(-1)
    assert skip.layer_idx == -1 and clip.layer_idx is None
    assert clip.get_sd().keys() == clip.state_dict().keys()
    assert clip.load_model() is clip.patcher and clip.get_key_patches() == {}


def test_hf_weights_without_text_model_level(tmp_path, refs):
    """Old SD1 conversions (and transformers 5's CLIPTextModel) lack the `text_model.` level."""
    raw = {k: v for k, v in refs["L"].state_dict().items() if not k.startswith("text_model.")}
    assert "embeddings.token_embedding.weight" in raw  # the reference really is level-less
    raw["embeddings.position_ids"] = torch.arange(77)[None]
    chunk = _chunk(WORDS, EOS)
    _, last, _, _ = reference_outputs(refs["L"], _ids(chunk))
    clip = clip_from_state_dict(with_prefix("cond_stage_model.transformer.", raw), "sd1",
                                dtype=torch.float32, device="cpu")
    assert max_rel_err(clip.encode_from_tokens({"l": [chunk]}), last) <= TOL
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in clip.state_dict()
    single = clip_from_text_encoder_files([raw], "stable_diffusion", dtype=torch.float32, device="cpu")
    assert max_rel_err(single.encode_from_tokens({"l": [chunk]}), last) <= TOL
