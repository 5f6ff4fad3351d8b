"""Image-prompt nodes: CLIP vision, unCLIP, style models (ComfyUI's nodes.py classes).

CLIPVisionLoader / CLIPVisionEncode give CLIP_VISION and CLIP_VISION_OUTPUT
(diffusion/models/clip_vision.py); unCLIPCheckpointLoader adds the CLIP vision tower an SD2.1-unCLIP
checkpoint embeds; unCLIPConditioning appends {"clip_vision_output", "strength",
"noise_augmentation"} to each conditioning's "unclip_conditioning" list, which the model turns into
its ADM input at sampling time (diffusion/models/adm.py: SD2.1-unCLIP, and SDXL "revision", where
the image embedding replaces the pooled text embedding). StyleModelLoader / StyleModelApply append a
T2I style adapter's tokens to the prompt (diffusion/models/style_model.py).
"""
from __future__ import annotations

import torch

from diffusion.loading.checkpoint import load_checkpoint
from diffusion.loading.vision import load_clip_vision, load_style_model
from diffusion.models.clip_vision import CROP_MODES
from nodes import folder_paths
from nodes.sd_loaders import model_path
from nodes.spec import Combo, Float, Link, Out, mappings, node

STRENGTH_TYPES = ("multiply", "attn_bias")


@node(category="loaders", display_name="Load CLIP Vision", outputs=[Out("CLIP_VISION")],
      inputs=[Combo("clip_name", lambda: folder_paths.get_filename_list("clip_vision"))])
class CLIPVisionLoader:
    def execute(self, clip_name):
        return (load_clip_vision(model_path("clip_vision", clip_name, "CLIPVisionLoader", "clip_name")),)


@node(category="conditioning", display_name="CLIP Vision Encode", outputs=[Out("CLIP_VISION_OUTPUT")],
      inputs=[Link("clip_vision", "CLIP_VISION"), Link("image", "IMAGE"), Combo("crop", list(CROP_MODES))])
class CLIPVisionEncode:
    def execute(self, clip_vision, image, crop):
        if crop not in CROP_MODES:
            raise ValueError(f"CLIPVisionEncode: crop must be one of {list(CROP_MODES)}, got {crop!r}")
        return (clip_vision.encode_image(image, crop=crop == "center"),)


@node(category="loaders", outputs=[Out("MODEL"), Out("CLIP"), Out("VAE"), Out("CLIP_VISION")],
      inputs=[Combo("ckpt_name", lambda: folder_paths.get_filename_list("checkpoints"))])
class unCLIPCheckpointLoader:  # noqa: N801 (ComfyUI's class name)
    def execute(self, ckpt_name):
        path = model_path("checkpoints", ckpt_name, "unCLIPCheckpointLoader", "ckpt_name")
        loaded = load_checkpoint(path, embedding_dirs=folder_paths.get_folder_paths("embeddings"),
                                 output_clip_vision=True)
        return loaded.model, loaded.clip, loaded.vae, loaded.clip_vision


@node(category="conditioning", outputs=[Out("CONDITIONING")],
      inputs=[Link("conditioning", "CONDITIONING"), Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
              Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01)])
class unCLIPConditioning:  # noqa: N801 (ComfyUI's class name)
    def execute(self, conditioning, clip_vision_output, strength, noise_augmentation):
        if strength == 0:  # as ComfyUI: nothing to add
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": float(strength),
                 "noise_augmentation": float(noise_augmentation)}
        out = []
        for t, options in conditioning:
            options = dict(options)
            options["unclip_conditioning"] = list(options.get("unclip_conditioning", [])) + [entry]
            out.append([t, options])
        return (out,)


@node(category="loaders", display_name="Load Style Model", outputs=[Out("STYLE_MODEL")],
      inputs=[Combo("style_model_name", lambda: folder_paths.get_filename_list("style_models"))])
class StyleModelLoader:
    def execute(self, style_model_name):
        path = model_path("style_models", style_model_name, "StyleModelLoader", "style_model_name")
        return (load_style_model(path),)


@node(category="conditioning/style_model", display_name="Apply Style Model", outputs=[Out("CONDITIONING")],
      inputs=[Link("conditioning", "CONDITIONING"), Link("style_model", "STYLE_MODEL"),
              Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.001), Combo("strength_type", list(STRENGTH_TYPES))])
class StyleModelApply:
    """Appends the style tokens (all images' tokens, one after another) to every prompt.

    "multiply" scales the tokens. "attn_bias" leaves them unscaled and, as ComfyUI, records
    log(strength) for them in an "attention_mask" over the prompt's tokens; ComfyUI's SD UNets do
    not read that mask (only models with joint attention do), and neither does ours, so on SD models
    attn_bias acts as strength 1.
    """

    def execute(self, conditioning, style_model, clip_vision_output, strength, strength_type):
        if strength_type not in STRENGTH_TYPES:
            raise ValueError(f"StyleModelApply: strength_type must be one of {list(STRENGTH_TYPES)}, "
                             f"got {strength_type!r}")
        tokens = style_model.get_cond(clip_vision_output).flatten(0, 1).unsqueeze(0)
        if strength_type == "multiply":
            tokens = tokens * strength
        out = []
        for t, options in conditioning:
            if tokens.shape[-1] != t.shape[-1]:
                raise ValueError(f"StyleModelApply: the style model makes {tokens.shape[-1]}-wide tokens, "
                                 f"the conditioning has {t.shape[-1]}-wide ones (a model of another family?)")
            options = dict(options)
            if "attention_mask" in options or (strength_type == "attn_bias" and strength != 1.0):
                options.update(_attention_mask(options, t, tokens.shape[1],
                                               strength if strength_type == "attn_bias" else 1.0))
            out.append([torch.cat([t, tokens.to(t)], dim=1), options])
        return (out,)


def _attention_mask(options: dict, text: torch.Tensor, n: int, strength: float) -> dict:
    """ComfyUI's attention mask with log(strength) on the new tokens' columns (fp16, as ComfyUI)."""
    ref = options.get("attention_mask_img_shape", (1, 1))
    n_ref, n_txt = ref[0] * ref[1], text.shape[1]
    bias = torch.log(torch.tensor([float(strength)]))
    mask = options.get("attention_mask")
    if mask is None:
        mask = torch.zeros((text.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(torch.float16))
    new = torch.zeros((text.shape[0], n_txt + n + n_ref, n_txt + n + n_ref), dtype=torch.float16)
    new[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    new[:, :n_txt, n_txt + n:] = mask[:, :n_txt, n_txt:]
    new[:, n_txt + n:, :n_txt] = mask[:, n_txt:, :n_txt]
    new[:, n_txt + n:, n_txt + n:] = mask[:, n_txt:, n_txt:]
    new[:, :n_txt, n_txt:n_txt + n] = bias
    new[:, n_txt + n:, n_txt:n_txt + n] = bias
    return {"attention_mask": new.to(text.device), "attention_mask_img_shape": ref}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    CLIPVisionLoader, CLIPVisionEncode, unCLIPCheckpointLoader, unCLIPConditioning, StyleModelLoader,
    StyleModelApply)
