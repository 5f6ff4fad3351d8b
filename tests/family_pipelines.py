"""Test helper: one tiny model per family (SD1, SD2-v, SDXL base, SDXL refiner) held twice with the same
random weights: as diffusers' pipeline for that family, and as an original single-file checkpoint that
our CheckpointLoaderSimple reads.

Built from the diffusers/transformers side and converted to the file layout with the test key maps
(unet_keymap, vae_keymap, clip_reference), which are written independently of diffusion/. Every weight
is rounded through fp16 first: our runtime stores text encoders in fp16 (as ComfyUI does), so both sides
then hold exactly the same values.

How diffusers represents each family (what its single-file converters build from a release file):
- SD1: CLIPTextModel (CLIP-L), the prompt embedding is `last_hidden_state`, clip skip k is
  `final_layer_norm(hidden_states[-(k + 1)])`.
- SD2: the OpenCLIP-H text tower WITHOUT its last layer (diffusers' SD2 text encoder has 23 of the 24
  layers), so `last_hidden_state` is the final-normed penultimate layer.
- SDXL: CLIP-L and bigG (with projection), both `hidden_states[-(k + 2)]` without final norm,
  concatenated; pooled = bigG's projected EOS state.
- SDXL refiner: bigG alone (StableDiffusionXLImg2ImgPipeline with no first text encoder).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from clip_reference import checkpoint_text_weights, hf_model
from unet_keymap import diffusers_unet_to_original, randomize_
from vae_keymap import diffusers_vae_to_original, tiny_diffusers_vae

SIZE_EMBED = 256  # ComfyUI embeds each SDXL size value with Timestep(256), as the released models do
VAE_LEVELS = 4  # 8x downsampling, so pixel sizes mean the same on both sides

TOWER_SIZES = {
    "L": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
              projection_dim=32, hidden_act="quick_gelu"),
    "H": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              projection_dim=48, hidden_act="gelu"),
    "G": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
              projection_dim=40, hidden_act="gelu"),
}
_LINEAR = dict(use_linear_projection=True, sample_size=8, layers_per_block=1)
UNETS = {
    "sd1": dict(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8),
    "sd2": dict(**_LINEAR, block_out_channels=(64, 128),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
                attention_head_dim=(1, 2)),
    "sdxl": dict(**_LINEAR, block_out_channels=(32, 64, 64),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 cross_attention_dim=64, attention_head_dim=(1, 1, 1), addition_embed_type="text_time",
                 addition_time_embed_dim=SIZE_EMBED, projection_class_embeddings_input_dim=40 + 6 * SIZE_EMBED),
    "sdxl_refiner": dict(**_LINEAR, block_out_channels=(32, 64, 64, 64),
                         down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                           "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                         cross_attention_dim=32, attention_head_dim=(1, 1, 1, 1),
                         addition_embed_type="text_time", addition_time_embed_dim=SIZE_EMBED,
                         projection_class_embeddings_input_dim=40 + 5 * SIZE_EMBED),
}
TOWERS = {"sd1": ("L",), "sd2": ("H",), "sdxl": ("L", "G"), "sdxl_refiner": ("G",)}
SCALE = {"sd1": 0.18215, "sd2": 0.18215, "sdxl": 0.13025, "sdxl_refiner": 0.13025}
EMBED_KEY = {"L": "clip_l", "H": "clip_h", "G": "clip_g"}
FAMILIES = tuple(UNETS)


@dataclass
class Family:
    arch: str
    checkpoint: Path
    pipe: object  # the diffusers pipeline
    towers: dict = field(default_factory=dict)  # "L"/"H"/"G" -> transformers model (full depth)

    @property
    def scale(self) -> float:
        return SCALE[self.arch]


def _fp16_exact(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def _tower(key: str, seed: int):
    # CLIP-L is a CLIPTextModel in both pipelines; OpenCLIP-H and bigG carry a text projection.
    model = copy.deepcopy(hf_model(TOWER_SIZES[key], projection=key != "L", seed=seed))
    return _with_text_model_alias(_fp16_exact(model))


def _with_text_model_alias(model):
    """diffusers' clip-skip path reads `text_encoder.text_model.final_layer_norm`; transformers 5 builds
    CLIPTextModel without the `text_model` level. A plain attribute (not a submodule) bridges the two."""
    if not hasattr(model, "text_model"):
        from types import SimpleNamespace
        object.__setattr__(model, "text_model", SimpleNamespace(final_layer_norm=model.final_layer_norm))
    return model


def _without_last_layer(model):
    """diffusers' SD2 text encoder: the same tower with its last transformer layer removed."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{**model.config.to_dict(), "num_hidden_layers": model.config.num_hidden_layers - 1})
    short = CLIPTextModel(cfg).eval()
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()
             if not k.startswith("text_projection")}
    wanted = set(short.state_dict())
    prefixed = not any(k.startswith("text_model.") for k in wanted)
    state = {(k if prefixed else "text_model." + k): v for k, v in state.items()}
    short.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=False)
    missing = wanted - set(state)
    assert all(k.endswith("position_ids") for k in missing), sorted(missing)[:3]
    return _with_text_model_alias(short)


