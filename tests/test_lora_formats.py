"""LoRA formats on a tiny SD1 UNet: the patched forward equals the forward of a UNet whose weights
were merged by the formulas written here (independently of diffusion/), within 1e-5; removing the
patches gives back the very same tensors; every format reports no unused key."""
from __future__ import annotations

import copy

import pytest
import torch

from diffusion.lora import apply_lora, load_lora
from diffusion.model_patcher import ModelPatcher
from diffusion.models.unet import UNetModel
from tools.make_tiny_checkpoint import TinySD1, _unet_config_sd1

LINEAR = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # [32, 32]
CONV1 = "input_blocks.1.1.proj_in.weight"  # SD1: 1x1 conv [32, 32, 1, 1]
CONV3 = "input_blocks.1.0.in_layers.2.weight"  # 3x3 conv [32, 32, 3, 3]
# the same layers under diffusers' names (SD1: down_blocks.0 holds input_blocks 1)
DIFFUSERS = {LINEAR: "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             CONV1: "down_blocks.0.attentions.0.proj_in", CONV3: "down_blocks.0.resnets.0.conv1"}
R = 3


def _kohya(name):
    return "lora_unet_" + DIFFUSERS[name].replace(".", "_")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = UNetModel(_unet_config_sd1(TinySD1())).eval().requires_grad_(False)
    for p in model.parameters():  # random everywhere, so a misplaced delta shows in the output
        p.add_(torch.randn_like(p) * 0.02)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 500.0]),
            torch.randn(2, 5, 32, generator=g))


def _forward(model):
    x, t, ctx = _inputs()
    with torch.no_grad():
        return model(x, t, ctx)


def _merged_forward(unet, deltas: dict, strength=1.0, replace=None):
    """Forward of a copy of `unet` whose weights are w + strength * delta (or `replace`d)."""
    ref = copy.deepcopy(unet)
    sd = ref.state_dict()
    for k, d in deltas.items():
        sd[k] = sd[k] + strength * d.reshape(sd[k].shape)
    for k, w in (replace or {}).items():
        sd[k] = w
    ref.load_state_dict(sd)
    return _forward(ref)


def _patched_forward(unet, lora_sd, strength=1.0):
    base = ModelPatcher(unet, "sd1", load_device="cpu", offload_device="cpu")
    before = {k: p for k, p in unet.named_parameters()}
    model_patches, _, unused = load_lora(lora_sd, base)
    assert unused == []
    patched, _ = apply_lora(base, None, lora_sd, strength, 0.0)
    assert base.patches == {}  # the input model is untouched
    patched.patch_model()
    out = _forward(unet)
    patched.unpatch_model()
    after = {k: p for k, p in unet.named_parameters()}
    assert all(after[k] is before[k] for k in before)  # the base tensors themselves are back
    return out, model_patches


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2


def _check(unet, lora_sd, deltas, strength=1.0, replace=None):
    got, _ = _patched_forward(unet, lora_sd, strength)
    want = _merged_forward(unet, deltas, strength, replace)
    assert (got - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())
    assert (got - _forward(unet)).abs().max() > 1e-3  # the patch did change the output


def test_kohya_linear_1x1_and_3x3_conv_with_alpha(unet):
    sd, deltas = {}, {}
    for i, name in enumerate((LINEAR, CONV1, CONV3)):
        out_c, in_c, *k = unet.state_dict()[name].shape
        up, down = _rand(out_c, R, *[1] * len(k), seed=i), _rand(R, in_c, *k, seed=10 + i)
        sd[_kohya(name) + ".lora_up.weight"], sd[_kohya(name) + ".lora_down.weight"] = up, down
        sd[_kohya(name) + ".alpha"] = torch.tensor(1.5)
        deltas[name] = (up.flatten(1) @ down.flatten(1)) * (1.5 / R)
    _check(unet, sd, deltas, strength=0.7)


