"""Core text-conditioning nodes: CLIPSetLastLayer, CLIPTextEncode, CLIPTextEncodeSDXL(+Refiner).

CONDITIONING is a list of [cond [1, 77·k, D], dict] (COMPAT §1.6). The dict carries "pooled_output"
and, for SDXL, the size conditioning the UNet's ADM input is built from at sampling time: "width",
"height", "crop_w", "crop_h", "target_width", "target_height" (base) or "aesthetic_score", "width",
"height" (refiner). Tokenising and encoding is diffusion/text_encoders.py's CLIP object.
"""
from __future__ import annotations

from nodes.spec import MAX_RESOLUTION, Float, Int, Link, Out, String, mappings, node


def encode(clip, tokens: dict, extra: dict | None = None) -> list:
    """CONDITIONING of one prompt: [[cond, {"pooled_output": pooled, **extra}]]."""
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return [[cond, {"pooled_output": pooled, **(extra or {})}]]


def _pad_to_same_length(tokens: dict, clip) -> dict:
    """Extend the shorter of the "l"/"g" chunk lists with empty-prompt chunks.

    SDXL concatenates both towers' outputs per token, so both need the same number of 77-token
    chunks; padding (rather than cutting the longer prompt) keeps all of both prompts.
    """
    if "l" not in tokens or "g" not in tokens or len(tokens["l"]) == len(tokens["g"]):
        return tokens
    empty = clip.tokenize("")
    out = {k: list(v) for k, v in tokens.items()}
    for key, other in (("l", "g"), ("g", "l")):
        while len(out[key]) < len(out[other]):
            out[key] += empty[key]
    return out


@node(category="conditioning", display_name="CLIP Set Last Layer", outputs=[Out("CLIP")],
      inputs=[Link("clip", "CLIP"), Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1)])
class CLIPSetLastLayer:
    def execute(self, clip, stop_at_clip_layer):
        clip = clip.clone()  # never change the loader's object
        clip.set_last_layer(int(stop_at_clip_layer))
        return (clip,)


def _prompt(name: str, tooltip: str | None = None):
    return String(name, multiline=True, dynamicPrompts=True, tooltip=tooltip)


@node(category="conditioning", display_name="CLIP Text Encode (Prompt)",
      description="Turns a text prompt into conditioning that steers the sampler.",
      outputs=[Out("CONDITIONING", tooltip="Per-token text embeddings plus the pooled embedding.")],
      inputs=[_prompt("text", "The prompt; (words:1.2) changes a phrase's weight."),
              Link("clip", "CLIP", tooltip="The text encoder to use.")])
class CLIPTextEncode:
    def execute(self, clip, text):
        return (encode(clip, clip.tokenize(text)),)


def _size(name: str, default: int):
    return Int(name, default, min=0, max=MAX_RESOLUTION)


@node(category="advanced/conditioning", outputs=[Out("CONDITIONING")],
      inputs=[Link("clip", "CLIP"), _size("width", 1024), _size("height", 1024), _size("crop_w", 0),
              _size("crop_h", 0), _size("target_width", 1024), _size("target_height", 1024),
              _prompt("text_g"), _prompt("text_l")])
class CLIPTextEncodeSDXL:
    def execute(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        tokens = dict(clip.tokenize(text_g))
        if "l" in tokens:  # text_l goes to CLIP-L, text_g to bigG
            tokens["l"] = clip.tokenize(text_l)["l"]
        tokens = _pad_to_same_length(tokens, clip)
        sizes = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                 "target_width": target_width, "target_height": target_height}
        return (encode(clip, tokens, sizes),)


@node(category="advanced/conditioning", outputs=[Out("CONDITIONING")],
      inputs=[Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01), _size("width", 1024),
              _size("height", 1024), _prompt("text"), Link("clip", "CLIP")])
class CLIPTextEncodeSDXLRefiner:
    def execute(self, clip, ascore, width, height, text):
        tokens = clip.tokenize(text)
        return (encode(clip, tokens, {"aesthetic_score": ascore, "width": width, "height": height}),)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    CLIPSetLastLayer, CLIPTextEncode, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner)
# ComfyUI keeps the SDXL encoders in comfy_extras, which /object_info reports as their python_module
# (COMPAT §4); RELATIVE_PYTHON_MODULE is the attribute ComfyUI uses for that (COMPAT §7).
for _cls in (CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner):
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"
del _cls
