"""ControlNet and T2I-Adapter nodes: ControlNetLoader, DiffControlNetLoader, ControlNetApply,
ControlNetApplyAdvanced (COMPAT §9).

A CONTROL_NET (diffusion/models/controlnet.py) rides in a conditioning's dict under "control"; the
sampler's guidance evaluates it on every forward of that conditioning. Applying one copies the
loader's object with the hint image, strength and percent range, and chains the conditioning's
previous control behind it, so several ControlNets stack.
"""
from __future__ import annotations

from diffusion.loading.controlnet import load_controlnet
from nodes import folder_paths
from nodes.sd_loaders import model_path
from nodes.spec import Combo, Float, Link, Out, mappings, node


def _controlnet_names() -> list:
    return folder_paths.get_filename_list("controlnet")


def _strength():
    return Float("strength", 1.0, min=0.0, max=10.0, step=0.01)


def _percent(name: str, default: float):
    return Float(name, default, min=0.0, max=1.0, step=0.001)


def _hint(image, control_net, node_name: str):
    """IMAGE [B, H, W, C] as the [B, C, H, W] hint, checked against what the network reads."""
    if image.ndim != 4:
        raise ValueError(f"{node_name}: input 'image' must be an IMAGE [B, H, W, C], got shape {tuple(image.shape)}")
    hint = image.movedim(-1, 1)
    try:
        control_net.check_hint(hint)
    except ValueError as e:
        raise ValueError(f"{node_name}: input 'image': {e}") from None
    return hint


@node(category="loaders", display_name="Load ControlNet Model", outputs=[Out("CONTROL_NET")],
      inputs=[Combo("control_net_name", _controlnet_names)])
class ControlNetLoader:
    def execute(self, control_net_name):
        return (load_controlnet(model_path("controlnet", control_net_name, "ControlNetLoader", "control_net_name")),)


@node(category="loaders", display_name="Load ControlNet Model (diff)", outputs=[Out("CONTROL_NET")],
      inputs=[Link("model", "MODEL"), Combo("control_net_name", _controlnet_names)])
class DiffControlNetLoader:
    def execute(self, model, control_net_name):
        path = model_path("controlnet", control_net_name, "DiffControlNetLoader", "control_net_name")
        return (load_controlnet(path, model=model),)


@node(category="conditioning/controlnet", display_name="Apply ControlNet (OLD)", deprecated=True,
      outputs=[Out("CONDITIONING")],
      inputs=[Link("conditioning", "CONDITIONING"), Link("control_net", "CONTROL_NET"), Link("image", "IMAGE"),
              _strength()])
class ControlNetApply:
    """Positive side only; the sampler hands the same control to the negative side
    (control_apply_to_uncond), as ComfyUI's deprecated node does."""

    def execute(self, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        hint = _hint(image, control_net, "ControlNetApply")
        out = []
        for cond, options in conditioning:
            control = control_net.with_hint(hint, strength, previous=options.get("control"))
            out.append([cond, {**options, "control": control, "control_apply_to_uncond": True}])
        return (out,)


@node(category="conditioning/controlnet", display_name="Apply ControlNet",
      outputs=[Out("CONDITIONING", "positive"), Out("CONDITIONING", "negative")],
      inputs=[Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"),
              Link("control_net", "CONTROL_NET"), Link("image", "IMAGE"), _strength(),
              _percent("start_percent", 0.0), _percent("end_percent", 1.0), Link("vae", "VAE", optional=True)])
class ControlNetApplyAdvanced:
    """`vae` is for ControlNets that read a latent hint (SD3 / Flux ones in ComfyUI); the SD1 / SD2 /
    SDXL ControlNets and T2I-Adapters loaded here read pixels, so it is accepted and unused."""

    def execute(self, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if strength == 0:
            return (positive, negative)
        hint = _hint(image, control_net, "ControlNetApplyAdvanced")
        made = {}  # one control per previous control, shared by positive and negative
        out = []
        for conditioning in (positive, negative):
            items = []
            for cond, options in conditioning:
                previous = options.get("control")
                if id(previous) not in made:
                    made[id(previous)] = control_net.with_hint(hint, strength, (start_percent, end_percent), previous)
                items.append([cond, {**options, "control": made[id(previous)], "control_apply_to_uncond": False}])
            out.append(items)
        return tuple(out)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced)
