"""GLIGEN (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation"), text-box grounding.

A GLIGEN file adds to a frozen UNet one gated self-attention "fuser" per spatial transformer and a
position net:
- position net: each box (x1, y1, x2, y2 in 0..1) -> Fourier features (8 frequencies, sin and cos)
  concatenated with the phrase's pooled text embedding -> MLP -> one grounding token; the 30 slots
  not used take learned null features.
- fuser: x += tanh(alpha_attn) * SelfAttention(LN([x, tokens]))[:, :N_visual]
         x += tanh(alpha_dense) * FF(LN(x)),
  run after the block's self-attention (the UNet's "middle_patch" point), the fuser picked by the
  transformer's index in the UNet. With both alphas 0 the UNet is unchanged.

File layout (gligen_sd14_textbox_pruned): `<input_blocks|middle_block|output_blocks>.<i>.<j>.
transformer_blocks.0.fuser.{linear,attn.to_q/k/v/out.0,ff.net.0.proj,ff.net.2,norm1,norm2}.*,
.alpha_attn, .alpha_dense` and `position_net.{linears.0/2/4, null_positive_feature,
null_position_feature}`; the sizes are read from the weights.

Conditioning carries 'gligen' = ("position", Gligen, [(pooled [1, D], h, w, y, x), ...]) in latent
units; `gligen_patch` turns it into the middle_patch for one forward's latent shape.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from diffusion.models.unet import CrossAttention, FeedForward, Linear

MAX_OBJECTS = 30
FOURIER_FREQS = 8
FOURIER_TEMPERATURE = 100
POSITION_HIDDEN = 512
SD1_KEY_DIM = 768  # CLIP-L text width: SD1 fusers use 8 heads, others 64-wide heads
_FUSER = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\..*?\.fuser\.(.+)$")


class GatedSelfAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.linear = Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, heads, dim_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x, objs):
        n_visual = x.shape[1]
        objs = self.linear(objs)
        x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(torch.cat([x, objs], dim=1)))[:, :n_visual]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def fourier_embedding(x: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = FOURIER_TEMPERATURE):
    """[..., 4] boxes -> [..., 4 * 2 * freqs]: sin and cos of each coordinate per frequency band
    temperature^(i / freqs), grouped by band (sin of all coordinates, cos of all, next band)."""
    bands = temperature ** (torch.arange(freqs) / freqs)
    out = []
    for f in bands:
        out += [torch.sin(f * x), torch.cos(f * x)]
    return torch.cat(out, dim=-1)


class PositionNet(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.position_dim = FOURIER_FREQS * 2 * 4
        self.linears = nn.Sequential(Linear(in_dim + self.position_dim, POSITION_HIDDEN), nn.SiLU(),
                                     Linear(POSITION_HIDDEN, POSITION_HIDDEN), nn.SiLU(),
                                     Linear(POSITION_HIDDEN, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes, masks, embeddings):
        masks = masks.unsqueeze(-1)
        xyxy = fourier_embedding(boxes)
        null_text = self.null_positive_feature.to(boxes).view(1, 1, -1)
        null_xyxy = self.null_position_feature.to(boxes).view(1, 1, -1)
        embeddings = embeddings * masks + (1 - masks) * null_text
        xyxy = xyxy * masks + (1 - masks) * null_xyxy
        return self.linears(torch.cat([embeddings, xyxy], dim=-1))


class Gligen(nn.Module):
    """The fusers in UNet transformer order (input blocks, middle, output blocks) and the position net.
    Module names are the file's, so `state_dict()` is the file layout."""

    def __init__(self, fusers: dict[str, GatedSelfAttention], position_net: PositionNet, key_dim: int):
        super().__init__()
        self.fusers = nn.ModuleDict({k.replace(".", "_"): v for k, v in fusers.items()})
        self.order = list(self.fusers)
        self.position_net = position_net
        self.key_dim = key_dim

    def objects(self, latent_shape, boxes: list, device) -> torch.Tensor:
        """Grounding tokens [B, 30, D] for boxes [(pooled, h, w, y, x)] in latent units."""
        if len(boxes) > MAX_OBJECTS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJECTS} boxes, got {len(boxes)}")
        batch, _, h, w = latent_shape
        coords = torch.zeros(MAX_OBJECTS, 4)
        masks = torch.zeros(MAX_OBJECTS)
        texts = torch.zeros(MAX_OBJECTS, self.key_dim)
        for i, (pooled, bh, bw, y, x) in enumerate(boxes):
            pooled = pooled.reshape(-1)
            if pooled.shape[0] != self.key_dim:
                raise ValueError(f"GLIGEN box {i}: text embedding width {pooled.shape[0]} does not match the "
                                 f"model's {self.key_dim} (use the text encoder of the GLIGEN's base model)")
            coords[i] = torch.tensor([x / w, y / h, (x + bw) / w, (y + bh) / h])
            masks[i] = 1.0
            texts[i] = pooled.float().cpu()
        dtype = self.position_net.null_positive_feature.dtype
        rep = (batch, 1, 1)
        with torch.inference_mode():
            self.to(device)
            return self.position_net(coords.repeat(rep).to(device, dtype), masks.repeat(batch, 1).to(device, dtype),
                                     texts.repeat(rep).to(device, dtype))

    def fuse(self, x: torch.Tensor, objs: torch.Tensor, transformer_index: int) -> torch.Tensor:
        if transformer_index >= len(self.order):
            raise ValueError(f"GLIGEN has {len(self.order)} fusers but the UNet reached transformer "
                             f"{transformer_index + 1}: the GLIGEN does not fit this model")
        fuser = self.fusers[self.order[transformer_index]].to(x.device, x.dtype)  # a no-op once moved
        return fuser(x, objs.to(x.device, x.dtype))


