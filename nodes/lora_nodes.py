"""LoRA nodes: LoraLoader, LoraLoaderModelOnly (nodes.py) and LoraSave (comfy_extras.nodes_lora_extract).

Formats, key maps and the extraction maths are diffusion/lora.py's; patches live on clones of the
MODEL / CLIP (diffusion/model_patcher.py), so the loader's objects stay unpatched and no base weight is
copied. LoraLoader keeps the last file it read on the instance (COMPAT §1: node instances are reused
across prompts), so changing only a strength does not read the file again.
"""
from __future__ import annotations

import os

from diffusion.loading.files import read_state_dict
from diffusion.loading.save import save_tensors
from diffusion.lora import apply_lora, lora_from_difference
from nodes import folder_paths
from nodes.sd_loaders import model_path
from nodes.spec import Boolean, Combo, Float, Int, Link, Out, String, mappings, node

LORA_TYPES = ("standard", "full_diff")


def _lora_names() -> list:
    return folder_paths.get_filename_list("loras")


def _strength(name: str, tooltip: str):
    return Float(name, 1.0, min=-100.0, max=100.0, step=0.01, tooltip=tooltip)


class _LoraFileCache:
    """The last LoRA file read by this node instance, as ComfyUI's `LoraLoader.loaded_lora`."""

    loaded_lora = None

    def _read(self, lora_name: str, node_name: str) -> dict:
        path = model_path("loras", lora_name, node_name, "lora_name")
        if self.loaded_lora is not None and self.loaded_lora[0] == path:
            return self.loaded_lora[1]
        sd, _ = read_state_dict(path)
        self.loaded_lora = (path, sd)
        return sd


@node(category="loaders", display_name="Load LoRA",
      description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents "
                  "are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
      outputs=[Out("MODEL", tooltip="The modified diffusion model."),
               Out("CLIP", tooltip="The modified CLIP model.")],
      inputs=[Link("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Link("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              Combo("lora_name", _lora_names, tooltip="The name of the LoRA."),
              _strength("strength_model", "How strongly to modify the diffusion model. This value can be negative."),
              _strength("strength_clip", "How strongly to modify the CLIP model. This value can be negative.")])
class LoraLoader(_LoraFileCache):
    def execute(self, model, clip, lora_name, strength_model, strength_clip):
        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        sd = self._read(lora_name, "LoraLoader")
        return apply_lora(model, clip, sd, float(strength_model), float(strength_clip), name=f"LoRA {lora_name}")


@node(category="loaders",
      description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents "
                  "are denoised such as applying styles. Multiple LoRA nodes can be linked together.",
      outputs=[Out("MODEL")],
      inputs=[Link("model", "MODEL"), Combo("lora_name", _lora_names),
              Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01)])
class LoraLoaderModelOnly(_LoraFileCache):
    def execute(self, model, lora_name, strength_model):
        if strength_model == 0:
            return (model,)
        sd = self._read(lora_name, "LoraLoaderModelOnly")
        return (apply_lora(model, None, sd, float(strength_model), 0.0, name=f"LoRA {lora_name}")[0],)


@node(category="_for_testing", output_node=True,
      inputs=[String("filename_prefix", "loras/ComfyUI_extracted_lora"),
              Int("rank", 8, min=1, max=4096, step=1), Combo("lora_type", list(LORA_TYPES)),
              Boolean("bias_diff", True),
              Link("model_diff", "MODEL", optional=True), Link("text_encoder_diff", "CLIP", optional=True)])
class LoraSave:
    """A LoRA file from a model difference (ModelMergeSubtract / CLIPMergeSubtract output)."""

    def execute(self, filename_prefix, rank, lora_type, bias_diff, model_diff=None, text_encoder_diff=None):
        if model_diff is None and text_encoder_diff is None:
            return {}
        if lora_type not in LORA_TYPES:
            raise ValueError(f"LoraSave: lora_type must be one of {LORA_TYPES}, got {lora_type!r}")
        folder, filename, counter, _, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        full = lora_type == "full_diff"
        sd = {}
        if model_diff is not None:
            sd.update(lora_from_difference(model_diff.patched_state_dict(), int(rank), "diffusion_model.",
                                           full, bool(bias_diff)))
        if text_encoder_diff is not None:
            sd.update(lora_from_difference(text_encoder_diff.patcher.patched_state_dict(), int(rank),
                                           "text_encoders.", full, bool(bias_diff)))
        save_tensors(sd, os.path.join(folder, f"{filename}_{counter:05}_.safetensors"))
        return {}


LoraSave.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_lora_extract"

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(LoraLoader, LoraLoaderModelOnly, LoraSave)
