"""ComfyUI-named device/precision/attention flags reach diffusion.memory."""
import pytest

from nodes import runtime_options


def changes(*argv):
    opts, rest = runtime_options.parse(list(argv))
    return runtime_options.settings_changes(opts), rest


def test_flags_are_split_from_the_subcommand_arguments():
    got, rest = changes("run", "wf.json", "--cpu", "--out", "o", "--fp16-vae",
                        "--use-split-cross-attention", "--lowvram")
    assert rest == ["run", "wf.json", "--out", "o"]
    assert got == {"cpu": True, "vae_dtype": "fp16", "attention": "sliced", "vram_mode": "low"}


def test_precision_and_memory_flags():
    got, _ = changes("--force-fp32", "--bf16-unet", "--fp32-text-enc", "--disable-smart-memory",
                     "--reserve-vram", "1.5", "--cuda-device", "1")
    assert got == {"force_fp32": True, "unet_dtype": "bf16", "text_encoder_dtype": "fp32",
                   "smart_memory": False, "reserve_vram_gb": 1.5, "cuda_device": 1}
    assert changes("--attention", "xformers", "--disable-xformers")[0] == {"attention": "sdpa"}
    assert changes()[0] == {}


def test_conflicting_flags_are_refused():
    with pytest.raises(SystemExit):
        runtime_options.parse(["--force-fp32", "--force-fp16"])
    with pytest.raises(SystemExit):
        runtime_options.parse(["--lowvram", "--highvram"])


def test_apply_configures_the_runtime():
    from diffusion import memory
    from diffusion.models import attention

    before = memory.get_settings()
    try:
        opts, _ = runtime_options.parse(["--use-split-cross-attention", "--fp32-text-enc"])
        runtime_options.apply(opts)
        assert attention.get_backend() == "sliced"
        assert memory.get_settings().text_encoder_dtype == "fp32"
    finally:
        memory.configure(**{f: getattr(before, f) for f in before.__dataclass_fields__})
        attention.set_backend("sdpa")
