"""Device and dtype choice, and which models are kept loaded.

Policy (overridable through `Settings`, which main.py fills from the command-line flags):
- Device: CUDA when present (`cuda_device` picks which), else CPU; `cpu=True` forces CPU.
- UNet dtype: fp16 on CUDA (bf16 when the file is stored in bf16 and the GPU supports it), fp32 on
  CPU, where half-precision matrix products are ~100x slower (COMPAT Appendix B).
- VAE dtype: bf16 on CUDA when supported, else fp32. fp16 only on request: the SDXL VAE overflows
  in fp16, so it is not "safe" by default.
- Text encoders: stored fp16 (as the reference does, so prompts round the same way) and computed
  in fp32 on CPU; see `text_encoder_dtype`.
Models stay loaded between prompts. `load_models([...], memory_required)` makes room by unloading the
least recently used other models when the device lacks memory; `unload_all_models()` drops them all.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, replace

import torch

VRAM_MODES = ("normal", "high", "low", "none", "gpu_only")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class Settings:
    cpu: bool = False
    cuda_device: int | None = None
    vram_mode: str = "normal"           # --highvram / --lowvram / --novram / --gpu-only
    reserve_vram_gb: float = 0.0
    force_fp32: bool = False
    force_fp16: bool = False
    unet_dtype: str | None = None       # "fp32" | "fp16" | "bf16" | "fp64"
    vae_dtype: str | None = None
    text_encoder_dtype: str | None = None
    attention: str | None = None        # backend name for diffusion.attention.set_backend
    smart_memory: bool = True           # False: unload models after every prompt
    cpu_malloc_tuning: bool = True      # keep freed activations in glibc's heap while sampling on CPU

    def __post_init__(self):
        if self.vram_mode not in VRAM_MODES:
            raise ValueError(f"vram_mode must be one of {VRAM_MODES}, got {self.vram_mode!r}")
        for field in ("unet_dtype", "vae_dtype", "text_encoder_dtype"):
            value = getattr(self, field)
            if value is not None and value not in _DTYPES:
                raise ValueError(f"{field} must be one of {sorted(_DTYPES)}, got {value!r}")
        if self.force_fp16 and self.force_fp32:
            raise ValueError("force_fp16 and force_fp32 exclude each other")


_settings = Settings()


def get_settings() -> Settings:
    return _settings


def configure(**changes) -> Settings:
    """Replace fields of the process-wide settings; applies the attention backend if given."""
    global _settings
    _settings = replace(_settings, **changes)
    if _settings.attention:
        from diffusion.models.attention import set_backend

        set_backend(_settings.attention)
    return _settings


def _s(settings):
    return settings or _settings


# ---------------------------------------------------------------------------------------------
# Devices and dtypes

def get_torch_device(settings=None) -> torch.device:
    s = _s(settings)
    if s.cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", s.cuda_device if s.cuda_device is not None else torch.cuda.current_device())


def unet_device(settings=None) -> torch.device:
    return get_torch_device(settings)


def offload_device(settings=None) -> torch.device:
    """Where idle weights live: the GPU itself when asked to keep everything there."""
    s = _s(settings)
    device = get_torch_device(s)
    if device.type == "cuda" and s.vram_mode in ("high", "gpu_only"):
        return device
    return torch.device("cpu")


def _bf16_ok(device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def unet_dtype(device=None, settings=None, stored: torch.dtype | None = None) -> torch.dtype:
    s = _s(settings)
    device = torch.device(device) if device is not None else get_torch_device(s)
    if s.unet_dtype:
        return _DTYPES[s.unet_dtype]
    if s.force_fp32 or device.type != "cuda":
        return torch.float32
    if stored == torch.bfloat16 and _bf16_ok(device):
        return torch.bfloat16
    return torch.float16


def vae_dtype(device=None, settings=None) -> torch.dtype:
    s = _s(settings)
    device = torch.device(device) if device is not None else get_torch_device(s)
    if s.vae_dtype:
        return _DTYPES[s.vae_dtype]
    if s.force_fp16 and device.type == "cuda":
        return torch.float16
    if s.force_fp32 or not _bf16_ok(device):
        return torch.float32
    return torch.bfloat16


def text_encoder_dtype(device=None, settings=None) -> tuple[torch.dtype, torch.dtype]:
    """(storage dtype, compute dtype) for text encoders."""
    s = _s(settings)
    device = torch.device(device) if device is not None else get_torch_device(s)
    if s.text_encoder_dtype:
        storage = _DTYPES[s.text_encoder_dtype]
    else:
        storage = torch.float32 if s.force_fp32 else torch.float16
    compute = storage if device.type == "cuda" else torch.float32
    return storage, compute


# ---------------------------------------------------------------------------------------------
# Memory figures

def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def get_free_memory(device=None) -> int:
    """Bytes a new allocation can use on `device` now (for CUDA, includes torch's cached blocks)."""
    device = torch.device(device) if device is not None else get_torch_device()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached
    available = _meminfo_available()
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available


def estimate_unet_memory(config, shape, dtype=torch.float32, context_tokens: int = 77) -> int:
    """Bytes of activations one UNet forward needs for a latent batch of `shape` [B, C, H, W].

    An upper-bound model of the network's working set: the skip connections kept for the decoder
    (every input block's output), the widest level's few live temporaries, and one block of
    attention scores. Our backends never hold a full score matrix: SDPA's CPU and CUDA kernels and
    xformers work in tiles, the sliced backend in chunks of at most SLICE_BYTES.
    """
    from diffusion.models.attention import SLICE_BYTES

    b, _, h, w = shape
    item = torch.empty((), dtype=dtype).element_size()
    mc = config.model_channels
    skips, widest, level_pixels = 0, 0, h * w
    for level, mult in enumerate(config.channel_mult):
        ch = mc * mult
        skips += (config.num_res_blocks[level] + 1) * level_pixels * ch
        widest = max(widest, level_pixels * ch)
        level_pixels = -(-level_pixels // 4)
    # ~12 live tensors of the widest size: ResBlock temporaries, transformer in/out, GEGLU (8x width).
    activations = (skips + 12 * widest) * b * item
    # The first level with attention has the most tokens; transformer_depth lists input res blocks
    # level by level.
    levels = [lv for lv, n in enumerate(config.num_res_blocks) for _ in range(n)]
    with_attention = [lv for lv, d in zip(levels, config.transformer_depth) if d]
    attn = 0
    if with_attention:
        level = with_attention[0]
        tokens = -(-h * w // (4 ** level))
        heads, _ = config.heads_for(mc * config.channel_mult[level])
        attn = min(b * heads * tokens * max(tokens, context_tokens) * 4, SLICE_BYTES)
    return int(activations + attn)


def module_size(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


# ---------------------------------------------------------------------------------------------
# Keeping models loaded

_lock = threading.RLock()
_loaded: list = []  # ModelPatcher-like objects, most recently used last


def loaded_models() -> list:
    with _lock:
        return list(_loaded)


def _unload(patcher) -> None:
    patcher.unpatch_model(offload=True)
    _loaded.remove(patcher)


def free_memory(bytes_needed: int, device, keep=()) -> int:
    """Unload least recently used models on `device` (except those in `keep`) until `bytes_needed`
    are free; returns how many models were unloaded."""
    device = torch.device(device)
    reserve = int(_settings.reserve_vram_gb * (1 << 30)) if device.type == "cuda" else 0
    count = 0
    with _lock:
        for patcher in list(_loaded):
            if get_free_memory(device) >= bytes_needed + reserve:
                break
            if any(patcher is k for k in keep) or torch.device(patcher.load_device) != device:
                continue
            _unload(patcher)
            count += 1
    if count and device.type == "cuda":
        torch.cuda.empty_cache()
    return count


def load_models(patchers, memory_required: int = 0) -> None:
    """Make each model ready on its load device with its patches applied, freeing room first."""
    patchers = [p for p in patchers if p is not None]
    with _lock:
        for p in patchers:
            device = torch.device(p.load_device)
            already = any(p is q for q in _loaded) and p.is_patched()
            needed = memory_required + (0 if already else p.model_size())
            free_memory(needed, device, keep=patchers)
        for p in patchers:
            # Another clone of the same network may have its patches applied: it gives way.
            for other in list(_loaded):
                if other is not p and other.model is p.model:
                    _unload(other)
            p.patch_model(device_to=p.load_device)
            if any(p is q for q in _loaded):
                _loaded.remove(p)
            _loaded.append(p)


def unload_all_models() -> None:
    with _lock:
        for p in list(_loaded):
            _unload(p)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cleanup_after_prompt() -> None:
    """Called between prompts: keeps models loaded unless smart memory is off."""
    if not _settings.smart_memory:
        unload_all_models()
    release_cpu_memory()


# ---------------------------------------------------------------------------------------------
# CPU allocator
#
# glibc serves blocks above its mmap threshold (at most 32 MiB by default, adaptive) with fresh
# mmaps and gives them back on free, so every UNet step on CPU faults in and zero-fills its large
# activations again: at 512x512 ~700k page faults and ~0.9 s of kernel time per forward. Raising
# the threshold and the trim threshold keeps freed blocks in the heap for the next step; the
# memory goes back to the OS with malloc_trim at the end of sampling and between prompts. How much
# this saves varies between processes: where the kernel places the heap (address-space
# randomisation) decides whether it can grow in place or glibc falls back to mmap for a block.

_MALLOC = {"libc": None, "tuned": False}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD = 1 << 30
MALLOC_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int


def _glibc():
    if _MALLOC["libc"] is None:
        _MALLOC["libc"] = False
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version"):
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.malloc_trim.argtypes = (ctypes.c_size_t,)
                _MALLOC["libc"] = libc
        except OSError:  # not glibc (musl, macOS, Windows): nothing to tune
            pass
    return _MALLOC["libc"] or None


def tune_cpu_allocator(settings=None) -> bool:
    """Once per process, on glibc and unless settings.cpu_malloc_tuning is off: keep large freed
    blocks for reuse (see above). Returns whether the tuning is in effect."""
    if _MALLOC["tuned"]:
        return True
    libc = _glibc() if _s(settings).cpu_malloc_tuning else None
    if libc is None:
        return False
    # glibc refuses thresholds above its compile-time cap; then its own maximum (32 MiB) is used.
    if not libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD):
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    _MALLOC["tuned"] = True
    return True


_MADV_PAGEOUT = 21  # Linux 5.4+


def page_out(tensor: torch.Tensor) -> bool:
    """Ask the kernel to reclaim the whole memory pages under a CPU tensor's data now (MADV_PAGEOUT).

    Never changes data: clean file-backed pages (weights memory-mapped from a checkpoint) are
    dropped and read again from the file on the next access; anonymous or modified pages stay
    resident without swap. For weights the runtime has copied into another form (packed
    convolution weights). Returns whether the hint was given.
    """
    libc = _glibc()
    if libc is None or tensor.device.type != "cpu" or not tensor.is_contiguous() or not hasattr(libc, "madvise"):
        return False
    import ctypes
    import mmap

    start = tensor.data_ptr()
    page = mmap.PAGESIZE
    lo = -(-start // page) * page
    hi = (start + tensor.numel() * tensor.element_size()) // page * page
    if hi <= lo:
        return False
    return libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_PAGEOUT) == 0


def is_file_backed(tensor: torch.Tensor) -> bool:
    """Whether a CPU tensor's data lies in a file mapping (a memory-mapped checkpoint), i.e. memory
    that `page_out` can hand back; False for heap memory or where /proc/self/maps is missing."""
    if tensor.device.type != "cpu":
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= start < hi:
                    return end <= hi and len(fields) == 6 and fields[5].startswith("/")
    except OSError:
        pass
    return False


def release_cpu_memory() -> None:
    """Return the heap's free pages to the OS (after sampling, between prompts); no-op unless tuned."""
    if _MALLOC["tuned"]:
        _glibc().malloc_trim(0)
