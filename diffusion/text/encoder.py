"""The CLIP runtime object: text encoders of one checkpoint, prompt tokens in, conditioning out.

What each architecture uses (ComfyUI 0.8 semantics: `comfy/sd1_clip.py`, `sd2_clip.py`, `sdxl_clip.py`):

| arch         | towers (tokens key)      | default output                        | pad token |
|--------------|--------------------------|---------------------------------------|-----------|
| sd1          | CLIP-L ("l")             | last layer through final_layer_norm   | EOS 49407 |
| sd2          | OpenCLIP-H ("h")         | penultimate layer through final norm  | 0         |
| sdxl         | CLIP-L ("l"), bigG ("g") | both penultimate, no final norm;      | L: EOS,   |
|              |                          | concatenated on channels (768+1280)   | G: 0      |
| sdxl_refiner | bigG ("g")               | penultimate, no final norm            | 0         |

`set_last_layer(n)` (CLIPSetLastLayer) makes every tower return the output of layer n (-1 = last,
Python indexing over the transformer layers, the same as transformers' `hidden_states[n]`). SD1's
CLIP-L and SD2's OpenCLIP-H pass that hidden state through final_layer_norm (ComfyUI's
`layer_norm_hidden_state=True`, the default its SD1 and SD2 models keep; diffusers' SD2 text encoder is
the 23-layer model whose last_hidden_state is final-normed); SDXL's towers do not (ComfyUI builds them
with `layer_norm_hidden_state=False`). So for SD1/SD2, n = -1 equals the final-normed last layer, while
for SDXL n = -1 gives the un-normed last layer.
An n beyond the number of layers (e.g. -24 on the 12-layer CLIP-L) falls back to the default "last"
output (final-normed last layer), as ComfyUI does.

Pooled output: the final-normed state at the first EOS token of the prompt's FIRST chunk (transformers
and ComfyUI both pick the first position whose id is the EOS id; with SD1's EOS padding that is the
real end of text), passed through `text_projection` where the file has one (bigG, OpenCLIP-H) and
unchanged where it has none (SD1 CLIP-L). SDXL's pooled output is bigG's.

In transformers' terms (checked by tests/test_clip_encode.py with the same weights): SD1's default is
`CLIPTextModel(ids).last_hidden_state`, its clip skip n is `final_layer_norm(hidden_states[n])`
(what diffusers' `clip_skip` computes too); SD2 outputs `final_layer_norm(hidden_states[n])` (n = -2
by default); SDXL outputs `hidden_states[n]` (n = -2 by default, as diffusers' SDXL pipeline does for
both encoders); pooled is `pooler_output` for CLIP-L and
`CLIPTextModelWithProjection(ids).text_embeds` for OpenCLIP-H / bigG.

Padding: ComfyUI's SD1 tokenizer pads chunks with EOS; the OpenCLIP tokenizers of SD2 and SDXL's bigG
are built with `pad_with_end=False` and pad with id 0 (`sd2_clip.SD2ClipHTokenizer`,
`sdxl_clip.SDXLClipGTokenizer`). The same pad token fills the empty prompt used for weighting.

Prompt weights (COMPAT §1.6): all chunks are encoded in one batch; when any weight differs from 1, an
empty prompt ([BOS, EOS, pad...]) is encoded alongside and each token whose weight w != 1 becomes
(z - z_empty)·w + z_empty, position by position; chunks are then concatenated on the token axis.

Precision: weights are stored in `dtype` and computed in `compute_dtype`; the defaults come from
`diffusion.memory.text_encoder_dtype` (fp16 storage, what ComfyUI keeps text encoders in; float32
compute on CPU, where half matmuls are very slow; flags can change both). Outputs are CPU float32.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from diffusion import memory
from diffusion.models.clip import ClipTextModel
from diffusion.model_patcher import ModelPatcher
from diffusion.text.prompt_tokens import EmbeddingLookup, tokenize_weighted
from diffusion.text.tokenizer import get_tokenizer

ARCHES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
BOS, EOS = 49406, 49407


class TextEncoderError(ValueError):
    """Text-encoder weights that cannot be loaded; the message names the prefix or file."""


@dataclass(frozen=True)
class TowerSpec:
    """How one text transformer is used by an architecture."""

    key: str  # tokens dict key, as ComfyUI names them: "l", "h", "g"
    prefix: str  # where its weights sit in a single-file checkpoint
    activation: str
    default_layer: int | None  # None: last layer through the final norm; else raw hidden layer
    norm_hidden: bool  # a selected hidden layer also goes through the final norm (SD1, SD2)
    pad_token: int
    embedding_key: str  # key of this tower's vectors in multi-encoder embedding files


_L_SD1 = TowerSpec("l", "cond_stage_model.transformer.", "quick_gelu", None, True, EOS, "clip_l")
_H_SD2 = TowerSpec("h", "cond_stage_model.model.", "gelu", -2, True, 0, "clip_h")
_L_SDXL = TowerSpec("l", "conditioner.embedders.0.transformer.", "quick_gelu", -2, False, EOS, "clip_l")
_G_SDXL = TowerSpec("g", "conditioner.embedders.1.model.", "gelu", -2, False, 0, "clip_g")
TOWERS = {
    "sd1": (_L_SD1,),
    "sd2": (_H_SD2,),
    "sdxl": (_L_SDXL, _G_SDXL),
    "sdxl_refiner": (replace(_G_SDXL, prefix="conditioner.embedders.0.model."),),
}
POOLED_TOWER = {"sd1": "l", "sd2": "h", "sdxl": "g", "sdxl_refiner": "g"}


def default_dtypes(device) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute) dtypes from the runtime settings (fp16 / fp32-on-CPU unless flags say otherwise)."""
    return memory.text_encoder_dtype(device)


