"""The CLIP vision tower (ViT-L/14, ViT-H/14, ViT-bigG/14), its image preprocessing, and CLIP_VISION.

The network carries transformers' CLIPVisionModelWithProjection names (`vision_model.embeddings.*`,
`vision_model.pre_layrnorm`, `vision_model.encoder.layers.N.*`, `vision_model.post_layernorm`,
`visual_projection.weight`) and reuses the text tower's transformer layers (diffusion/models/clip.py)
without the causal mask. `state_dict()` / `load_state_dict()` speak the file's layout
(`config.layout`, "hf" or "open_clip") through `diffusion.loading.vision_config.clip_vision_key_map`.

What it returns is ComfyUI's (`comfy/clip_vision.py`): `last_hidden_state` is the last layer's raw
output (no post LayerNorm, as transformers' too), `penultimate_hidden_states` the raw output of the
layer before it, `image_embeds` the post-normed class token through the projection.

Precision as ComfyUI: the transformer layers are stored in the text-encoder storage dtype (fp16 by
default), the embeddings, the two LayerNorms and the projection in float32, and everything computes
in float32 (ComfyUI feeds float32 pixels through manual-cast layers).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusion import memory
from diffusion.loading.keymaps import use_file_layout
from diffusion.loading.vision_config import ClipVisionConfig, clip_vision_key_map
from diffusion.model_patcher import ModelPatcher
from diffusion.models.clip import CastLayerNorm, CastLinear, _Encoder

# OpenAI CLIP's image normalisation (all three towers were trained with it)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CROP_MODES = ("center", "none")


class ClipVisionError(ValueError):
    """An image or weights the CLIP vision tower cannot take."""


def clip_preprocess(image: torch.Tensor, size: int, crop: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, C] (0..1) -> normalised pixels [B, 3, size, size], as ComfyUI's clip_preprocess.

    crop=True: the shorter side is resized to `size` (bicubic, antialiased, sides rounded) and the
    centre cut out; crop=False: the image is squashed to size x size. Either way the pixels are then
    rounded to 8 bits (as the PIL pipeline CLIP was trained with) and normalised by CLIP's mean/std.
    An alpha channel is dropped.
    """
    if image.ndim != 4 or image.shape[-1] < 3:
        raise ClipVisionError(f"CLIP vision needs an RGB IMAGE [batch, height, width, 3], got shape "
                              f"{tuple(image.shape)}")
    x = image[..., :3].movedim(-1, 1)
    h, w = x.shape[2:]
    if (h, w) != (size, size):
        if crop:
            scale = size / min(h, w)
            target = (round(scale * h), round(scale * w))
        else:
            target = (size, size)
        x = F.interpolate(x, size=target, mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.positions, cfg.width)

    def forward(self, pixels):
        dtype = pixels.dtype
        patches = F.conv2d(pixels, self.patch_embedding.weight.to(dtype), stride=self.patch_embedding.stride)
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(dtype).expand(pixels.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight.to(dtype)


class _VisionTransformer(nn.Module):
    def __init__(self, cfg: ClipVisionConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = CastLayerNorm(cfg.width, eps=cfg.eps)  # transformers' spelling
        self.encoder = _Encoder(cfg)
        self.post_layernorm = CastLayerNorm(cfg.width, eps=cfg.eps)


class ClipVisionModel(nn.Module):
    """A CLIP vision tower with its projection; its state dict is in the file layout `config.layout`."""

    def __init__(self, config: ClipVisionConfig):
        super().__init__()
        self.config = config
        self.vision_model = _VisionTransformer(config)
        self.visual_projection = CastLinear(config.width, config.projection_dim, bias=False)
        self.key_map = clip_vision_key_map(config)
        use_file_layout(self)

    def forward(self, pixels: torch.Tensor):
        """(last_hidden_state, penultimate_hidden_states, image_embeds) for pixels [B, 3, S, S]."""
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(pixels))
        layers = vm.encoder.layers
        penultimate = x  # a one-layer tower's "penultimate" state is its input, as transformers' hidden_states[-2]
        for i, layer in enumerate(layers):
            x = layer(x)
            if i == len(layers) - 2:
                penultimate = x
        pooled = vm.post_layernorm(x[:, 0, :])
        return x, penultimate, self.visual_projection(pooled)



class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: attributes `last_hidden_state`, `penultimate_hidden_states`, `image_embeds`
    (ComfyUI's `clip_vision.Output`), also readable and writable as `output["image_embeds"]`."""

    def __init__(self, **values):
        for key, value in values.items():
            setattr(self, key, value)

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)

    def __contains__(self, key) -> bool:
        return hasattr(self, key)

    def keys(self):
        return list(vars(self))

    def __repr__(self):
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in vars(self).items() if torch.is_tensor(v))
        return f"ClipVisionOutput({shapes})"


class ClipVision:
    """CLIP_VISION: the tower plus a ModelPatcher that moves it on and off its device."""

    def __init__(self, model: ClipVisionModel, load_device=None, offload_device=None):
        self.model = model
        self.patcher = ModelPatcher(model, "clip_vision", load_device=load_device, offload_device=offload_device)
        self.load_device = self.patcher.load_device

    @property
    def config(self) -> ClipVisionConfig:
        return self.model.config

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    def get_sd(self) -> dict:
        return self.model.state_dict()

    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        """CLIP_VISION_OUTPUT of an IMAGE batch [B, H, W, C]; results on the CPU in float32."""
        p = self.patcher
        if not p.is_patched() or self.model.visual_projection.weight.device != p.load_device:
            memory.load_models([p])
        pixels = clip_preprocess(image.to(p.load_device, torch.float32), self.image_size, crop=crop)
        with torch.inference_mode():
            last, penultimate, embeds = self.model(pixels)
        return ClipVisionOutput(last_hidden_state=last.float().cpu(), image_embeds=embeds.float().cpu(),
                                penultimate_hidden_states=penultimate.float().cpu())
