"""Model runtime: checkpoint load, UNet forward per attention backend, VAE decode, and diffusers' UNet
on the same weights.

    python benchmarks/runtime.py [--sizes 32 64] [--repeat 1] [--skip-vae] [--skip-diffusers]

The first run writes a full-size SD1.5-architecture checkpoint with random weights (fp32, ~4.3 GB:
UNet, VAE, CLIP-L) to benchmarks/out/ (ignored by git); later runs reuse it. Every measurement runs
in a fresh Python process, so each peak RSS (VmHWM) is that step's alone:
- load: `load_checkpoint` wall time and peak RSS, then the peak after one forward has touched every
  UNet weight. Goal: peak <= 1.3x the file size (the file is memory-mapped, not copied).
- unet: seconds per forward, batch 2 (one CFG step), at each latent size, per attention backend.
- diffusers: UNet2DConditionModel (its default SDPA attention) with the same tensors, timed in the
  same process, round-robin with ours; ratio = ours / diffusers (goal <= 1.0).
- vae: decode time and peak RSS at 512x512 and 1024x1024 pixels.
Times are the best of --repeat rounds after one warm-up of each network at the smallest size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "out"
CHECKPOINT = OUT / "sd15-arch-random-fp32.safetensors"


# ---------------------------------------------------------------------------------------------
# Helpers run inside the step processes

def _rss() -> dict:
    """Current and peak resident set size of this process, in bytes (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return {"rss": out.get("VmRSS", 0), "peak": out.get("VmHWM", 0)}


def _write_safetensors(tensors: dict, path: Path) -> None:
    """Stream tensors to a .safetensors file one at a time, so writing needs no second model copy."""
    import struct

    import torch

    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header, offset = {}, 0
    for k, t in tensors.items():
        n = t.numel() * t.element_size()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"latentgraph.note": "random weights, SD1.5 architecture (benchmarks/runtime.py)"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # keep tensor data 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            f.write(t.detach().contiguous().view(torch.uint8).reshape(-1).numpy().tobytes())
    os.replace(tmp, path)


def step_make() -> dict:
    import torch

    from diffusion.loading.config import ClipTextConfig, UNetConfig, VAEConfig
    from diffusion.models.clip import ClipTextModel
    from tools.make_tiny_checkpoint import randomise_clip
    from diffusion.models.unet import UNetModel
    from diffusion.models.vae import AutoencoderKL

    torch.manual_seed(0)
    tensors = {}
    parts = (
        ("model.diffusion_model.", lambda: UNetModel(UNetConfig())),  # defaults are SD1.5's sizes
        ("first_stage_model.", lambda: AutoencoderKL(VAEConfig())),
        ("cond_stage_model.transformer.", lambda: randomise_clip(ClipTextModel(ClipTextConfig(
            layout="hf", width=768, layers=12, heads=12, vocab_size=49408, context_length=77,
            projection_dim=None, activation="quick_gelu")))),
    )
    for prefix, build in parts:
        with torch.no_grad():
            for k, v in build().state_dict().items():
                tensors[prefix + k] = v
    OUT.mkdir(parents=True, exist_ok=True)
    _write_safetensors(tensors, CHECKPOINT)
    return {"bytes": CHECKPOINT.stat().st_size}


def _inputs(size: int, batch: int = 2):
    import torch

    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, size, size, generator=g), torch.tensor([999.0, 500.0][:batch]),
            torch.randn(batch, 77, 768, generator=g))


def _time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def step_load(repeat: int, sizes) -> dict:
    import torch

    from diffusion.loading.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    model, clip, vae, arch = load_checkpoint(CHECKPOINT)
    load_s = time.perf_counter() - t0
    after_load = _rss()
    x, t, ctx = _inputs(8, batch=1)
    with torch.inference_mode():
        model.model(x, t[:1], ctx)
    return {"arch": arch, "load_s": load_s, "peak_after_load": after_load["peak"],
            "peak_after_forward": _rss()["peak"]}


def _diffusers_unet(unet_sd: dict):
    """diffusers' UNet2DConditionModel (SD1.5 config) whose parameters are the same tensors."""
    import torch
    from diffusers import UNet2DConditionModel

    sys.path.insert(0, str(ROOT / "tests"))
    from unet_keymap import diffusers_to_original_key  # the mapping the equivalence tests verify

    with torch.device("meta"):
        ref = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                   cross_attention_dim=768, attention_head_dim=8)
    up_attn = [hasattr(b, "attentions") and len(b.attentions) > 0 for b in ref.up_blocks]
    sd = {k: unet_sd[diffusers_to_original_key(k, 2, up_attn)] for k in ref.state_dict()}
    ref.load_state_dict(sd, assign=True)
    return ref.eval()


