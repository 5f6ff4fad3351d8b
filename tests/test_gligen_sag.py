"""GLIGEN (zero gates change nothing, boxes reach the fusers, the SD1.4 file layout on the meta device,
the text-box node) and Self-Attention Guidance (runs; scale 0 is the unpatched result bit for bit)."""
from __future__ import annotations

import pytest
import torch

from diffusion import memory
from diffusion.models import gligen
from diffusion.sampling.guidance import CFGDenoiser
from gligen_tiny import tiny_gligen_state_dict
from unet_tiny import tiny_patcher


@pytest.fixture(autouse=True)
def _fresh_memory():
    memory.unload_all_models()
    yield
    memory.unload_all_models()


def _conds(g, dim=16, **options):
    return ([[torch.randn(1, 77, dim, generator=g), dict(options)]],
            [[torch.randn(1, 77, dim, generator=g), {}]])


def _denoise(model, positive, negative, x, sigma, cfg=5.0):
    return CFGDenoiser(model, positive, negative, cfg)(x, sigma)


def test_fourier_embedding_formula():
    boxes = torch.rand(2, 3, 4)
    emb = gligen.fourier_embedding(boxes)
    assert emb.shape == (2, 3, 64)
    f = 100 ** (torch.arange(8) / 8)
    torch.testing.assert_close(emb[..., 8:12], torch.sin(f[1] * boxes))
    torch.testing.assert_close(emb[..., 12:16], torch.cos(f[1] * boxes))


def test_zero_gates_equal_no_gligen_and_open_gates_change_the_prediction():
    model = tiny_patcher()
    g = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([2.0])
    phrase = torch.randn(1, 24, generator=g)
    boxes = [(phrase, 4, 4, 0, 2)]
    closed = gligen.load_gligen(tiny_gligen_state_dict(model.model, 24, gate=0.0))
    opened = gligen.load_gligen(tiny_gligen_state_dict(model.model, 24, gate=0.7))
    assert len(closed.order) == 4  # one fuser per spatial transformer of the tiny UNet
    pos, neg = _conds(torch.Generator().manual_seed(1))
    closed_pos = [[pos[0][0], {"gligen": ("position", closed, boxes)}]]
    # one conditioning, one forward each: bit for bit
    assert torch.equal(_denoise(model, closed_pos, None, x, sigma, cfg=1.0), _denoise(model, pos, None, x, sigma, 1.0))
    # with CFG the GLIGEN prompt runs in its own forward (other patches than the negative's), which
    # changes only float rounding against the batched plain run
    plain = _denoise(model, pos, neg, x, sigma)
    torch.testing.assert_close(_denoise(model, closed_pos, neg, x, sigma), plain, rtol=1e-4, atol=1e-4)
    with_open = _denoise(model, [[pos[0][0], {"gligen": ("position", opened, boxes)}]], neg, x, sigma)
    assert not torch.allclose(with_open, plain, atol=1e-3)


