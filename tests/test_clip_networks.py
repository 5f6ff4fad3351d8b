"""diffusion/clip.py against transformers' CLIP text models (same random weights, same token ids)."""
import copy

import pytest
import torch

from diffusion.loading.config import ClipConfigError, ClipTextConfig, heads_for_width
from diffusion.models.clip import ClipTextModel
from tools.make_tiny_checkpoint import randomise_clip
from diffusion.loading.text_encoders import text_model_from_state_dict
from diffusion.text.encoder import TOWERS, TextEncoderError
from tests.clip_reference import (
    FULL_SIZES, TINY_SIZES, final_norm_of, hf_layout, hf_model, hf_model_on_meta, max_rel_err, open_clip_layout,
    reference_outputs, with_prefix,
)

TOL = 1e-4  # max relative error in float32

# (reference sizes, file layout, reference has a text projection)
CASES = {
    "clip_l_hf": ("L", "hf", False),
    "clip_l_hf_projected": ("L", "hf", True),
    "openclip_h": ("H", "open_clip", True),
    "openclip_bigg": ("G", "open_clip", True),
}


def _token_ids(batch=3, seed=1):
    """BOS, random words, EOS, then EOS padding (row 0) or 0 padding (other rows); varying lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, 77, dtype=torch.long)
    for b in range(batch):
        n = 5 + 20 * b
        ids[b, 0] = 49406
        ids[b, 1:n + 1] = torch.randint(0, 49406, (n,), generator=g)
        ids[b, n + 1:] = 49407 if b == 0 else 0
        ids[b, n + 1] = 49407
    return ids


def _ours(case, dtype=torch.float32):
    sizes, layout, projection = CASES[case]
    ref = hf_model(TINY_SIZES[sizes], projection)
    state = ref.state_dict()
    sd = hf_layout(state) if layout == "hf" else open_clip_layout(state, ref.config.num_hidden_layers)
    model = text_model_from_state_dict(sd, TINY_SIZES[sizes]["hidden_act"], dtype=dtype, device="cpu")
    return ref, model


@pytest.mark.parametrize("case", sorted(CASES))
def test_detected_config(case):
    sizes, layout, projection = CASES[case]
    ref, model = _ours(case)
    cfg = model.config
    s = TINY_SIZES[sizes]
    assert (cfg.layout, cfg.width, cfg.layers, cfg.heads) == (layout, s["hidden_size"], s["num_hidden_layers"],
                                                                s["num_attention_heads"])
    assert (cfg.vocab_size, cfg.context_length) == (49408, 77)
    assert cfg.projection_dim == (s["projection_dim"] if projection else None)
    assert cfg.mlp_width == s["intermediate_size"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_transformers(case):
    ref, model = _ours(case)
    ids = _token_ids()
    hidden_states, last, pooled, projected = reference_outputs(ref, ids)
    eos = (ids == 49407).int().argmax(-1)
    layers = model.config.layers
    with torch.no_grad():
        embeds = model.embed_tokens(ids, torch.float32)
        for n in range(-layers, layers):
            out = model(embeds, eos, hidden_layer=n)
            # our layer n (Python indexing over layers) is transformers' hidden_states[n] for n < 0,
            # hidden_states[n + 1] for n >= 0 (entry 0 holds the embeddings)
            want = hidden_states[n if n < 0 else n + 1]
            assert max_rel_err(out.hidden, want) <= TOL, n
    assert max_rel_err(out.last_hidden, last) <= TOL
    assert max_rel_err(out.pooled, pooled) <= TOL
    assert max_rel_err(out.projected, projected) <= TOL
    # the clip-skip state of SD1: penultimate layer through the final norm
    normed = final_norm_of(ref)(hidden_states[-2]).detach()
    out = model(embeds, eos, hidden_layer=-2)
    assert max_rel_err(model.final_norm(out.hidden).detach(), normed) <= TOL


def test_fp16_storage_computes_in_fp32():
    """Weights stored in fp16 give the fp32 result of the fp16-rounded weights (ComfyUI on CPU)."""
    ref, model = _ours("openclip_h", dtype=torch.float16)
    ref = copy.deepcopy(ref)
    assert model.token_embedding_weight.dtype == torch.float16
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    ids = _token_ids()
    eos = (ids == 49407).int().argmax(-1)
    with torch.no_grad():
        out = model(model.embed_tokens(ids, torch.float32), eos, hidden_layer=-2)
    hidden_states, last, _, projected = reference_outputs(ref, ids)
    assert out.last_hidden.dtype == torch.float32
    assert max_rel_err(out.hidden, hidden_states[-2]) <= TOL
    assert max_rel_err(out.projected, projected) <= TOL


def test_heads_rule_and_errors():
    assert [heads_for_width(w) for w in (768, 1024, 1280, 64, 32)] == [12, 16, 20, 4, 2]
    with pytest.raises(ClipConfigError, match="multiple of 16"):
        heads_for_width(40)
    ref, model = _ours("clip_l_hf")
    sd = hf_layout(ref.state_dict())
    del sd["text_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(TextEncoderError, match="missing 1 weights.*layers.1.mlp.fc2.weight"):
        text_model_from_state_dict(sd, "quick_gelu", where="my.safetensors")
    sd = hf_layout(ref.state_dict())
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"], sd["text_model.encoder.layers.1.mlp.fc2.weight"]
    sd = {k: v for k, v in sd.items() if ".layers.1." not in k}
    with pytest.raises(TextEncoderError, match=r"missing layers \[1\]"):
        text_model_from_state_dict(sd, "quick_gelu")
    with pytest.raises(TextEncoderError, match="not a CLIP text model"):
        text_model_from_state_dict({"foo.weight": torch.zeros(1)}, "gelu")
    sd = hf_layout(ref.state_dict())
    sd["text_model.final_layer_norm.weight"] = torch.zeros(65)
    with pytest.raises(TextEncoderError, match=r"final_layer_norm.weight has shape \(65,\)"):
        text_model_from_state_dict(sd, "quick_gelu")
    with torch.no_grad(), pytest.raises(ValueError, match="token id out of range"):
        model.embed_tokens(torch.tensor([[49408]]), torch.float32)


def test_init_weights_gives_finite_outputs():
    cfg = ClipTextConfig("open_clip", width=32, layers=2, heads=2, vocab_size=49408, context_length=77,
                         projection_dim=16, activation="gelu")
    torch.manual_seed(0)
    model = randomise_clip(ClipTextModel(cfg))
    ids = _token_ids(batch=1)
    with torch.no_grad():
        out = model(model.embed_tokens(ids, torch.float32), torch.tensor([6]))
    assert torch.isfinite(out.last_hidden).all() and out.projected.shape == (1, 16)
    assert torch.equal(model.text_model.final_layer_norm.weight, torch.ones(32))


# --- key sets at full size: our modules carry exactly the keys and shapes of released checkpoints ---

def _expected_table(arch):
    """{key: shape} of the text-encoder part of a released checkpoint, from transformers' full-size
    models on the meta device converted by the test mapping."""
    def hf(name, projection=False):
        return hf_layout(hf_model_on_meta(FULL_SIZES[name], projection).state_dict())

    def oc(name):
        m = hf_model_on_meta(FULL_SIZES[name], True)
        return open_clip_layout(m.state_dict(), FULL_SIZES[name]["num_hidden_layers"])

    parts = {"sd1": [hf("L")], "sd2": [oc("H")], "sdxl": [hf("L"), oc("G")], "sdxl_refiner": [oc("G")]}[arch]
    table = {}
    for spec, part in zip(TOWERS[arch], parts):
        table.update({k: tuple(v.shape) for k, v in with_prefix(spec.prefix, part).items()})
    return table


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl", "sdxl_refiner"])
def test_full_size_key_sets(arch):
    expected = _expected_table(arch)
    ours = {}
    for spec in TOWERS[arch]:
        sub = {k[len(spec.prefix):]: v for k, v in expected.items() if k.startswith(spec.prefix)}
        meta = {k: torch.empty(shape, device="meta") for k, shape in sub.items()}
        cfg = ClipTextConfig.from_state_dict(meta, spec.activation)
        with torch.device("meta"):
            model = ClipTextModel(cfg)
        ours.update({spec.prefix + k: tuple(v.shape) for k, v in model.state_dict().items()})
        size = {"l": "L", "h": "H", "g": "G"}[spec.key]
        want = FULL_SIZES[size]
        assert (cfg.width, cfg.layers, cfg.heads, cfg.activation) == (
            want["hidden_size"], want["num_hidden_layers"], want["num_attention_heads"], want["hidden_act"])
    assert ours == expected
