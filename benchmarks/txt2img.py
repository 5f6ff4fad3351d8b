"""Text-to-image speed and memory: latentgraph vs diffusers' StableDiffusionPipeline, same weights.

    python benchmarks/txt2img.py [--sizes 256 512] [--steps 4] [--cfg 7] [--no-diffusers]

Builds (once) a full-size SD1.5-architecture checkpoint with random weights in
benchmarks/out/sd15-random.safetensors (4.3 GB; nothing is downloaded), then for each image size runs
one fresh process per pipeline and reports:

- cold start to first image: process spawn (interpreter start, imports, checkpoint load, text
  encoding, sampling, VAE decode) until the PNG / PIL image exists;
- load: checkpoint file to ready model objects;
- s/step: mean seconds per sampling step (batch 1, CFG on, so two UNet passes per step);
- decode: VAE decode; total: everything after imports;
- peak RSS of the process (getrusage).

latentgraph runs the classic graph (CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage
-> KSampler euler/normal -> VAEDecode -> SaveImage) through the engine's Runner. diffusers gets the
same tensors converted to its layout (diffusers.loaders.single_file_utils) and EulerDiscreteScheduler
with linspace timesteps, the same sampler family and step count (its sigma interpolation differs in
the last digits; speed is what is compared, not pixels).
Numbers depend on the machine; run it on an otherwise idle one.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
CKPT = OUT / "sd15-random.safetensors"
POSITIVE = "a watercolor painting of a lighthouse on a cliff at sunrise"
NEGATIVE = "blurry, low quality"
SEED = 42


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: KiB


def ensure_checkpoint(path: Path = CKPT) -> Path:
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    from tools.make_tiny_checkpoint import build_full_sd15_state_dict, save

    print(f"building {path} (random SD1.5-size weights; a few minutes, ~5 GB RAM)", flush=True)
    save(*build_full_sd15_state_dict(seed=0), path)
    return path


# ---------------------------------------------------------------------------------------------
# Workers: one fresh process per measurement, printing one JSON line.

def run_latentgraph(size: int, steps: int, cfg: float, spawned_at: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from graph.runner import Runner
    from nodes import folder_paths, load_registry

    imported = time.time()
    home = Path(tempfile.mkdtemp(prefix="lg-bench-"))
    (home / "models" / "checkpoints").mkdir(parents=True)
    (home / "models" / "checkpoints" / CKPT.name).symlink_to(CKPT)
    folder_paths.set_base_path(str(home))
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT.name}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": POSITIVE, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": NEGATIVE, "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": SEED, "steps": steps, "cfg": cfg, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
            "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "bench"}},
    }
    marks = []  # (time, event, node)

    def listener(event, data):
        if event in ("executing", "progress"):
            marks.append((time.time(), event, data.get("node")))

    start = time.time()
    Runner(load_registry()).run(prompt, listeners=[listener])
    done = time.time()
    started = {node: t for t, e, node in marks if e == "executing" and node is not None}
    ends = sorted(started.values()) + [done]

    def duration(node):
        t = started[node]
        return next(x for x in ends if x > t) - t

    steps_t = [t for t, e, node in marks if e == "progress" and node == "3"]
    step_times = [b - a for a, b in zip([started["3"]] + steps_t, steps_t)]
    return {"cold_start_s": done - spawned_at, "import_s": imported - spawned_at, "load_s": duration("4"),
            "step_s": step_times, "decode_s": duration("8"), "total_s": done - start,
            "peak_rss_gib": _peak_rss_gib()}


def _tokenizer_dir() -> Path:
    """vocab.json + merges.txt for transformers' CLIPTokenizer, from the BPE file the project ships."""
    sys.path.insert(0, str(ROOT))
    from diffusion.text.tokenizer import build_vocab, read_merges

    merges = read_merges()
    vocab = build_vocab(merges)
    d = Path(tempfile.mkdtemp(prefix="lg-bench-tok-"))
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                  encoding="utf-8")
    return d