def test_fuser_math_and_box_coordinates():
    model = tiny_patcher()
    net = gligen.load_gligen(tiny_gligen_state_dict(model.model, 24, gate=0.5))
    phrase = torch.randn(1, 24)
    objs = net.objects((2, 4, 8, 16), [(phrase, 2, 4, 1, 8)], "cpu")
    assert objs.shape == (2, 30, 24)
    pn = net.position_net
    box = torch.tensor([8 / 16, 1 / 8, 12 / 16, 3 / 8])
    first = pn.linears(torch.cat([phrase[0], gligen.fourier_embedding(box)]))
    null = pn.linears(torch.cat([pn.null_positive_feature, pn.null_position_feature]))
    torch.testing.assert_close(objs[0, 0], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(objs[1, 5], null, rtol=1e-5, atol=1e-6)
    fuser = net.fusers[net.order[0]]
    xv = torch.randn(2, 64, 32)
    o = fuser.linear(objs)
    a = fuser.attn(fuser.norm1(torch.cat([xv, o], 1)))[:, :64]
    mid = xv + torch.tanh(torch.tensor(0.5)) * a
    expected = mid + torch.tanh(torch.tensor(0.5)) * fuser.ff(fuser.norm2(mid))
    torch.testing.assert_close(net.fuse(xv, objs, 0), expected)
    with pytest.raises(ValueError, match="at most 30 boxes"):
        net.objects((1, 4, 8, 8), [(phrase, 1, 1, 0, 0)] * 31, "cpu")
    with pytest.raises(ValueError, match="width 7 does not match"):
        net.objects((1, 4, 8, 8), [(torch.zeros(1, 7), 1, 1, 0, 0)], "cpu")


def _sd14_layout() -> dict:
    """The public gligen_sd14_textbox_pruned keys and shapes (fusers in every SD1 transformer block)."""
    where = ([(f"input_blocks.{i}.1", c) for i, c in ((1, 320), (2, 320), (4, 640), (5, 640), (7, 1280),
                                                      (8, 1280))]
             + [("middle_block.1", 1280)]
             + [(f"output_blocks.{i}.1", c) for i, c in zip(range(3, 12), [1280] * 3 + [640] * 3 + [320] * 3)])
    shapes = {}
    for prefix, c in where:
        f = f"{prefix}.transformer_blocks.0.fuser."
        shapes.update({f + "alpha_attn": (), f + "alpha_dense": (), f + "linear.weight": (c, 768),
                       f + "linear.bias": (c,), f + "attn.to_q.weight": (c, c), f + "attn.to_k.weight": (c, c),
                       f + "attn.to_v.weight": (c, c), f + "attn.to_out.0.weight": (c, c),
                       f + "attn.to_out.0.bias": (c,), f + "ff.net.0.proj.weight": (8 * c, c),
                       f + "ff.net.0.proj.bias": (8 * c,), f + "ff.net.2.weight": (c, 4 * c),
                       f + "ff.net.2.bias": (c,), f + "norm1.weight": (c,), f + "norm1.bias": (c,),
                       f + "norm2.weight": (c,), f + "norm2.bias": (c,)})
    shapes.update({"position_net.null_positive_feature": (768,), "position_net.null_position_feature": (64,),
                   "position_net.linears.0.weight": (512, 832), "position_net.linears.0.bias": (512,),
                   "position_net.linears.2.weight": (512, 512), "position_net.linears.2.bias": (512,),
                   "position_net.linears.4.weight": (768, 512), "position_net.linears.4.bias": (768,)})
    return shapes


def test_full_size_sd14_gligen_loads_on_meta_without_missing_or_unexpected_keys():
    shapes = _sd14_layout()
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    net, names = gligen.build_gligen(sd)
    assert sorted(names.values()) == sorted(shapes)  # nothing missing, nothing unexpected
    own = net.state_dict()
    assert {names[k]: tuple(v.shape) for k, v in own.items()} == shapes
    loaded = gligen.load_gligen(sd)
    assert len(loaded.order) == 16 and loaded.key_dim == 768
    assert loaded.order[0].startswith("input_blocks_1_1") and loaded.order[6].startswith("middle_block_1")
    first = loaded.fusers[loaded.order[0]]
    assert first.attn.heads == 8  # SD1 fusers: 8 heads of 40


def test_textbox_node_appends_boxes_in_latent_units():
    from nodes.gligen_nodes import GLIGENTextBoxApply

    class Clip:
        def tokenize(self, text):
            return {"l": text}

        def encode_from_tokens(self, tokens, return_pooled=False):
            assert return_pooled == "unprojected"
            return torch.zeros(1, 77, 8), torch.full((1, 8), float(len(tokens["l"])))

    model = object()
    conditioning = [[torch.zeros(1, 77, 8), {"pooled_output": None}]]
    (one,) = GLIGENTextBoxApply().execute(conditioning, Clip(), model, "cat", 128, 64, 16, 40)
    (two,) = GLIGENTextBoxApply().execute(one, Clip(), model, "a dog", 64, 64, 0, 0)
    kind, net, boxes = two[0][1]["gligen"]
    assert kind == "position" and net is model and "gligen" not in conditioning[0][1]
    assert [(float(b[0][0, 0]), *b[1:]) for b in boxes] == [(3.0, 8, 16, 5, 2), (5.0, 8, 8, 0, 0)]


# -- SAG --------------------------------------------------------------------------------------------
def _sag_model(scale):
    from nodes.model_patch_nodes import SelfAttentionGuidance

    return SelfAttentionGuidance().execute(tiny_patcher(), scale, 2.0)[0]


def test_sag_scale_zero_is_bit_identical_and_nonzero_guides():
    g = torch.Generator().manual_seed(3)
    x, sigma = torch.randn(1, 4, 16, 16, generator=g) * 3, torch.tensor([3.0])
    pos, neg = _conds(g)
    plain = _denoise(tiny_patcher(), pos, neg, x, sigma)
    zero = _sag_model(0.0)
    assert torch.equal(_denoise(zero, pos, neg, x, sigma), plain)
    guided = _sag_model(0.8)
    calls = []

    def count(apply_model, args):  # the unet function wrapper sees every forward
        calls.append(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    guided.set_model_unet_function_wrapper(count)
    out = CFGDenoiser(guided, pos, neg, 5.0)(x, sigma)
    assert calls == [[0, 1], [0]]  # the CFG pass, then SAG's pass on the blurred unconditional x0
    assert torch.isfinite(out).all() and not torch.allclose(out, plain)
    # cfg 1 still evaluates the unconditional side (SAG needs its attention)
    assert torch.isfinite(CFGDenoiser(guided, pos, neg, 1.0)(x, sigma)).all()


def test_sag_blur_map_and_token_grid():
    from diffusion.model_patches import sag

    assert sag._token_grid(9, 13, 35) == (5, 7)
    x0 = torch.randn(1, 2, 8, 8)
    attn = torch.zeros(2, 16, 16)
    attn[:, :, 0] = 1.0  # every query attends to token 0 only: token 0 is salient
    out = sag.blur_map(x0, attn, 1.0)
    blurred = sag.gaussian_blur_2d(x0, 9, 1.0)
    torch.testing.assert_close(out[..., :2, :2], blurred[..., :2, :2])
    assert torch.equal(out[..., 2:, :], x0[..., 2:, :])
