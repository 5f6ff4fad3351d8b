"""Model patches (ComfyUI's comfy_extras nodes_model_advanced, nodes_freelunch, nodes_perpneg,
nodes_sag, nodes_model_downscale, nodes_tomesd, nodes_hypernetwork): each clones the MODEL and sets
hooks on the clone (diffusion/model_patches/); the UNet and its weights are shared, never copied.
"""
from __future__ import annotations

from diffusion.model_patches import downscale, freeu, hypernetwork, perp_neg, sag, sampling, tome
from diffusion.model_patches.sampling import model_sampling_for as _discrete
from nodes.image_ops import comfy_extras
from nodes.sd_loaders import model_path
from nodes import folder_paths
from nodes.spec import Boolean, Combo, Float, Int, Link, Out, mappings, node

_MODEL = Link("model", "MODEL")


def _model_channels(model, node_name: str) -> int:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_channels"):
        raise ValueError(f"{node_name}: input 'model' has no UNet config (model_channels); "
                         "FreeU patches SD UNets")
    return int(config.model_channels)


@node(category="advanced/model", outputs=[Out("MODEL")],
      inputs=[_MODEL, Combo("sampling", list(sampling.SAMPLINGS)), Boolean("zsnr", False)])
class ModelSamplingDiscrete:
    def execute(self, model, sampling, zsnr):
        m = model.clone()
        m.add_object_patch("model_sampling", _discrete(model.model_sampling, sampling, zsnr))
        return (m,)


@node(category="advanced/model", outputs=[Out("MODEL")],
      inputs=[_MODEL, Float("multiplier", 0.7, min=0.0, max=1.0, step=0.01)])
class RescaleCFG:
    def execute(self, model, multiplier):
        m = model.clone()
        m.set_model_sampler_cfg_function(sampling.rescale_cfg(multiplier))
        return (m,)


def _freeu_inputs(b1, b2):
    return [_MODEL] + [Float(name, default, min=0.0, max=10.0, step=0.01)
                       for name, default in (("b1", b1), ("b2", b2), ("s1", 0.9), ("s2", 0.2))]


@node(category="model_patches/unet", outputs=[Out("MODEL")], inputs=_freeu_inputs(1.1, 1.2))
class FreeU:
    version = 1

    def execute(self, model, b1, b2, s1, s2):
        m = model.clone()
        channels = _model_channels(model, type(self).__name__)
        m.set_model_output_block_patch(freeu.freeu_patch(channels, b1, b2, s1, s2, version=self.version))
        return (m,)


@node(category="model_patches/unet", outputs=[Out("MODEL")], inputs=_freeu_inputs(1.3, 1.4))
class FreeU_V2(FreeU):
    version = 2


@node(category="_for_testing", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)", outputs=[Out("MODEL")],
      experimental=True, deprecated=True,
      inputs=[_MODEL, Link("empty_conditioning", "CONDITIONING"),
              Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01)])
class PerpNeg:
    def execute(self, model, empty_conditioning, neg_scale):
        m = model.clone()
        m.set_model_sampler_cfg_function(perp_neg.perp_neg_cfg_function(empty_conditioning, neg_scale))
        return (m,)


@node(category="_for_testing", outputs=[Out("GUIDER")], experimental=True,
      inputs=[_MODEL, Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"),
              Link("empty_conditioning", "CONDITIONING"), Float("cfg", 8.0, min=0.0, max=100.0, step=0.1, round=0.01),
              Float("neg_scale", 1.0, min=0.0, max=100.0, step=0.01)])
class PerpNegGuider:
    def execute(self, model, positive, negative, empty_conditioning, cfg, neg_scale):
        return (perp_neg.PerpNegGuider(model, positive, negative, empty_conditioning, cfg, neg_scale),)


@node(category="_for_testing", display_name="Self-Attention Guidance", outputs=[Out("MODEL")],
      inputs=[_MODEL, Float("scale", 0.5, min=-2.0, max=5.0, step=0.01),
              Float("blur_sigma", 2.0, min=0.0, max=10.0, step=0.1)])
class SelfAttentionGuidance:
    def execute(self, model, scale, blur_sigma):
        m = model.clone()
        record, post_cfg = sag.sag_patches(scale, blur_sigma)
        m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
        # the middle block's first transformer, as in the SAG paper's diffusers pipeline
        m.set_model_attn1_replace(record, "middle", 0, 0)
        return (m,)


def _percent(name, default):
    return Float(name, default, min=0.0, max=1.0, step=0.001)


@node(category="_for_testing", display_name="PatchModelAddDownscale (Kohya Deep Shrink)", outputs=[Out("MODEL")],
      inputs=[_MODEL, Int("block_number", 3, min=1, max=32, step=1),
              Float("downscale_factor", 2.0, min=0.1, max=9.0, step=0.001), _percent("start_percent", 0.0),
              _percent("end_percent", 0.35), Boolean("downscale_after_skip", True),
              Combo("downscale_method", list(downscale.METHODS)), Combo("upscale_method", list(downscale.METHODS))])
class PatchModelAddDownscale:
    def execute(self, model, block_number, downscale_factor, start_percent, end_percent, downscale_after_skip,
                downscale_method, upscale_method):
        shrink, grow = downscale.deep_shrink_patches(model.model_sampling, block_number, downscale_factor,
                                                     start_percent, end_percent, downscale_method, upscale_method)
        m = model.clone()
        if downscale_after_skip:
            m.set_model_input_block_patch_after_skip(shrink)
        else:
            m.set_model_input_block_patch(shrink)
        m.set_model_output_block_patch(grow)
        return (m,)


@node(category="_for_testing", outputs=[Out("MODEL")],
      inputs=[_MODEL, Float("ratio", 0.3, min=0.0, max=1.0, step=0.01)])
class TomePatchModel:
    def execute(self, model, ratio):
        merge, unmerge = tome.tome_patches(ratio)
        m = model.clone()
        m.set_model_attn1_patch(merge)
        m.set_model_attn1_output_patch(unmerge)
        return (m,)


def _hypernetwork_names():
    return folder_paths.get_filename_list("hypernetworks")


@node(category="loaders", outputs=[Out("MODEL")],
      inputs=[_MODEL, Combo("hypernetwork_name", _hypernetwork_names),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01)])
class HypernetworkLoader:
    def execute(self, model, hypernetwork_name, strength):
        path = model_path("hypernetworks", hypernetwork_name, "HypernetworkLoader", "hypernetwork_name")
        patch = hypernetwork.load_hypernetwork(hypernetwork.read_hypernetwork_file(path), strength,
                                               where=f"HypernetworkLoader: '{hypernetwork_name}'")
        m = model.clone()
        m.set_model_attn1_patch(patch)
        m.set_model_attn2_patch(patch)
        return (m,)


comfy_extras("nodes_model_advanced", ModelSamplingDiscrete, RescaleCFG)
comfy_extras("nodes_freelunch", FreeU, FreeU_V2)
comfy_extras("nodes_perpneg", PerpNeg, PerpNegGuider)
comfy_extras("nodes_sag", SelfAttentionGuidance)
comfy_extras("nodes_model_downscale", PatchModelAddDownscale)
comfy_extras("nodes_tomesd", TomePatchModel)
comfy_extras("nodes_hypernetwork", HypernetworkLoader)

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(
    ModelSamplingDiscrete, RescaleCFG, FreeU, FreeU_V2, PerpNeg, PerpNegGuider, SelfAttentionGuidance,
    PatchModelAddDownscale, TomePatchModel, HypernetworkLoader)
