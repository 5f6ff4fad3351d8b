"""Reference CLIP text models from transformers and their conversion to the checkpoint layouts.

The mapping here is written independently of diffusion/loading/keymaps.py (the key map our one CLIP
network loads and saves through), so a test passing means our state dicts really are the file layouts.
"""
from __future__ import annotations

import functools

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffusion.loading.config import ClipTextConfig, heads_for_width
from diffusion.text.encoder import TOWERS
from tools.make_tiny_checkpoint import new_clip, randomise_clip

VOCAB = 49408
CONTEXT = 77

# Sizes of the released text models (OpenAI ViT-L/14, LAION ViT-H/14, LAION ViT-bigG/14).
FULL_SIZES = {
    "L": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu"),
    "H": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              projection_dim=1024, hidden_act="gelu"),
    "G": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
              projection_dim=1280, hidden_act="gelu"),
}
# Scaled-down stand-ins: 4 (or 2) heads of 16 channels, the rule diffusion.loading.config.heads_for_width uses.
TINY_SIZES = {
    "L": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              projection_dim=64, hidden_act="quick_gelu"),
    "H": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
              projection_dim=48, hidden_act="gelu"),
    "G": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
              projection_dim=40, hidden_act="gelu"),
}


def hf_config(sizes: dict) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=CONTEXT, layer_norm_eps=1e-5,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
                          attn_implementation="eager", **sizes)


def hf_model(sizes: dict, projection: bool, seed: int = 0):
    """Random-weight transformers text model; LayerNorms and biases randomised too (init leaves them 1/0).

    Built once per (sizes, projection, seed) and shared: callers must not modify it (deepcopy first).
    """
    return _hf_model(tuple(sorted(sizes.items())), projection, seed)


@functools.lru_cache(maxsize=None)
def _hf_model(sizes: tuple, projection: bool, seed: int):
    sizes = dict(sizes)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    model = cls(hf_config(sizes)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_model_on_meta(sizes: dict, projection: bool):
    with torch.device("meta"):
        cls = CLIPTextModelWithProjection if projection else CLIPTextModel
        return cls(hf_config(sizes))


def hf_layout(state: dict) -> dict:
    """transformers' CLIP text keys -> the SD1/SDXL-L file layout (`text_model.*`, `text_projection.weight`).

    transformers 5 builds CLIPTextModel without the `text_model.` level (it renames on load), while
    CLIPTextModelWithProjection keeps it; files always have it. The position_ids buffer is dropped.
    """
    out = {}
    for k, v in state.items():
        if k.endswith("position_ids"):
            continue
        if not k.startswith(("text_model.", "text_projection.")):
            k = "text_model." + k
        out[k] = v
    return out


def final_norm_of(model):
    return getattr(model, "text_model", model).final_layer_norm


def open_clip_layout(state: dict, layers: int) -> dict:
    """transformers CLIPTextModelWithProjection state dict -> open_clip text-tower keys."""
    state = hf_layout(state)
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        # open_clip multiplies x @ text_projection; a Linear stores the transpose.
        "text_projection": state["text_projection.weight"].t(),
    }
    renames = {
        "layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    }
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{part}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{part}"] for p in ("q", "k", "v")], dim=0)
            for old, new in renames.items():
                out[f"{dst}{new}.{part}"] = state[f"{src}{old}.{part}"]
    return out


def with_prefix(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


def checkpoint_text_weights(arch: str, models: dict) -> dict:
    """The text-encoder part of a single-file checkpoint for `arch`, from reference models keyed L/H/G."""
    def oc(m):
        return open_clip_layout(m.state_dict(), m.config.num_hidden_layers)

    if arch == "sd1":
        return with_prefix("cond_stage_model.transformer.", hf_layout(models["L"].state_dict()))
    if arch == "sd2":
        return with_prefix("cond_stage_model.model.", oc(models["H"]))
    if arch == "sdxl":
        return {**with_prefix("conditioner.embedders.0.transformer.", hf_layout(models["L"].state_dict())),
                **with_prefix("conditioner.embedders.1.model.", oc(models["G"]))}
    if arch == "sdxl_refiner":
        return with_prefix("conditioner.embedders.0.model.", oc(models["G"]))
    raise ValueError(arch)


def reference_outputs(model, ids: torch.Tensor):
    """transformers' outputs: (all hidden states, final-normed last state, pooled, projected pooled).

    hidden_states[0] is the embeddings and hidden_states[i] the output of layer i (1-based).
    """
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    last = out.last_hidden_state
    if hasattr(out, "text_embeds"):  # with projection: transformers does not return the unprojected pool
        eos = (ids == 49407).int().argmax(-1)
        return out.hidden_states, last, last[torch.arange(ids.shape[0]), eos], out.text_embeds
    return out.hidden_states, last, out.pooler_output, out.pooler_output


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to max |b| (a scale-free bound that does not blow up near zeros)."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def random_text_encoder_weights(arch: str, widths: dict[str, int] | None = None, layers: int = 2,
                                seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random text-encoder weights for `arch` under the original checkpoint keys.

    `widths` maps tower keys ("l", "h", "g") to their width (default 32 each; heads follow
    `heads_for_width`); bigG and OpenCLIP-H get a text projection of their own width, as released.
    The SDXL UNet's context width must equal widths["l"] + widths["g"].
    """
    widths = widths or {}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = {}
        for spec in TOWERS[arch]:
            width = widths.get(spec.key, 32)
            config = ClipTextConfig(
                layout="hf" if spec.key == "l" else "open_clip", width=width, layers=layers,
                heads=heads_for_width(width), vocab_size=VOCAB, context_length=CONTEXT,
                projection_dim=None if spec.key == "l" else width, activation=spec.activation,
            )
            model = randomise_clip(new_clip(config))
            out.update({spec.prefix + k: v.to(dtype).contiguous() for k, v in model.state_dict().items()})
        return out
    finally:
        torch.random.set_rng_state(generator_state)
