"""memory.py: device/dtype policy, keeping models loaded, dropping them under pressure, estimates."""
import pytest
import torch

from diffusion import memory
from diffusion.loading.config import UNetConfig
from unet_tiny import tiny_patcher


@pytest.fixture(autouse=True)
def _clean():
    memory.unload_all_models()
    yield
    memory.unload_all_models()


def test_cpu_policy():
    s = memory.Settings(cpu=True)
    assert memory.get_torch_device(s) == torch.device("cpu")
    assert memory.unet_dtype(settings=s) == torch.float32
    assert memory.vae_dtype(settings=s) == torch.float32
    assert memory.text_encoder_dtype(settings=s) == (torch.float16, torch.float32)


def test_cuda_policy_without_a_gpu(monkeypatch):
    monkeypatch.setattr(memory, "_bf16_ok", lambda device: False)
    cuda = torch.device("cuda", 0)
    s = memory.Settings()
    assert memory.unet_dtype(cuda, s) == torch.float16
    assert memory.vae_dtype(cuda, s) == torch.float32  # fp16 VAE only on request
    assert memory.unet_dtype(cuda, memory.Settings(force_fp32=True)) == torch.float32
    assert memory.unet_dtype(cuda, memory.Settings(unet_dtype="bf16")) == torch.bfloat16
    assert memory.vae_dtype(cuda, memory.Settings(force_fp16=True)) == torch.float16
    monkeypatch.setattr(memory, "_bf16_ok", lambda device: True)
    assert memory.unet_dtype(cuda, s, stored=torch.bfloat16) == torch.bfloat16
    assert memory.vae_dtype(cuda, s) == torch.bfloat16
    assert memory.offload_device(memory.Settings(cpu=True, vram_mode="high")) == torch.device("cpu")


def test_settings_are_validated():
    with pytest.raises(ValueError, match="vram_mode"):
        memory.Settings(vram_mode="lots")
    with pytest.raises(ValueError, match="unet_dtype"):
        memory.Settings(unet_dtype="fp12")
    with pytest.raises(ValueError, match="exclude"):
        memory.Settings(force_fp16=True, force_fp32=True)


def test_configure_applies_attention_backend():
    from diffusion.models import attention

    before, saved = attention.get_backend(), memory.get_settings()
    try:
        memory.configure(attention="sliced")
        assert attention.get_backend() == "sliced"
    finally:
        memory._settings = saved
        attention.set_backend(before)


def test_models_stay_loaded_and_unload_on_request():
    a, b = tiny_patcher(seed=1), tiny_patcher(seed=2)
    base_bias = dict(a.model.named_parameters())["out.2.bias"].detach().clone()
    a.add_patches({"out.2.bias": torch.ones(4)})
    memory.load_models([a])
    memory.load_models([b])
    assert memory.loaded_models() == [a, b]
    assert a.is_patched()
    assert torch.equal(dict(a.model.named_parameters())["out.2.bias"], base_bias + 1)
    memory.load_models([a])  # reuse: moves to most recently used, nothing recomputed
    assert memory.loaded_models() == [b, a]
    memory.unload_all_models()
    assert memory.loaded_models() == [] and not a.is_patched()
    assert torch.equal(dict(a.model.named_parameters())["out.2.bias"], base_bias)


def test_clones_of_one_network_take_turns():
    a = tiny_patcher()
    b = a.clone()
    b.add_patches({"out.2.bias": torch.ones(4)})
    memory.load_models([b])
    memory.load_models([a])
    assert memory.loaded_models() == [a] and not b.is_patched() and a.is_patched()


def test_pressure_drops_least_recently_used(monkeypatch):
    a, b, c = (tiny_patcher(seed=i) for i in range(3))
    for p in (a, b, c):
        memory.load_models([p])
    # Pretend each unload frees one model's worth and the device starts with nothing free.
    size = a.model_size()
    monkeypatch.setattr(memory, "get_free_memory",
                        lambda device=None: size * (3 - len(memory.loaded_models())))
    memory.free_memory(2 * size, "cpu", keep=[a])
    assert memory.loaded_models() == [a]  # b and c went, oldest first; a was kept


def test_estimate_scales_with_batch_and_area():
    sd1 = UNetConfig()  # SD1.5 sizes
    one = memory.estimate_unet_memory(sd1, (1, 4, 64, 64))
    two = memory.estimate_unet_memory(sd1, (2, 4, 64, 64))
    big = memory.estimate_unet_memory(sd1, (1, 4, 128, 128))
    # Lower bound: the first level's skip connections alone, 3 tensors of 320 x 64 x 64 fp32.
    assert one >= 3 * 320 * 64 * 64 * 4
    # Activations are linear in batch and area; the attention block term is bounded.
    from diffusion.models.attention import SLICE_BYTES
    assert 2 * one - SLICE_BYTES <= two <= 2 * one
    assert 4 * one - 3 * SLICE_BYTES <= big <= 4 * one
    half = memory.estimate_unet_memory(sd1, (1, 4, 64, 64), dtype=torch.float16)
    assert half < one