def gligen_patch(gligen: tuple, latent_shape, device):
    """The UNet middle_patch fn(x, extra) -> x of a conditioning's 'gligen' entry."""
    kind, model, boxes = gligen
    if kind != "position":
        raise ValueError(f"GLIGEN: unknown conditioning type {kind!r} (only 'position' text boxes)")
    net = getattr(model, "model", model)  # a GLIGEN value wraps the network
    objs = net.objects(latent_shape, boxes, device)

    def patch(x, extra):
        return net.fuse(x, objs, extra["transformer_index"])

    return patch


def _fuser_groups(sd: dict) -> dict[tuple, dict]:
    groups: dict[tuple, dict] = {}
    for key, value in sd.items():
        m = _FUSER.match(key)
        if m:
            block, index, rest = m.groups()
            prefix = key[:-len(rest)]
            groups.setdefault((("input_blocks", "middle_block", "output_blocks").index(block), int(index),
                               prefix), {})[rest] = value
    return groups


def build_gligen(sd: dict) -> tuple[Gligen, dict[str, str]]:
    """A Gligen sized from the file's tensors (on the device of its tensors, meta included), and the
    map from each of our parameter names to the file key it loads from."""
    groups = _fuser_groups(sd)
    if not groups or "position_net.null_positive_feature" not in sd:
        raise ValueError("not a GLIGEN file: no '*.fuser.*' or 'position_net.*' weights")
    fusers, names = {}, {}
    key_dim = SD1_KEY_DIM
    for (_, _, prefix), tensors in sorted(groups.items()):
        if "linear.weight" not in tensors:
            raise ValueError(f"GLIGEN file: {prefix}fuser has no linear.weight")
        query_dim, key_dim = tensors["linear.weight"].shape
        # SD1 fusers have 8 heads, others 64-wide heads (at least one head, for scaled-down models)
        heads = 8 if key_dim == SD1_KEY_DIM else max(1, query_dim // 64)
        dim_head = query_dim // heads
        name = prefix.rstrip(".").replace(".fuser", "").replace(".", "_")
        with torch.device("meta"):
            fusers[name] = GatedSelfAttention(query_dim, key_dim, heads, dim_head)
        for rest in fusers[name].state_dict():
            names[f"fusers.{name}.{rest}"] = prefix + rest
    with torch.device("meta"):
        position = PositionNet(sd["position_net.null_positive_feature"].shape[0],
                               sd["position_net.linears.4.weight"].shape[0])
    for rest in position.state_dict():
        names[f"position_net.{rest}"] = f"position_net.{rest}"
    gligen = Gligen(fusers, position, key_dim)
    gligen.order = list(gligen.fusers)  # insertion order is the sorted (block, index) order
    return gligen, names


def load_gligen(sd: dict, where: str = "GLIGEN") -> Gligen:
    """The Gligen of a state dict; every weight of the network must be in the file."""
    gligen, names = build_gligen(sd)
    missing = [file_key for file_key in names.values() if file_key not in sd]
    if missing:
        raise ValueError(f"{where}: missing weights {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    state = {ours: sd[file_key] for ours, file_key in names.items()}
    gligen.load_state_dict(state, assign=True)
    return gligen.eval().requires_grad_(False)
