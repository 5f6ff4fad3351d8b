"""One CLIP text network, two file layouts: the key map in, the key map out, and patches through it.

The same transformers weights are written in both layouts by tests/clip_reference.py (a mapping
written independently of diffusion/loading/keymaps.py).
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusion.loading.text_encoders import clip_from_state_dict, text_model_from_state_dict
from tests.clip_reference import TINY_SIZES, hf_layout, hf_model, max_rel_err, open_clip_layout, with_prefix

LAYERS = TINY_SIZES["G"]["num_hidden_layers"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """layout -> the bigG-shaped reference's text weights in that layout, read back from .safetensors."""
    state = hf_model(TINY_SIZES["G"], True, seed=3).state_dict()
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout, sd in (("hf", hf_layout(state)), ("open_clip", open_clip_layout(state, LAYERS))):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(root / f"{layout}.safetensors"))
        out[layout] = load_file(str(root / f"{layout}.safetensors"))
    return out


def _run(model, ids, layer=-2):
    eos = (ids == 49407).int().argmax(-1)
    with torch.no_grad():
        return model(model.embed_tokens(ids, torch.float32), eos, hidden_layer=layer)


def _ids():
    ids = torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[0, 9:], ids[1, 30:] = 49406, 0, 0
    ids[0, 8], ids[1, 29] = 49407, 49407
    return ids


def test_both_layouts_load_onto_the_same_network(files):
    hf = text_model_from_state_dict(files["hf"], "gelu", dtype=torch.float32)
    oc = text_model_from_state_dict(files["open_clip"], "gelu", dtype=torch.float32)
    assert (hf.config.layout, oc.config.layout) == ("hf", "open_clip")
    names = dict(hf.named_parameters())
    assert names.keys() == dict(oc.named_parameters()).keys()
    assert all(torch.equal(names[k], p) for k, p in oc.named_parameters())
    ids = _ids()
    # open_clip towers compute q, k, v as one matmul (as that layout does): on the same op path the
    # transformer's outputs are bit-identical, on each layout's own path they agree to float32 rounding.
    # The projection multiplies the same numbers stored transposed (a Linear's [proj, width] vs open_clip's
    # [width, proj]), which may round differently too.
    default = _run(hf, ids)
    for layer in hf.text_model.encoder.layers:
        layer.self_attn.fused_qkv = True
    fused, theirs = _run(hf, ids), _run(oc, ids)
    for name in ("last_hidden", "hidden", "pooled"):
        assert torch.equal(getattr(fused, name), getattr(theirs, name)), name
    for ours, want in zip(theirs, default):
        assert max_rel_err(ours, want) <= 1e-6


