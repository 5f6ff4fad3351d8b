"""Device, precision, attention and custom-node flags shared by `main.py` (server) and `main.py run`.

The names are ComfyUI's (COMPAT §11) so existing launch scripts keep working. They are parsed before
the sub-command's own flags and applied to `diffusion.memory` once, at start-up.
"""
from __future__ import annotations

import argparse

VRAM_FLAGS = {"gpu_only": "gpu_only", "highvram": "high", "normalvram": "normal",
              "lowvram": "low", "novram": "none"}
PRECISIONS = ("fp32", "fp16", "bf16")


SUB_COMMANDS = ("run", "convert")


class _PackNames(argparse.Action):
    """--whitelist-custom-nodes NAME...: argparse's nargs="+" would also swallow a sub-command
    written after the names (`--whitelist-custom-nodes a run wf.json`); the names stop there and
    the rest is handed back to parse(), which puts it in front of the sub-command's arguments."""

    def __call__(self, parser, namespace, values, option_string=None):
        cut = next((i for i, v in enumerate(values) if v in SUB_COMMANDS), len(values))
        setattr(namespace, self.dest, list(values[:cut]))
        namespace.spilled_args = list(values[cut:])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("device and memory")
    g.add_argument("--cpu", action="store_true", help="run everything on the CPU")
    vram = g.add_mutually_exclusive_group()
    for flag in VRAM_FLAGS:
        vram.add_argument("--" + flag.replace("_", "-"), dest="vram", action="store_const",
                          const=flag)
    g.add_argument("--reserve-vram", type=float, default=0.0, metavar="GB")
    g.add_argument("--disable-smart-memory", action="store_true",
                   help="unload models after every prompt instead of keeping them loaded")
    g.add_argument("--cuda-device", type=int, default=None, metavar="N")
    g = p.add_argument_group("precision")
    force = g.add_mutually_exclusive_group()
    force.add_argument("--force-fp32", action="store_true")
    force.add_argument("--force-fp16", action="store_true")
    for part, extra in (("unet", ("fp64",)), ("vae", ()), ("text-enc", ())):
        group = g.add_mutually_exclusive_group()
        for prec in PRECISIONS + extra:
            group.add_argument(f"--{prec}-{part}", dest=part.replace("-", "_") + "_dtype",
                               action="store_const", const=prec)
    g.add_argument("--deterministic", action="store_true",
                   help="ask torch for deterministic kernels (slower)")
    g = p.add_argument_group("attention")
    att = g.add_mutually_exclusive_group()
    att.add_argument("--attention", choices=("sdpa", "xformers", "sliced"), default=None)
    # ComfyUI's names for the same choice.
    att.add_argument("--use-pytorch-cross-attention", dest="attention", action="store_const",
                     const="sdpa")
    att.add_argument("--use-split-cross-attention", dest="attention", action="store_const",
                     const="sliced")
    att.add_argument("--use-quad-cross-attention", dest="attention", action="store_const",
                     const="sliced")
    g.add_argument("--disable-xformers", action="store_true")
    g = p.add_argument_group("custom nodes")
    g.add_argument("--disable-all-custom-nodes", action="store_true",
                   help="load no custom node pack (except those whitelisted)")
    g.add_argument("--whitelist-custom-nodes", nargs="+", default=[], metavar="NAME", action=_PackNames,
                   help="packs (file or folder names) that load despite --disable-all-custom-nodes")
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split argv into these options and everything else (left for the sub-command)."""
    opts, rest = build_parser().parse_known_args(argv)
    spilled = getattr(opts, "spilled_args", [])
    return opts, spilled + rest


def pack_options(opts: argparse.Namespace):
    """Which custom node packs may load (nodes.custom_packs.PackOptions)."""
    from nodes.custom_packs import PackOptions

    return PackOptions(disable_all=opts.disable_all_custom_nodes,
                       whitelist=tuple(opts.whitelist_custom_nodes))


def settings_changes(opts: argparse.Namespace) -> dict:
    """The diffusion.memory.configure() keywords these options ask for."""
    changes: dict = {}
    if opts.cpu:
        changes["cpu"] = True
    if opts.vram:
        changes["vram_mode"] = VRAM_FLAGS[opts.vram]
    if opts.reserve_vram:
        changes["reserve_vram_gb"] = opts.reserve_vram
    if opts.disable_smart_memory:
        changes["smart_memory"] = False
    if opts.cuda_device is not None:
        changes["cuda_device"] = opts.cuda_device
    if opts.force_fp32:
        changes["force_fp32"] = True
    if opts.force_fp16:
        changes["force_fp16"] = True
    for part in ("unet_dtype", "vae_dtype", "text_enc_dtype"):
        value = getattr(opts, part)
        if value:
            changes["text_encoder_dtype" if part == "text_enc_dtype" else part] = value
    attention = opts.attention
    if attention == "xformers" and opts.disable_xformers:
        attention = "sdpa"
    if attention:
        changes["attention"] = attention
    return changes


def apply(opts: argparse.Namespace) -> None:
    """Configure the model runtime; imports it only when something differs from the defaults."""
    changes = settings_changes(opts)
    if opts.deterministic:
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
    if changes:
        from diffusion import memory

        memory.configure(**changes)
