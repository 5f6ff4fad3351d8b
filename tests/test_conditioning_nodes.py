"""The conditioning nodes: values they produce, and their /object_info against COMPAT §9."""
import pytest
import torch

from nodes import load_registry
from nodes.conditioning_nodes import (ConditioningAverage, ConditioningCombine, ConditioningConcat,
                                      ConditioningSetArea, ConditioningSetAreaPercentage,
                                      ConditioningSetAreaStrength, ConditioningSetMask,
                                      ConditioningSetTimestepRange, ConditioningZeroOut)

R = 16384
C = "CONDITIONING"
# Transcribed from COMPAT §9: (category, [(name, type, default, min, max, step)], outputs, display name)
EXPECTED = {
    "ConditioningAverage": ("conditioning", [("conditioning_to", C), ("conditioning_from", C),
                                             ("conditioning_to_strength", "FLOAT", 1.0, 0.0, 1.0, 0.01)],
                            [C], "ConditioningAverage"),
    "ConditioningCombine": ("conditioning", [("conditioning_1", C), ("conditioning_2", C)], [C],
                            "Conditioning (Combine)"),
    "ConditioningConcat": ("conditioning", [("conditioning_to", C), ("conditioning_from", C)], [C],
                           "Conditioning (Concat)"),
    "ConditioningSetArea": ("conditioning", [("conditioning", C), ("width", "INT", 64, 64, R, 8),
                                             ("height", "INT", 64, 64, R, 8), ("x", "INT", 0, 0, R, 8),
                                             ("y", "INT", 0, 0, R, 8), ("strength", "FLOAT", 1.0, 0.0, 10.0, 0.01)],
                            [C], "Conditioning (Set Area)"),
    "ConditioningSetAreaPercentage": ("conditioning", [
        ("conditioning", C), ("width", "FLOAT", 1.0, 0, 1.0, 0.01), ("height", "FLOAT", 1.0, 0, 1.0, 0.01),
        ("x", "FLOAT", 0, 0, 1.0, 0.01), ("y", "FLOAT", 0, 0, 1.0, 0.01),
        ("strength", "FLOAT", 1.0, 0.0, 10.0, 0.01)], [C], "Conditioning (Set Area with Percentage)"),
    "ConditioningSetAreaStrength": ("conditioning", [("conditioning", C),
                                                     ("strength", "FLOAT", 1.0, 0.0, 10.0, 0.01)], [C],
                                    "ConditioningSetAreaStrength"),
    "ConditioningSetMask": ("conditioning", [("conditioning", C), ("mask", "MASK"),
                                             ("strength", "FLOAT", 1.0, 0.0, 10.0, 0.01),
                                             ("set_cond_area", ["default", "mask bounds"])],
                            [C], "Conditioning (Set Mask)"),
    "InpaintModelConditioning": ("conditioning/inpaint", [
        ("positive", C), ("negative", C), ("vae", "VAE"), ("pixels", "IMAGE"), ("mask", "MASK"),
        ("noise_mask", "BOOLEAN", True)], [C, C, "LATENT"], "InpaintModelConditioning"),
    "ConditioningZeroOut": ("advanced/conditioning", [("conditioning", C)], [C], "ConditioningZeroOut"),
    "ConditioningSetTimestepRange": ("advanced/conditioning", [
        ("conditioning", C), ("start", "FLOAT", 0.0, 0.0, 1.0, 0.001), ("end", "FLOAT", 1.0, 0.0, 1.0, 0.001)],
        [C], "ConditioningSetTimestepRange"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_compat(name):
    info = load_registry().object_info_for(name)
    category, inputs, outputs, display = EXPECTED[name]
    assert info["category"] == category and info["python_module"] == "nodes"
    assert info["display_name"] == display and info["output"] == outputs
    assert info["input_order"] == {"required": [i[0] for i in inputs]}
    for spec in inputs:
        name_, type_, *bounds = spec
        got = info["input"]["required"][name_]
        assert got[0] == type_
        opts = got[1] if len(got) > 1 else {}
        for key, value in zip(("default", "min", "max", "step"), bounds):
            assert opts[key] == value and type(opts[key]) is type(value), (name_, key)
    if name == "InpaintModelConditioning":
        assert info["output_name"] == ["positive", "negative", "latent"]


def _c(value, tokens=77, dim=8, pooled=None, **options):
    if pooled is not None:
        options["pooled_output"] = torch.full((1, 4), float(pooled))
    return [[torch.full((1, tokens, dim), float(value)), options]]


def test_combine_is_list_concatenation():
    a, b = _c(1.0), _c(2.0) + _c(3.0)
    (out,) = ConditioningCombine().execute(a, b)
    assert [float(t.mean()) for t, _ in out] == [1.0, 2.0, 3.0]


def test_average_blends_embeddings_and_pooled_and_pads_or_cuts_tokens():
    to = _c(1.0, tokens=154, pooled=1.0, area=(8, 8, 0, 0))
    frm = _c(3.0, tokens=77, pooled=5.0)
    (out,) = ConditioningAverage().execute(to, frm, 0.25)
    t, options = out[0]
    assert t.shape == (1, 154, 8)
    assert torch.allclose(t[:, :77], torch.full((1, 77, 8), 1.0 * 0.25 + 3.0 * 0.75))
    assert torch.allclose(t[:, 77:], torch.full((1, 77, 8), 1.0 * 0.25))  # 'from' zero-padded
    assert torch.allclose(options["pooled_output"], torch.full((1, 4), 0.25 + 5.0 * 0.75))
    assert options["area"] == (8, 8, 0, 0) and "area" not in frm[0][1]
    (cut,) = ConditioningAverage().execute(_c(1.0, tokens=77), _c(3.0, tokens=154, pooled=5.0), 0.5)
    assert cut[0][0].shape == (1, 77, 8) and torch.allclose(cut[0][1]["pooled_output"], torch.full((1, 4), 5.0))


def test_concat_appends_tokens_of_the_first_from():
    (out,) = ConditioningConcat().execute(_c(1.0) + _c(2.0), _c(5.0, tokens=10) + _c(9.0))
    assert [t.shape[1] for t, _ in out] == [87, 87]
    assert float(out[1][0][0, 80, 0]) == 5.0
    with pytest.raises(ValueError, match="ConditioningConcat: embedding widths differ"):
        ConditioningConcat().execute(_c(1.0), _c(2.0, dim=16))
    with pytest.raises(ValueError, match="conditioning_from is an empty CONDITIONING list"):
        ConditioningAverage().execute(_c(1.0), [], 0.5)


def test_area_nodes_store_latent_units_and_keep_the_input():
    src = _c(1.0)
    (out,) = ConditioningSetArea().execute(src, width=200, height=96, x=64, y=16, strength=0.5)
    assert out[0][1] == {"area": (12, 25, 2, 8), "strength": 0.5, "set_area_to_bounds": False}
    assert src[0][1] == {} and out[0][0] is src[0][0]
    (pct,) = ConditioningSetAreaPercentage().execute(src, width=0.5, height=0.25, x=0.1, y=0.2, strength=2.0)
    assert pct[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    (st,) = ConditioningSetAreaStrength().execute(src, 3.0)
    assert st[0][1] == {"strength": 3.0}
    (rng,) = ConditioningSetTimestepRange().execute(src, 0.2, 0.7)
    assert rng[0][1] == {"start_percent": 0.2, "end_percent": 0.7}


def test_set_mask_options():
    mask = torch.ones(16, 16)
    (out,) = ConditioningSetMask().execute(_c(1.0), mask, 0.7, "mask bounds")
    options = out[0][1]
    assert options["mask"].shape == (1, 16, 16) and options["set_area_to_bounds"] is True
    assert options["mask_strength"] == 0.7 and "strength" not in options
    (default,) = ConditioningSetMask().execute(_c(1.0), mask[None], 1.0, "default")
    assert default[0][1]["set_area_to_bounds"] is False


def test_zero_out_zeroes_embeddings_and_pooled():
    (out,) = ConditioningZeroOut().execute(_c(1.0, pooled=2.0, width=512))
    t, options = out[0]
    assert torch.equal(t, torch.zeros(1, 77, 8)) and torch.equal(options["pooled_output"], torch.zeros(1, 4))
    assert options["width"] == 512