@pytest.mark.parametrize("layout", ["hf", "open_clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_state_dict_round_trips_the_file_layout(files, layout, dtype):
    sd = {k: v.to(dtype) for k, v in files[layout].items()}
    model = text_model_from_state_dict(sd, "gelu", dtype=dtype)
    out = model.state_dict()
    assert set(out) == set(sd) and all(torch.equal(out[k], sd[k]) and out[k].dtype == dtype for k in sd)
    # loading copies nothing: network weights are views of the file's tensors, and so is the saved dict
    file_ptrs = {v.untyped_storage().data_ptr() for v in sd.values()}
    assert {p.untyped_storage().data_ptr() for p in model.parameters()} <= file_ptrs
    assert all(out[k].data_ptr() == sd[k].data_ptr() for k in sd)
    # and a model loaded from its own state dict saves the same again, in the same key order
    again = text_model_from_state_dict(out, "gelu", dtype=dtype).state_dict()
    assert list(again) == list(out) and all(torch.equal(again[k], out[k]) for k in out)


def test_open_clip_state_dict_keeps_open_clips_key_order(files):
    model = text_model_from_state_dict(files["open_clip"], "gelu", dtype=torch.float32)
    keys = list(model.state_dict())
    assert keys[:3] == ["positional_embedding", "text_projection", "token_embedding.weight"]
    assert keys[3:9] == [f"transformer.resblocks.0.{k}" for k in (
        "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
        "attn.out_proj.bias")]
    assert keys[-2:] == ["ln_final.weight", "ln_final.bias"]


def _sdxl_refiner_clip(files):
    sd = with_prefix("conditioner.embedders.0.model.", files["open_clip"])
    return clip_from_state_dict(sd, "sdxl_refiner", dtype=torch.float32, device="cpu"), sd


def _weights(clip, layer):
    attn = clip.encoders["g"].text_model.encoder.layers[layer].self_attn
    return {p: getattr(attn, f"{p}_proj").weight.detach().clone() for p in "qkv"}


def test_lora_on_a_stacked_in_proj_lands_on_its_q_rows(files):
    clip, sd = _sdxl_refiner_clip(files)
    width = clip.encoders["g"].config.width
    g = torch.Generator().manual_seed(1)
    up_q, down = torch.randn(width, 4, generator=g), torch.randn(4, width, generator=g)
    up = torch.cat([up_q, torch.zeros(2 * width, 4)])  # a LoRA on q only, in in_proj's rows
    key = "clip_g.transformer.transformer.resblocks.1.attn.in_proj_weight"
    tokens = clip.tokenize("a (red:1.2) fox")
    base = _weights(clip, 1)

    patched = clip.clone()
    assert patched.add_patches({key: ("lora", (up, down, 2.0, None))}, strength_patch=0.5) == [key]
    cond, pooled = patched.encode_from_tokens(tokens, return_pooled=True)  # loads with the patch applied
    now = _weights(patched, 1)
    want_q = (base["q"] + 0.5 * (up_q @ down) * (2.0 / 4)).to(base["q"].dtype)
    assert torch.equal(now["q"], want_q)
    assert torch.equal(now["k"], base["k"]) and torch.equal(now["v"], base["v"])

    # the same change written into a file gives the same conditioning, bit for bit
    edited = dict(sd)
    in_proj = "conditioner.embedders.0.model.transformer.resblocks.1.attn.in_proj_weight"
    edited[in_proj] = torch.cat([want_q, sd[in_proj][width:]])
    ref = clip_from_state_dict(edited, "sdxl_refiner", dtype=torch.float32, device="cpu")
    ref_cond, ref_pooled = ref.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(cond, ref_cond) and torch.equal(pooled, ref_pooled)

    # ComfyUI's name for the same weight (transformers' names) is the network's own
    by_name = clip.clone()
    q_key = "clip_g.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"
    assert by_name.add_patches({q_key: ("lora", (up_q, down, 2.0, None))}, strength_patch=0.5) == [q_key]
    assert torch.equal(by_name.encode_from_tokens(tokens), cond)
    # the original, loaded again, has its base weights back
    assert not torch.equal(clip.encode_from_tokens(tokens), cond)
    assert all(torch.equal(w, base[p]) for p, w in _weights(clip, 1).items())


def test_patches_on_open_clip_file_keys_map_through_the_key_map(files):
    clip, sd = _sdxl_refiner_clip(files)
    stack = clip.patcher.model
    width = clip.encoders["g"].config.width
    diff = torch.randn(3 * width, width)
    parts = stack.patch_targets("clip_g.transformer.transformer.resblocks.0.attn.in_proj_weight", diff)
    assert [name.rsplit(".", 3)[-2] for name, _ in parts] == ["q_proj", "k_proj", "v_proj"]
    assert all(torch.equal(value, diff[i * width:(i + 1) * width]) for i, (_, (kind, value)) in enumerate(parts))
    proj = torch.randn(width, clip.encoders["g"].config.projection_dim)
    [(name, (kind, value))] = stack.patch_targets("clip_g.transformer.text_projection", proj)
    assert name == "clip_g.transformer.text_projection.weight" and kind == "diff" and torch.equal(value, proj.t())
    up, down = torch.randn(width, 2), torch.randn(2, proj.shape[1])
    [(_, (kind, (t_up, t_down, alpha, mid)))] = stack.patch_targets(
        "clip_g.transformer.text_projection", ("lora", (up, down, None, None)))
    assert torch.equal(t_up @ t_down, (up @ down).t()) and t_down.shape[0] == 2
    assert stack.patch_targets("clip_g.transformer.ln_final.bias", "v") == [
        ("clip_g.transformer.text_model.final_layer_norm.bias", "v")]
    assert stack.patch_targets("clip_g.transformer.nothing.weight", diff) == []
    with pytest.raises(ValueError, match="in_proj_weight: unsupported value"):
        stack.patch_targets("clip_g.transformer.transformer.resblocks.0.attn.in_proj_weight", 3.0)