@pytest.mark.parametrize("style", ["peft", "diffusers_old", "generic", "kohya_original_names"])
def test_other_key_formats(unet, style):
    up, down = _rand(32, R, seed=1), _rand(R, 32, seed=2)
    module = DIFFUSERS[LINEAR]
    keys = {
        "peft": (f"unet.{module}.lora_B.weight", f"unet.{module}.lora_A.weight"),
        "diffusers_old": (f"unet.{module.replace('.to_q', '.processor.to_q')}_lora.up.weight",
                          f"unet.{module.replace('.to_q', '.processor.to_q')}_lora.down.weight"),
        "generic": (f"diffusion_model.{LINEAR[:-7]}.lora_up.weight", f"diffusion_model.{LINEAR[:-7]}.lora_down.weight"),
        "kohya_original_names": (f"lora_unet_{LINEAR[:-7].replace('.', '_')}.lora_up.weight",
                                 f"lora_unet_{LINEAR[:-7].replace('.', '_')}.lora_down.weight"),
    }[style]
    _check(unet, {keys[0]: up, keys[1]: down}, {LINEAR: up @ down})


def test_locon_with_mid_tensor(unet):
    up, mid, down = _rand(32, R, 1, 1, seed=1), _rand(R, R, 3, 3, seed=2), _rand(R, 32, 1, 1, seed=3)
    k = _kohya(CONV3)
    sd = {f"{k}.lora_up.weight": up, f"{k}.lora_mid.weight": mid, f"{k}.lora_down.weight": down,
          f"{k}.alpha": torch.tensor(2.0)}
    # delta = up · mid · down, contracted one rank index at a time
    core = torch.tensordot(mid, down.flatten(1), dims=([1], [0]))  # [a, kh, kw, in]
    delta = torch.tensordot(up.flatten(1), core, dims=([1], [0])).permute(0, 3, 1, 2)  # [out, in, kh, kw]
    _check(unet, sd, {CONV3: delta * (2.0 / R)})


def test_loha_linear_and_tucker_conv(unet):
    k1, k3 = _kohya(LINEAR), _kohya(CONV3)
    w = {n: _rand(*s, seed=i) for i, (n, s) in enumerate(
        [("1a", (32, R)), ("1b", (R, 32)), ("2a", (32, R)), ("2b", (R, 32)),
         ("t1", (R, R, 3, 3)), ("t2", (R, R, 3, 3)), ("c1a", (R, 32)), ("c1b", (R, 32)),
         ("c2a", (R, 32)), ("c2b", (R, 32))])}
    sd = {f"{k1}.hada_w1_a": w["1a"], f"{k1}.hada_w1_b": w["1b"], f"{k1}.hada_w2_a": w["2a"],
          f"{k1}.hada_w2_b": w["2b"], f"{k1}.alpha": torch.tensor(1.0),
          f"{k3}.hada_w1_a": w["c1a"], f"{k3}.hada_w1_b": w["c1b"], f"{k3}.hada_w2_a": w["c2a"],
          f"{k3}.hada_w2_b": w["c2b"], f"{k3}.hada_t1": w["t1"], f"{k3}.hada_t2": w["t2"]}

    def tucker(t, a, b):  # rebuild[p, q, k, l] = Σ_ij t[i, j, k, l] a[i, p] b[j, q]
        out = torch.zeros(32, 32, 3, 3)
        for i in range(R):
            for j in range(R):
                out += t[i, j][None, None] * (a[i][:, None] * b[j][None, :])[..., None, None]
        return out

    deltas = {LINEAR: (w["1a"] @ w["1b"]) * (w["2a"] @ w["2b"]) * (1.0 / R),
              CONV3: tucker(w["t1"], w["c1a"], w["c1b"]) * tucker(w["t2"], w["c2a"], w["c2b"])}
    _check(unet, sd, deltas)


def _kron(a, b):  # written out: block (i, j) is a[i, j] * b
    return torch.cat([torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])])


def test_lokr_full_and_low_rank_factors(unet):
    k1, k3 = _kohya(LINEAR), _kohya(CONV1)
    w1, w2a, w2b = _rand(4, 2, seed=1), _rand(8, R, seed=2), _rand(R, 16, seed=3)
    c1, c2 = _rand(2, 4, seed=4), _rand(16, 8, seed=5)
    sd = {f"{k1}.lokr_w1": w1, f"{k1}.lokr_w2_a": w2a, f"{k1}.lokr_w2_b": w2b, f"{k1}.alpha": torch.tensor(2.0),
          f"{k3}.lokr_w1": c1, f"{k3}.lokr_w2": c2, f"{k3}.alpha": torch.tensor(2.0)}
    deltas = {LINEAR: _kron(w1, w2a @ w2b) * (2.0 / R),  # alpha applies with a low-rank factor
              CONV1: _kron(c1, c2)}  # both factors full: no alpha scaling
    _check(unet, sd, deltas)


