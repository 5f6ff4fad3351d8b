"""ModelPatcher: clones share base weights, patches are applied without copying untouched tensors
and removed bit for bit; SDXL adm encoding; hooks reach the network."""
import pytest
import torch

from diffusion import memory
from unet_tiny import TINY_SDXL, tiny_patcher

KEY = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"


def _run(p):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 3, 16, generator=g)
    memory.load_models([p])
    with torch.no_grad():
        return p.model(x, torch.tensor([500.0]), ctx)


@pytest.fixture(autouse=True)
def _fresh_memory():
    memory.unload_all_models()
    yield
    memory.unload_all_models()


def test_patch_changes_output_and_removal_restores_bit_exact():
    base = tiny_patcher()
    before = _run(base)
    ptrs = {n: t.data_ptr() for n, t in base.model.state_dict().items()}
    w0 = base.model.state_dict()[KEY].clone()

    clone = base.clone()
    delta = torch.randn(clone.model.state_dict()[KEY].shape) * 0.5
    assert clone.add_patches({"diffusion_model." + KEY: delta, "not.a.unet.key": delta}) == [
        "diffusion_model." + KEY]
    assert base.patches == {}  # patch lists are per clone
    patched = _run(clone)
    assert not torch.equal(patched, before)

    # Only the patched weight is a new tensor; every other tensor is the base one, uncopied.
    now = {n: t.data_ptr() for n, t in clone.model.state_dict().items()}
    assert [n for n in ptrs if now[n] != ptrs[n]] == [KEY]
    torch.testing.assert_close(clone.model.state_dict()[KEY], w0 + delta, rtol=0, atol=1e-6)

    # Running the base again unpatches the shared module: output restored bit for bit.
    assert torch.equal(_run(base), before)
    assert {n: t.data_ptr() for n, t in base.model.state_dict().items()} == ptrs

    clone.remove_patches()
    assert torch.equal(_run(clone), before)


def test_strengths_and_lora_patch():
    p = tiny_patcher().clone()
    w = dict(p.model.named_parameters())[KEY].detach().clone()
    rank = 2
    up, down = torch.randn(w.shape[0], rank), torch.randn(rank, w.shape[1])
    p.add_patches({KEY: ("lora", (up, down, 1.0, None))}, strength_patch=0.5, strength_model=0.8)
    p.patch_model()
    expected = w * 0.8 + 0.5 * (up @ down) * (1.0 / rank)
    torch.testing.assert_close(dict(p.model.named_parameters())[KEY].detach(), expected, rtol=1e-6, atol=1e-6)
    p.unpatch_model()
    assert torch.equal(dict(p.model.named_parameters())[KEY].detach(), w)


def test_bad_patch_shape_names_the_key():
    p = tiny_patcher().clone()
    p.add_patches({KEY: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="to_q.weight"):
        p.patch_model()


def test_attention_patch_hook_reaches_every_cross_attention():
    p = tiny_patcher().clone()
    seen = []
    p.set_model_attn2_patch(lambda q, k, v, extra: (seen.append(q.shape), (q, k, v))[1])
    assert "patches" not in tiny_patcher().model_options["transformer_options"]
    with torch.no_grad():
        p.model(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, 16),
                transformer_options=p.model_options["transformer_options"])
    n_attn2 = sum(1 for n, _ in p.model.named_modules() if n.endswith("attn2"))
    assert len(seen) == n_attn2 > 0


def test_control_residuals_are_added():
    p = tiny_patcher()
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 16, generator=g), torch.tensor([3.0])
    with torch.no_grad():
        plain = p.model(x, t, ctx)
        zero = p.model(x, t, ctx, control={"middle": [torch.zeros(1, 64, 4, 4)], "output": [None] * 4})
        moved = p.model(x, t, ctx, control={"middle": [torch.ones(1, 64, 4, 4)]})
    assert torch.equal(plain, zero)
    assert not torch.allclose(plain, moved)


def test_encode_adm_sdxl_formula():
    p = tiny_patcher(TINY_SDXL)
    assert p.arch == "sdxl"
    pooled = torch.randn(1, 24)
    y = p.encode_adm({"pooled_output": pooled, "width": 640, "height": 512, "crop_w": 8}, batch=3)
    assert y.shape == (3, 24 + 48)
    # Each size value is embedded by the sinusoid cos(v*f_i), sin(v*f_i), f_i = 10000^(-i/4).
    f = 10000.0 ** (-torch.arange(4) / 4)
    values = torch.tensor([512.0, 640, 0, 8, 512, 640])
    emb = torch.cat([torch.cos(values[:, None] * f), torch.sin(values[:, None] * f)], 1).reshape(-1)
    torch.testing.assert_close(y[2], torch.cat([pooled[0], emb]), rtol=1e-5, atol=1e-5)
    assert tiny_patcher().encode_adm({"pooled_output": pooled}, 1) is None
    with pytest.raises(ValueError, match="pooled_output"):
        p.encode_adm({}, 1)


def test_clone_shares_module_and_options_are_independent():
    p = tiny_patcher()
    c = p.clone()
    assert c.model is p.model and c.is_clone(p)
    c.set_model_sampler_cfg_function(lambda args: args["cond"])
    assert "sampler_cfg_function" not in p.model_options
    assert c.arch == "sd1" and c.dtype == torch.float32
    assert c.load_device == torch.device("cpu")
