"""RebatchLatents and RebatchImages (ComfyUI's comfy_extras/nodes_rebatch.py).

Both take their inputs as lists (INPUT_IS_LIST: every upstream batch in one call, and `batch_size` as a
one-item list) and return a list of batches (OUTPUT_IS_LIST), so the nodes after them run once per
batch. The regrouping is diffusion/rebatch.py.
"""
from __future__ import annotations

from diffusion.rebatch import rebatch_images, rebatch_latents
from nodes.spec import Int, Link, Out, mappings, node


def _one(node_name: str, values) -> int:
    """The single widget value INPUT_IS_LIST delivers as a list (ComfyUI uses the first)."""
    value = values[0] if isinstance(values, list) else values
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{node_name}: input 'batch_size' must be a whole number >= 1, got {value!r}")
    return value


@node(category="latent/batch", display_name="Rebatch Latents", input_is_list=True,
      outputs=[Out("LATENT", is_list=True)],
      inputs=[Link("latents", "LATENT"), Int("batch_size", 1, min=1, max=4096)])
class RebatchLatents:
    def execute(self, latents, batch_size):
        return (rebatch_latents(list(latents), _one("RebatchLatents", batch_size)),)


@node(category="image/batch", display_name="Rebatch Images", input_is_list=True,
      outputs=[Out("IMAGE", is_list=True)],
      inputs=[Link("images", "IMAGE"), Int("batch_size", 1, min=1, max=4096)])
class RebatchImages:
    def execute(self, images, batch_size):
        try:
            return (rebatch_images(list(images), _one("RebatchImages", batch_size)),)
        except ValueError as e:
            raise ValueError(f"RebatchImages: input 'images': {e}") from None


for _cls in (RebatchLatents, RebatchImages):
    _cls.RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_rebatch"

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(RebatchLatents, RebatchImages)