def empty_tokens(pad_token: int, length: int = 77) -> list[int]:
    """The empty prompt's ids: [BOS, EOS, pad, ...] of `length`."""
    return ([BOS, EOS] + [pad_token] * max(0, length - 2))[:length]


class CLIP:
    """Text encoders of one model plus the prompt settings nodes change (clip skip)."""

    def __init__(self, arch: str, encoders: dict[str, ClipTextModel], embedding_dirs=(), *,
                 device=None, compute_dtype=None, missing_layers: dict[str, int] | None = None):
        if arch not in TOWERS:
            raise TextEncoderError(f"unknown CLIP architecture {arch!r}; expected one of {ARCHES}")
        missing = [s.key for s in TOWERS[arch] if s.key not in encoders]
        if missing:
            raise TextEncoderError(f"{arch} CLIP needs text encoders {missing}, got {sorted(encoders)}")
        self.arch = arch
        self.specs = TOWERS[arch]
        self.encoders = encoders
        self.embedding_dirs = tuple(embedding_dirs)
        # The patcher moves the weights on and off the device under diffusion.memory's control and
        # applies weight patches (LoRA) without copying the base weights, as it does for the UNet.
        self.patcher = ModelPatcher(TextEncoderStack(encoders), arch, load_device=device)
        self.load_device = self.patcher.load_device
        self.offload_device = self.patcher.offload_device
        self.dtype = next(iter(encoders.values())).token_embedding_weight.dtype
        self.compute_dtype = compute_dtype or default_dtypes(self.load_device)[1]
        self.layer_idx: int | None = None  # None: each tower's default output
        # Top layers a tower's weights lack (diffusers' SD2 encoder stops one short of OpenCLIP-H):
        # layer numbers still count the full tower, as in the single file (see `_output_layer`).
        self.missing_layers = dict(missing_layers or {})
        self._lookups: dict[str, object] = {}

    # --- node-facing API (docs/contracts.md) ---------------------------------------------------------

    def clone(self) -> "CLIP":
        """A CLIP sharing the networks (no weight copies) with its own settings."""
        other = CLIP.__new__(CLIP)
        other.__dict__.update(self.__dict__)
        other.patcher = self.patcher.clone()
        other._lookups = self._lookups  # embedding files found once serve every clone
        return other

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list[str]:
        """Queue weight patches (see diffusion.model_patcher) keyed `clip_<key>.transformer.<name>`, the
        name a file key of the tower's layout (`text_model.encoder.layers.0.mlp.fc1.weight`,
        `transformer.resblocks.0.attn.in_proj_weight`) or a network one (`TextEncoderStack`); returns
        the keys that matched (others are ignored). Call on a clone to keep the original unpatched."""
        matched = []
        for key, value in patches.items():
            targets = self.patcher.model.patch_targets(key, value)
            for name, part in targets:
                self.patcher.add_patches({name: part}, strength_patch, strength_model)
            if targets:
                matched.append(key)
        return matched

    def set_last_layer(self, n: int) -> None:
        """CLIPSetLastLayer: output layer n (-1 = last) for every tower; see the module docstring."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_last_layer expects an int such as -1 or -2, got {n!r}")
        self.layer_idx = n

    def tokenize(self, text: str) -> dict[str, list]:
        """Prompt text -> {tower key: chunks of 77 (token, weight) pairs}."""
        tokenizer = get_tokenizer()
        return {
            spec.key: tokenize_weighted(text, tokenizer, self._embedding_lookup(spec),
                                        chunk_len=self.encoders[spec.key].config.context_length,
                                        pad_token=spec.pad_token)
            for spec in self.specs
        }

    def encode_from_tokens(self, tokens: dict, return_pooled=False):
        """Tokens from `tokenize` -> cond [1, 77·k, D] (and pooled [1, P] if `return_pooled`).

        `return_pooled="unprojected"` returns the pooled state before text_projection (ComfyUI's option).
        """
        projected = return_pooled != "unprojected"
        outs = {}
        for spec in self.specs:
            if spec.key not in tokens:
                raise TextEncoderError(f"{self.arch} CLIP needs tokens for {spec.key!r}, got keys {sorted(tokens)}")
            outs[spec.key] = self._encode_weighted(spec, tokens[spec.key], projected)
        if len(self.specs) == 1:
            cond = outs[self.specs[0].key][0]
        else:  # SDXL: L and bigG side by side; a longer prompt on one side is cut to the shorter
            conds = [outs[s.key][0] for s in self.specs]
            n = min(c.shape[1] for c in conds)
            cond = torch.cat([c[:, :n] for c in conds], dim=-1)
        if return_pooled:
            return cond, outs[POOLED_TOWER[self.arch]][1]
        return cond

    def encode(self, text: str) -> torch.Tensor:
        """`encode_from_tokens(tokenize(text))`."""
        return self.encode_from_tokens(self.tokenize(text))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under their original single-file checkpoint keys (for saving)."""
        return {spec.prefix + k: v for spec in self.specs for k, v in self.encoders[spec.key].state_dict().items()}

    # --- ComfyUI `comfy.sd.CLIP` method names that plugin nodes call ----------------------------------

    def clip_layer(self, layer_idx: int) -> None:
        self.set_last_layer(layer_idx)

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict=None, **_ignored):
        """CONDITIONING `[[cond, {"pooled_output": pooled, **add_dict}]]` (no hook scheduling here)."""
        cond, pooled = self.encode_from_tokens(tokens, return_pooled="unprojected" if unprojected else True)
        return [[cond, {"pooled_output": pooled, **(add_dict or {})}]]

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.state_dict()

    def get_key_patches(self) -> dict:
        return self.patcher.get_key_patches()

    def load_model(self):
        self._load()
        return self.patcher

    # --- internals -----------------------------------------------------------------------------------

    def _embedding_lookup(self, spec: TowerSpec):
        if spec.key not in self._lookups:
            width = self.encoders[spec.key].config.width
            self._lookups[spec.key] = EmbeddingLookup(self.embedding_dirs, width, spec.embedding_key)
        return self._lookups[spec.key]

    def _output_layer(self, spec: TowerSpec, layers: int) -> int | None:
        n = spec.default_layer if self.layer_idx is None else self.layer_idx
        missing = self.missing_layers.get(spec.key, 0)
        full = layers + missing
        if n is None or not -full <= n < full:
            n = None
        if not missing:
            return n
        # Count from the full tower; a layer among the missing top ones cannot be computed here.
        index = full - 1 if n is None else n % full
        if index >= layers:
            raise TextEncoderError(
                f"CLIP layer {n if n is not None else -1} of the {spec.key!r} text encoder is not in its weights: "
                f"they hold {layers} of the tower's {full} layers (a diffusers SD2 text encoder stops one "
                f"short); choose layer {-1 - missing} or lower with CLIPSetLastLayer")
        return index

    @torch.no_grad()
    def _encode_weighted(self, spec: TowerSpec, chunks: list, projected: bool = True):
        model = self.encoders[spec.key]
        rows = [[tok for tok, _ in chunk] for chunk in chunks]
        weights = [[float(w) for _, w in chunk] for chunk in chunks]
        lengths = {len(r) for r in rows}
        if len(lengths) > 1:
            raise TextEncoderError(f"token chunks for {spec.key!r} differ in length: {sorted(lengths)}")
        length = lengths.pop() if lengths else model.config.context_length
        has_weights = any(w != 1.0 for row in weights for w in row)
        if has_weights or not rows:
            rows.append(empty_tokens(spec.pad_token, length))
        z, pooled = self._run(spec, model, rows, projected)
        if not chunks:
            return z, pooled
        z_chunks = z[: len(chunks)]
        if has_weights:
            w = torch.tensor(weights, dtype=z.dtype)[..., None]
            z_empty = z[-1:]
            # Tokens of weight 1 are left untouched (not recomputed through the formula), as in ComfyUI.
            z_chunks = torch.where(w != 1.0, (z_chunks - z_empty) * w + z_empty, z_chunks)
        return z_chunks.reshape(1, -1, z_chunks.shape[-1]), pooled[:1]

    def _run(self, spec: TowerSpec, model: ClipTextModel, rows: list[list], projected: bool = True):
        """Encode rows of tokens (ints or embedding vectors) -> (cond [B, N, D], pooled [B, P]) on CPU."""
        device = self.load_device
        width = model.config.width
        ids = torch.zeros(len(rows), len(rows[0]), dtype=torch.long)
        vectors = []  # (row, position, vector) for textual-inversion tokens
        eos_index = torch.zeros(len(rows), dtype=torch.long)
        for b, row in enumerate(rows):
            eos_found = False
            for j, tok in enumerate(row):
                if isinstance(tok, torch.Tensor):
                    vec = tok.reshape(-1)
                    if vec.numel() != width:
                        raise TextEncoderError(
                            f"embedding vector at position {j} has {vec.numel()} values; the {spec.key!r} "
                            f"text encoder needs {width}"
                        )
                    vectors.append((b, j, vec))
                    continue
                ids[b, j] = int(tok)
                if int(tok) == EOS and not eos_found:
                    eos_index[b], eos_found = j, True
        self._load()
        embeds = model.embed_tokens(ids.to(device), self.compute_dtype)
        for b, j, vec in vectors:
            embeds[b, j] = vec.to(device=device, dtype=self.compute_dtype)
        out = model(embeds, eos_index, hidden_layer=self._output_layer(spec, model.config.layers))
        if out.hidden is None:
            z = out.last_hidden
        else:
            z = model.final_norm(out.hidden) if spec.norm_hidden else out.hidden
        pooled = out.projected if projected else out.pooled
        return z.float().cpu(), pooled.float().cpu()

    def _load(self) -> None:
        p = self.patcher
        if not p.is_patched() or self.encoders[self.specs[0].key].token_embedding_weight.device != p.load_device:
            memory.load_models([p])