def tokenizer_dir(root: Path) -> Path:
    """vocab.json + merges.txt for transformers' CLIPTokenizer from the BPE file the project ships."""
    from diffusion.text.tokenizer import build_vocab, read_merges

    merges = read_merges()
    vocab = build_vocab(merges)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                     encoding="utf-8")
    return root


def _tokenizer(root: Path, pad_with_zero: bool):
    from transformers import CLIPTokenizer

    # ComfyUI and diffusers pad OpenCLIP (SD2's H, SDXL's bigG) prompts with "!" (id 0), CLIP-L with EOS.
    kw = {"pad_token": "!"} if pad_with_zero else {"pad_token": "<|endoftext|>"}
    return CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77, **kw)


def _scheduler(prediction: str):
    from diffusers import EulerDiscreteScheduler

    # "leading" spacing makes init_noise_sigma sqrt(1 + sigma_max^2), ComfyUI's full-denoise scaling.
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                  prediction_type=prediction)


def build_family(arch: str, root: Path, seed: int = 0) -> Family:
    """Write `root/<arch>.safetensors` and return it with the diffusers pipeline of the same weights."""
    from diffusers import (StableDiffusionPipeline, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)

    towers = {key: _tower(key, seed + i) for i, key in enumerate(TOWERS[arch])}
    unet = UNet2DConditionModel(**UNETS[arch]).eval()
    randomize_(unet, seed)
    _fp16_exact(unet)
    vae = _fp16_exact(tiny_diffusers_vae(seed, block_out_channels=(32,) * VAE_LEVELS))
    vae.register_to_config(scaling_factor=SCALE[arch])

    sd = {"model.diffusion_model." + k: v for k, v in diffusers_unet_to_original(unet).items()}
    sd.update({"first_stage_model." + k: v for k, v in diffusers_vae_to_original(vae.state_dict(), VAE_LEVELS).items()})
    sd.update(checkpoint_text_weights(arch, towers))
    metadata = {"modelspec.prediction_type": "v"} if arch == "sd2" else {}
    path = root / f"family-{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=metadata)

    tok = tokenizer_dir(root / "tokenizer")
    common = dict(vae=vae, unet=unet)
    if arch in ("sd1", "sd2"):
        text_encoder = towers["L"] if arch == "sd1" else _without_last_layer(towers["H"])
        pipe = StableDiffusionPipeline(**common, text_encoder=text_encoder, tokenizer=_tokenizer(tok, arch == "sd2"),
                                       scheduler=_scheduler("v_prediction" if arch == "sd2" else "epsilon"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    elif arch == "sdxl":
        pipe = StableDiffusionXLPipeline(**common, text_encoder=towers["L"], tokenizer=_tokenizer(tok, False),
                                         text_encoder_2=towers["G"], tokenizer_2=_tokenizer(tok, True),
                                         scheduler=_scheduler("epsilon"), force_zeros_for_empty_prompt=False)
    else:
        pipe = StableDiffusionXLImg2ImgPipeline(**common, text_encoder=None, tokenizer=None,
                                                text_encoder_2=towers["G"], tokenizer_2=_tokenizer(tok, True),
                                                scheduler=_scheduler("epsilon"), requires_aesthetics_score=True,
                                                force_zeros_for_empty_prompt=False)
    pipe.set_progress_bar_config(disable=True)
    return Family(arch, path, pipe, towers)


def embedding_vectors(arch: str, n: int = 2, seed: int = 5) -> dict[str, torch.Tensor]:
    """A textual-inversion embedding of `n` vectors per tower of `arch`, fp16-exact: {"clip_l": ...}."""
    gen = torch.Generator().manual_seed(seed)
    return {EMBED_KEY[key]: (torch.randn(n, TOWER_SIZES[key]["hidden_size"], generator=gen) * 0.02).half().float()
            for key in TOWERS[arch]}


def _encoders_with_keys(pipe, arch: str):
    """(embedding key, text encoder, tokenizer) for each text encoder of the pipeline."""
    first = [("clip_h" if arch == "sd2" else "clip_l", pipe.text_encoder, pipe.tokenizer)]
    if arch in ("sd1", "sd2"):
        return first
    second = [("clip_g", pipe.text_encoder_2, pipe.tokenizer_2)]
    return first + second if arch == "sdxl" else second


def load_embedding_into_pipe(pipe, arch: str, vectors: dict, token: str) -> None:
    """diffusers' own textual-inversion loader, once per text encoder."""
    for key, encoder, tokenizer in _encoders_with_keys(pipe, arch):
        pipe.load_textual_inversion(vectors[key], token=token, text_encoder=encoder, tokenizer=tokenizer)


def unload_embeddings_from_pipe(pipe, arch: str) -> None:
    for _, encoder, tokenizer in _encoders_with_keys(pipe, arch):
        pipe.unload_textual_inversion(tokenizer=tokenizer, text_encoder=encoder)
