"""GLIGEN text boxes: GLIGENLoader ("gligen" folder) and GLIGENTextBoxApply (ComfyUI's nodes.py).

GLIGEN is the runtime network of diffusion/models/gligen.py. A text box adds to every conditioning
entry 'gligen' = ("position", GLIGEN, [(pooled text, h, w, y, x), ...]) in latent units (pixels // 8),
appended to the boxes already there; the sampler applies it per forward (diffusion/sampling/guidance.py).
"""
from __future__ import annotations

from diffusion.loading.files import read_state_dict
from diffusion.models.gligen import load_gligen
from nodes import folder_paths
from nodes.sd_loaders import model_path
from nodes.spec import MAX_RESOLUTION, Combo, Int, Link, Out, String, mappings, node

LATENT_SCALE = 8


def _gligen_names():
    return folder_paths.get_filename_list("gligen")


@node(category="loaders", outputs=[Out("GLIGEN")], inputs=[Combo("gligen_name", _gligen_names)])
class GLIGENLoader:
    def execute(self, gligen_name):
        path = model_path("gligen", gligen_name, "GLIGENLoader", "gligen_name")
        sd, _ = read_state_dict(path)
        return (load_gligen(sd, where=f"GLIGENLoader: '{gligen_name}'"),)


def _box(name, default, minimum):
    return Int(name, default, min=minimum, max=MAX_RESOLUTION, step=8)


@node(category="conditioning/gligen", outputs=[Out("CONDITIONING")],
      inputs=[Link("conditioning_to", "CONDITIONING"), Link("clip", "CLIP"),
              Link("gligen_textbox_model", "GLIGEN"), String("text", multiline=True, dynamicPrompts=True),
              _box("width", 64, 8), _box("height", 64, 8), _box("x", 0, 0), _box("y", 0, 0)])
class GLIGENTextBoxApply:
    def execute(self, conditioning_to, clip, gligen_textbox_model, text, width, height, x, y):
        # the phrase's pooled embedding before the text projection: what the position net was trained on
        _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled="unprojected")
        box = (pooled, height // LATENT_SCALE, width // LATENT_SCALE, y // LATENT_SCALE, x // LATENT_SCALE)
        out = []
        for cond, options in conditioning_to:
            previous = options["gligen"][2] if "gligen" in options else []
            out.append([cond, {**options, "gligen": ("position", gligen_textbox_model, previous + [box])}])
        return (out,)


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(GLIGENLoader, GLIGENTextBoxApply)