@pytest.mark.parametrize("axis", ["input", "output"])
def test_dora(unet, axis):
    k = _kohya(LINEAR)
    up, down = _rand(32, R, seed=1), _rand(R, 32, seed=2)
    magnitude = 1.0 + _rand(1, 32, seed=3).abs() if axis == "input" else 1.0 + _rand(32, 1, seed=3).abs()
    sd = {f"{k}.lora_up.weight": up, f"{k}.lora_down.weight": down, f"{k}.dora_scale": magnitude,
          f"{k}.alpha": torch.tensor(float(R))}
    w = unet.state_dict()[LINEAR]
    merged = w + up @ down
    norm = merged.norm(dim=0, keepdim=True) if axis == "input" else merged.norm(dim=1, keepdim=True)
    target = merged * magnitude / norm
    strength = 0.6
    _check(unet, sd, {}, replace={LINEAR: w + strength * (target - w)}, strength=strength)


def test_full_diff_and_bias_diff(unet):
    k = f"diffusion_model.{LINEAR[:-7]}"
    bias_key = "input_blocks.1.1.proj_in.bias"
    d, db = _rand(32, 32, seed=1), _rand(32, seed=2)
    sd = {f"{k}.diff": d, f"diffusion_model.{bias_key[:-5]}.diff_b": db}
    _check(unet, sd, {LINEAR: d, bias_key: db}, strength=0.5)


def test_unused_keys_are_counted_and_logged(unet, caplog):
    base = ModelPatcher(unet, "sd1", load_device="cpu", offload_device="cpu")
    sd = {_kohya(LINEAR) + ".lora_up.weight": _rand(32, R), _kohya(LINEAR) + ".lora_down.weight": _rand(R, 32),
          "lora_unet_no_such_layer.lora_up.weight": _rand(4, R), "lora_unet_no_such_layer.lora_down.weight": _rand(R, 4),
          # right name, wrong shape (a LoRA for another architecture): skipped, not an error at sampling
          _kohya(CONV1) + ".lora_up.weight": _rand(64, R, 1, 1), _kohya(CONV1) + ".lora_down.weight": _rand(R, 32, 1, 1),
          "something_else": torch.zeros(1)}
    with caplog.at_level("DEBUG", logger="diffusion.lora"):
        patched, _ = apply_lora(base, None, sd, 1.0, 0.0, name="LoRA test.safetensors")
    assert list(patched.patches) == [LINEAR]
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning == ["LoRA test.safetensors: 5 of 7 keys not used (no matching layer in this model)"]
    assert any("lora_unet_no_such_layer.lora_down.weight" in r.getMessage() for r in caplog.records
               if r.levelname == "DEBUG")


def test_stacked_loras_and_removal_restores_bits(unet):
    base = ModelPatcher(unet, "sd1", load_device="cpu", offload_device="cpu")
    before = {k: p.detach().clone() for k, p in unet.named_parameters()}
    a = {_kohya(LINEAR) + ".lora_up.weight": _rand(32, R, seed=1), _kohya(LINEAR) + ".lora_down.weight": _rand(R, 32, seed=2)}
    b = {_kohya(LINEAR) + ".lora_up.weight": _rand(32, R, seed=3), _kohya(LINEAR) + ".lora_down.weight": _rand(R, 32, seed=4)}
    m1, _ = apply_lora(base, None, a, 0.5, 0.0)
    m2, _ = apply_lora(m1, None, b, -1.25, 0.0)
    m2.patch_model()
    got = _forward(unet)
    m2.unpatch_model()
    da = a[_kohya(LINEAR) + ".lora_up.weight"] @ a[_kohya(LINEAR) + ".lora_down.weight"]
    db = b[_kohya(LINEAR) + ".lora_up.weight"] @ b[_kohya(LINEAR) + ".lora_down.weight"]
    want = _merged_forward(unet, {LINEAR: 0.5 * da - 1.25 * db})
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert all(torch.equal(p, before[k]) for k, p in unet.named_parameters())