class TextEncoderStack(torch.nn.Module):
    """A CLIP's text encoders as one module, named as ComfyUI names CLIP weights for patches:
    `clip_<key>.transformer.<network name>` (transformers' names, diffusion.models.clip)."""

    def __init__(self, encoders: dict[str, ClipTextModel]):
        super().__init__()
        for key, model in encoders.items():
            self.add_module(f"clip_{key}", torch.nn.ModuleDict({"transformer": model}))
        self._names = {name for name, _ in self.named_parameters()}

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def patch_targets(self, key: str, value) -> list[tuple[str, object]]:
        """[(parameter name, patch)] a patch addressed to `key` lands on: itself for a parameter name;
        for a tower's file key, the parameters it maps to (a stacked in_proj patch split into its q, k
        and v rows, a text_projection patch transposed); [] when `key` names no weight."""
        if key in self._names:
            return [(key, value)]
        for tower, modules in self.named_children():
            prefix = f"{tower}.transformer."
            fw = modules["transformer"].key_map.get(key[len(prefix):]) if key.startswith(prefix) else None
            if fw is not None:
                if len(fw.parts) == 1 and not fw.transposed:
                    return [(prefix + fw.parts[0], value)]
                return [(prefix + part, _patch_part(key, value, i, len(fw.parts), fw.transposed))
                        for i, part in enumerate(fw.parts)]
        return []


def _patch_part(key: str, value, index: int, count: int, transposed: bool):
    """Row block `index` of `count` of a patch on a file weight, transposed first if the network holds
    the transpose; a LoRA stays low-rank: (up @ down).T = down.T @ up.T, and row blocks of up @ down
    are those of up."""
    if isinstance(value, torch.Tensor):
        value = ("diff", value)
    kind, data = value if isinstance(value, (tuple, list)) and len(value) == 2 else (None, None)
    if kind == "diff":
        data = data.t() if transposed else data
        return "diff", data.chunk(count)[index]
    if kind == "lora" and all(x is None for x in data[3:]):
        up, down, *rest = data
        if transposed:
            up, down = down.t(), up.t()
        return "lora", (up.chunk(count)[index], down, *rest)
    if kind in ("lora", "loha", "lokr"):  # not low-rank per block: the patcher slices the full delta
        return "slice", (value, index, count, transposed)
    raise ValueError(f"patch for {key}: unsupported value {type(value).__name__}")
