"""The model_options setters of MODEL with ComfyUI's names and signatures: sampler hooks (read by
diffusion/sampling/guidance.py), UNet patch points (diffusion/models/unet.py) and object patches.
Plugin packs and diffusion/model_patches/ call them on a clone."""
from __future__ import annotations


class ModelOptions:
    """Mixed into ModelPatcher, which owns `model_options` and `model`."""

    def set_model_sampler_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization: bool = False) -> None:
        self.model_options["sampler_post_cfg_function"] = (
            list(self.model_options.get("sampler_post_cfg_function", [])) + [fn])
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_unet_function_wrapper(self, fn) -> None:
        """fn(apply_model, {"input", "timestep", "c", "cond_or_uncond"}) -> x0, around every model call."""
        self.model_options["model_function_wrapper"] = fn

    def set_model_patch(self, fn, name: str) -> None:
        to = self.model_options["transformer_options"]
        to.setdefault("patches", {}).setdefault(name, []).append(fn)

    def set_model_patch_replace(self, fn, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to = self.model_options["transformer_options"]
        to.setdefault("patches_replace", {}).setdefault(name, {})[key] = fn

    def set_model_attn1_patch(self, fn) -> None:
        self.set_model_patch(fn, "attn1_patch")

    def set_model_attn2_patch(self, fn) -> None:
        self.set_model_patch(fn, "attn2_patch")

    def set_model_attn1_replace(self, fn, block_name, number, transformer_index=None) -> None:
        self.set_model_patch_replace(fn, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, fn, block_name, number, transformer_index=None) -> None:
        self.set_model_patch_replace(fn, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, fn) -> None:
        self.set_model_patch(fn, "attn1_output_patch")

    def set_model_attn2_output_patch(self, fn) -> None:
        self.set_model_patch(fn, "attn2_output_patch")

    def set_model_input_block_patch(self, fn) -> None:
        self.set_model_patch(fn, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, fn) -> None:
        self.set_model_patch(fn, "input_block_patch_after_skip")

    def set_model_middle_block_patch(self, fn) -> None:
        self.set_model_patch(fn, "middle_block_patch")

    def set_model_output_block_patch(self, fn) -> None:
        self.set_model_patch(fn, "output_block_patch")

    # -- object patches: a clone's own model_sampling / latent_format (ModelSamplingDiscrete)
    def add_object_patch(self, name: str, obj) -> None:
        if name not in ("model_sampling", "latent_format"):
            raise ValueError(f"add_object_patch: only 'model_sampling' and 'latent_format' can be replaced, "
                             f"not {name!r}")
        setattr(self, "_" + name, obj)

    def get_model_object(self, name: str):
        if name in ("model_sampling", "latent_format"):
            return getattr(self, name)
        return getattr(self.model, name)