def _configs(sd: dict):
    """Our UNet / VAE / CLIP sizes read from the checkpoint, to size diffusers' modules alike."""
    sys.path.insert(0, str(ROOT))
    from diffusion.loading.checkpoint import split_state_dict
    from diffusion.loading.config import ClipTextConfig, detect_unet_config, detect_vae_config

    parts = split_state_dict(sd)
    prefix = "cond_stage_model.transformer."
    clip = {k[len(prefix):]: v for k, v in parts["clip"].items() if k.startswith(prefix)}
    return (detect_unet_config(parts["unet"]), detect_vae_config(parts["vae"]),
            ClipTextConfig.from_state_dict(clip, activation="quick_gelu"))


def diffusers_pipeline(sd: dict):
    """diffusers' StableDiffusionPipeline holding the tensors of an SD1-architecture checkpoint `sd`
    (original single-file keys), converted with diffusers' own single-file converters, Euler scheduler.
    Also used by tests/test_sdnodes_diffusers_parity.py as the reference pipeline."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet_cfg, vae_cfg, clip_cfg = _configs(sd)
    ends = [sum(unet_cfg.num_res_blocks[:i + 1]) for i in range(len(unet_cfg.channel_mult))]
    has_attn = [any(unet_cfg.transformer_depth[e - n:e]) for e, n in zip(ends, unet_cfg.num_res_blocks)]
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=unet_cfg.in_channels, out_channels=unet_cfg.out_channels,
        layers_per_block=unet_cfg.num_res_blocks[0], cross_attention_dim=unet_cfg.context_dim,
        block_out_channels=tuple(m * unet_cfg.model_channels for m in unet_cfg.channel_mult),
        attention_head_dim=unet_cfg.num_heads,  # SD1 files: a head count, named head_dim in diffusers
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)))
    unet.load_state_dict({k: v.float() for k, v in convert_ldm_unet_checkpoint(sd, unet.config).items()})
    n = len(vae_cfg.ch_mult)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=vae_cfg.embed_dim,
                        layers_per_block=vae_cfg.num_res_blocks, sample_size=512,
                        block_out_channels=tuple(m * vae_cfg.ch for m in vae_cfg.ch_mult),
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        scaling_factor=0.18215)
    vae.load_state_dict({k: v.float() for k, v in convert_ldm_vae_checkpoint(sd, vae.config).items()})
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=clip_cfg.vocab_size, hidden_size=clip_cfg.width, intermediate_size=clip_cfg.mlp_width,
        num_hidden_layers=clip_cfg.layers, num_attention_heads=clip_cfg.heads,
        max_position_embeddings=clip_cfg.context_length, hidden_act="quick_gelu"))
    expected = set(text_encoder.state_dict())
    clip_sd = convert_ldm_clip_checkpoint(sd)
    if not any(k.startswith("text_model.") for k in expected):  # transformers 5 dropped the prefix
        clip_sd = {k.removeprefix("text_model."): v for k, v in clip_sd.items()}
    clip_sd = {k: v.float() for k, v in clip_sd.items() if k in expected}
    missing = sorted(k for k in expected - set(clip_sd) if not k.endswith("position_ids"))
    if missing:
        raise RuntimeError(f"text encoder weights not converted: {missing[:5]}")
    text_encoder.load_state_dict(clip_sd, strict=False)  # strict apart from the position_ids buffer
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace", num_train_timesteps=1000, steps_offset=1)
    tokenizer = CLIPTokenizer.from_pretrained(str(_tokenizer_dir()), model_max_length=clip_cfg.context_length)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_diffusers(size: int, steps: int, cfg: float, spawned_at: float) -> dict:
    import torch
    from safetensors.torch import load_file

    imported = time.time()
    start = time.time()
    sd = load_file(str(CKPT))
    pipe = diffusers_pipeline(sd)
    del sd
    loaded = time.time()
    steps_t = []

    def on_step_end(pipeline, i, t, kwargs):
        steps_t.append(time.time())
        return kwargs

    sample_start = time.time()
    with torch.inference_mode():
        image = pipe(POSITIVE, negative_prompt=NEGATIVE, height=size, width=size, num_inference_steps=steps,
                     guidance_scale=cfg, generator=torch.manual_seed(SEED),
                     callback_on_step_end=on_step_end).images[0]
    done = time.time()
    image.save(Path(tempfile.mkdtemp(prefix="lg-bench-img-")) / "diffusers.png")
    # The first step's start: the pipeline encodes the prompt first; measure steps between callbacks
    # and the first one from the mean of the others (prompt encoding is not a sampling step).
    gaps = [b - a for a, b in zip(steps_t, steps_t[1:])]
    first = (steps_t[0] - sample_start) if steps_t else 0.0
    return {"cold_start_s": time.time() - spawned_at, "import_s": imported - spawned_at,
            "load_s": loaded - start, "step_s": ([first] + gaps) if steps_t else [],
            "decode_s": done - steps_t[-1] if steps_t else float("nan"), "total_s": done - start,
            "peak_rss_gib": _peak_rss_gib()}


WORKERS = {"latentgraph": run_latentgraph, "diffusers": run_diffusers}


def spawn(which: str, size: int, steps: int, cfg: float) -> dict:
    spawned = time.time()
    cmd = [sys.executable, __file__, "--worker", which, "--size", str(size), "--steps", str(steps),
           "--cfg", str(cfg), "--spawned-at", repr(spawned), "--checkpoint", str(CKPT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{which} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Report

def _mean_step(r: dict) -> float:
    # The first step also pays one-off costs (weight placement, allocator warm-up); report the rest.
    s = r["step_s"][1:] or r["step_s"]
    return sum(s) / len(s) if s else float("nan")


ROWS = [("cold start to first image (s)", lambda r: r["cold_start_s"]),
        ("load checkpoint (s)", lambda r: r["load_s"]),
        ("seconds per step (s)", _mean_step),
        ("VAE decode (s)", lambda r: r["decode_s"]),
        ("total after imports (s)", lambda r: r["total_s"]),
        ("peak RSS (GiB)", lambda r: r["peak_rss_gib"])]


def report(results: dict, args, machine_text: str = "") -> str:
    lines = [f"txt2img, {CKPT.name}, batch 1, euler, {args.steps} steps, CFG {args.cfg}, "
             f"one fresh process per cell, torch threads default"]
    if machine_text:
        lines.append(machine_text)
    for size, per in results.items():
        lines.append(f"\n{size}x{size}")
        names = list(per)
        header = f"{'':32}" + "".join(f"{n:>14}" for n in names)
        if len(names) == 2:
            header += f"{'ratio':>10}"
        lines.append(header)
        for label, fn in ROWS:
            vals = [fn(per[n]) for n in names]
            row = f"{label:32}" + "".join(f"{v:14.2f}" for v in vals)
            if len(vals) == 2 and vals[1]:
                row += f"{vals[0] / vals[1]:10.2f}"
            lines.append(row)
    if any(len(per) == 2 for per in results.values()):
        lines.append("\nratio = latentgraph / diffusers (below 1: latentgraph is faster or smaller); "
                     "s/step is the mean over steps 2..n (step 1 pays one-off costs)\n"
                     "targets: s/step ratio <= 0.9, peak RSS ratio <= 0.8")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--no-diffusers", action="store_true", help="measure latentgraph only")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="an existing SD1-architecture checkpoint instead of the built full-size one")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global CKPT
    if args.checkpoint is not None:
        CKPT = args.checkpoint.resolve()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.size, args.steps, args.cfg, args.spawned_at)), flush=True)
        return 0
    ensure_checkpoint(CKPT)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import machine

    machine_text = machine.describe()  # before the runs: the load average says how idle the box was
    results = {}
    for size in args.sizes:
        results[size] = {"latentgraph": spawn("latentgraph", size, args.steps, args.cfg)}
        if not args.no_diffusers:
            results[size]["diffusers"] = spawn("diffusers", size, args.steps, args.cfg)
    text = report(results, args, machine_text)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "txt2img.json").write_text(json.dumps(results, indent=2))
    if args.checkpoint is None and not args.no_diffusers:  # only the standard comparison is kept
        print(f"saved {machine.save('txt2img', text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