def step_unet(repeat: int, sizes, with_diffusers: bool) -> dict:
    """Ours per backend and diffusers, interleaved round by round so that load from other processes
    on a shared machine hits both alike; best of `repeat` rounds."""
    import torch

    from diffusion import memory
    from diffusion.models import attention
    from diffusion.loading.checkpoint import build_unet, split_state_dict
    from diffusion.loading.config import detect_unet_config
    from diffusion.loading.files import read_state_dict

    memory.tune_cpu_allocator()  # as our sampler does on CPU; diffusers, in this process, gains alike

    unet_sd = split_state_dict(read_state_dict(CHECKPOINT)[0])["unet"]
    ours = build_unet(unet_sd, detect_unet_config(unet_sd), torch.float32, "cpu")
    runners = {b: (lambda b=b: attention.set_backend(b) or ours) for b in attention.available_backends()}
    if with_diffusers:
        ref = _diffusers_unet(unet_sd)
        runners["diffusers"] = lambda: ref
    results = {}
    with torch.inference_mode():
        warm = _inputs(min(sizes))
        for get in runners.values():  # warm-up: pages the mapped weights in, primes kernels
            get()(*warm)
        for size in sizes:
            x, t, ctx = _inputs(size)
            for _ in range(repeat):
                for name, get in runners.items():
                    model = get()
                    seconds = _time(lambda: model(x, t, ctx), 1)
                    key = f"{name}@{size}"
                    results[key] = min(results.get(key, float("inf")), seconds)
    return results


def step_vae(repeat: int, sizes, pixels: int) -> dict:
    import torch

    from diffusion.loading.checkpoint import load_vae

    vae = load_vae(CHECKPOINT)
    z = torch.randn(1, 4, pixels // 8, pixels // 8, generator=torch.Generator().manual_seed(0))
    before = _rss()["peak"]
    seconds = _time(lambda: vae.decode(z), repeat)
    return {"decode_s": seconds, "peak_before": before, "peak": _rss()["peak"]}


# ---------------------------------------------------------------------------------------------
# Orchestration

def _run_step(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--step", name, "--repeat", str(args.repeat),
           "--sizes", *map(str, args.sizes)] + (["--skip-diffusers"] if args.skip_diffusers else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"step {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sizes (pixels / 8)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-vae", action="store_true")
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.step:
        steps = {"make": lambda: step_make(), "load": lambda: step_load(args.repeat, args.sizes),
                 "unet": lambda: step_unet(args.repeat, args.sizes, not args.skip_diffusers),
                 "vae512": lambda: step_vae(args.repeat, args.sizes, 512),
                 "vae1024": lambda: step_vae(args.repeat, args.sizes, 1024)}
        print(json.dumps(steps[args.step]()))
        return

    import machine

    if not CHECKPOINT.exists():
        print(f"writing {CHECKPOINT} (once) ...", flush=True)
        _run_step("make", args)
    size = CHECKPOINT.stat().st_size
    gib = 1 << 30
    lines = [f"model runtime, {CHECKPOINT.name} ({size / gib:.2f} GiB), one fresh process per part; "
             f"UNet batch 2 (one CFG step), best of {args.repeat} rounds, ours and diffusers interleaved",
             machine.describe(), ""]

    def emit(line=""):
        lines.append(line)
        print(line, flush=True)

    for line in lines:
        print(line)
    load = _run_step("load", args)
    emit("| measure | value |")
    emit("|---|---|")
    emit(f"| load_checkpoint ({load['arch']}) | {load['load_s']:.2f} s |")
    emit(f"| peak RSS after load | {load['peak_after_load'] / gib:.2f} GiB "
         f"({load['peak_after_load'] / size:.2f}x file) |")
    emit(f"| peak RSS after first forward | {load['peak_after_forward'] / gib:.2f} GiB "
         f"({load['peak_after_forward'] / size:.2f}x file; goal <= 1.3x) |")

    unet = _run_step("unet", args)
    backends = list(dict.fromkeys(k.split("@")[0] for k in unet if not k.startswith("diffusers@")))
    has_ref = any(k.startswith("diffusers@") for k in unet)
    emit("")
    emit("| UNet forward, latent | " + " | ".join(f"ours {b} (s)" for b in backends)
         + (" | diffusers (s) | ratio sdpa/diffusers |" if has_ref else " |"))
    emit("|---" * (1 + len(backends) + 2 * has_ref) + "|")
    for s_ in args.sizes:
        row = [f"{s_}x{s_} ({s_ * 8} px)"] + [f"{unet[f'{b}@{s_}']:.2f}" for b in backends]
        if has_ref:
            ref = unet[f"diffusers@{s_}"]
            row += [f"{ref:.2f}", f"{unet.get(f'sdpa@{s_}', float('nan')) / ref:.2f}"]
        emit("| " + " | ".join(row) + " |")
    if has_ref:
        emit("ratio = ours (default sdpa backend) / diffusers UNet2DConditionModel on the same tensors; goal <= 1.0")
    if not args.skip_vae:
        emit("")
        emit("| VAE decode | time (s) | peak RSS (GiB) | over the loaded VAE (GiB) |")
        emit("|---|---|---|---|")
        for px in (512, 1024):
            r = _run_step(f"vae{px}", args)
            emit(f"| {px}x{px} | {r['decode_s']:.2f} | {r['peak'] / gib:.2f} | "
                 f"{(r['peak'] - r['peak_before']) / gib:.2f} |")
    if not args.skip_diffusers and not args.skip_vae and sorted(args.sizes) == [32, 64]:
        print(f"saved {machine.save('runtime', chr(10).join(lines))}")  # only the standard run is kept

if __name__ == "__main__":
    main()
