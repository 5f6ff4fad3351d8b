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

import logging
import os
from dataclasses import dataclass, replace

import torch

from diffusion import memory
from diffusion.clip import ClipConfigError, ClipTextConfig, ClipTextModel, detect_layout, heads_for_width
from diffusion.model_patcher import ModelPatcher
from diffusion.prompt_tokens import EmbeddingLookup, tokenize_weighted
from diffusion.tokenizer import get_tokenizer

log = logging.getLogger(__name__)

ARCHES = ("sd1", "sd2", "sdxl", "sdxl_refiner")
BOS, EOS = 49406, 49407
VOCAB_SIZE, CONTEXT_LENGTH = 49408, 77  # every released CLIP text model of these architectures
# Keys real checkpoints carry that the networks do not use: HF's position_ids buffer (positions are
# always 0..N-1) and open_clip's contrastive logit_scale.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "embeddings.position_ids", "logit_scale")
TEXT_ENCODER_KINDS = ("stable_diffusion", "sd1", "sd2", "sdxl", "sdxl_refiner")


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


def _default_dtypes(device) -> tuple[torch.dtype, torch.dtype]:
    """(storage, compute) dtypes from the runtime settings (fp16 / fp32-on-CPU unless flags say otherwise)."""
    return memory.text_encoder_dtype(device)


def empty_tokens(pad_token: int, length: int = 77) -> list[int]:
    """The empty prompt's ids: [BOS, EOS, pad, ...] of `length`."""
    return ([BOS, EOS] + [pad_token] * max(0, length - 2))[:length]


class CLIP:
    """Text encoders of one model plus the prompt settings nodes change (clip skip)."""

    def __init__(self, arch: str, encoders: dict[str, ClipTextModel], embedding_dirs=(), *,
                 device=None, compute_dtype=None):
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
        self.compute_dtype = compute_dtype or _default_dtypes(self.load_device)[1]
        self.layer_idx: int | None = None  # None: each tower's default output
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
        """Queue weight patches (see diffusion.model_patcher) keyed by `TextEncoderStack` parameter
        names, e.g. `clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight`; returns the keys
        that matched (others are ignored). Call on a clone to keep the original unpatched."""
        return self.patcher.add_patches(patches, strength_patch, strength_model)

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
        if n is None or not -layers <= n < layers:
            return None
        return n

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
    `clip_<key>.transformer.<key in the file below its prefix>`."""

    def __init__(self, encoders: dict[str, ClipTextModel]):
        super().__init__()
        for key, model in encoders.items():
            self.add_module(f"clip_{key}", torch.nn.ModuleDict({"transformer": model}))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


# --- construction ------------------------------------------------------------------------------------

def normalize_text_model_keys(sd) -> dict:
    """Drop `IGNORED_KEYS` and put HF-layout keys under `text_model.` where a file lacks that level
    (old SD1 conversions store `cond_stage_model.transformer.embeddings.*`; ComfyUI renames them too)."""
    sd = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
    if "embeddings.token_embedding.weight" in sd and "text_model.embeddings.token_embedding.weight" not in sd:
        sd = {(k if k.startswith("text_projection") else "text_model." + k): v for k, v in sd.items()}
    return sd


def text_model_from_state_dict(sd, activation: str, *, dtype=None, device="cpu", heads=None,
                               where: str = "text encoder") -> ClipTextModel:
    """Build a `ClipTextModel` from weights whose keys start at the text model (prefix stripped).

    The tensors are cast to `dtype` (default: `diffusion.memory.text_encoder_dtype`) and assigned
    without an extra copy where they already have it. `where` names the source in error messages.
    """
    sd = normalize_text_model_keys(sd)
    try:
        config = ClipTextConfig.from_state_dict(sd, activation=activation, heads=heads)
    except (ClipConfigError, KeyError) as exc:
        raise TextEncoderError(f"{where}: {exc}") from exc
    with torch.device("meta"):
        model = ClipTextModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise TextEncoderError(f"{where}: missing {len(missing)} weights, e.g. {missing[:3]}")
    if unexpected:
        log.warning("%s: ignoring %d unknown weights, e.g. %s", where, len(unexpected), unexpected[:3])
    bad = [(k, tuple(sd[k].shape), s) for k, s in expected.items() if tuple(sd[k].shape) != s]
    if bad:
        k, got, want = bad[0]
        raise TextEncoderError(f"{where}: weight {k} has shape {got}, expected {want} ({len(bad)} mismatched)")
    dtype = dtype or _default_dtypes(device)[0]
    tensors = {k: sd[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.requires_grad_(False).eval()


def _build(arch: str, tower_sds: dict[str, dict], embedding_dirs, dtype, device, compute_dtype, where):
    device = torch.device(device) if device is not None else memory.get_torch_device()
    dtype = dtype or _default_dtypes(device)[0]
    # Weights start on the CPU (no copy of memory-mapped tensors already in `dtype`); the patcher
    # moves them to `device` when a prompt is encoded, and diffusion.memory may move them back.
    encoders = {
        spec.key: text_model_from_state_dict(
            tower_sds[spec.key], spec.activation, dtype=dtype, device="cpu",
            where=f"{where} ({spec.key!r} text encoder)",
        )
        for spec in TOWERS[arch]
    }
    return CLIP(arch, encoders, embedding_dirs, device=device, compute_dtype=compute_dtype)


def clip_from_state_dict(sd, arch: str, embedding_dirs=(), *, dtype=None, device=None, compute_dtype=None) -> CLIP:
    """CLIP from a checkpoint's state dict with its ORIGINAL prefixes (`cond_stage_model.`, `conditioner.`).

    `dtype`: storage dtype of the weights, `device`: where they live and run, `compute_dtype`:
    defaults from `diffusion.memory` (fp16 storage; CUDA when present; float32 compute on CPU).
    """
    if arch not in TOWERS:
        raise TextEncoderError(f"unknown architecture {arch!r}; expected one of {ARCHES}")
    tower_sds = {}
    for spec in TOWERS[arch]:
        sub = {k[len(spec.prefix):]: v for k, v in sd.items() if k.startswith(spec.prefix)}
        if not sub:
            raise TextEncoderError(f"{arch} checkpoint has no text encoder weights under {spec.prefix!r}")
        tower_sds[spec.key] = sub
    return _build(arch, tower_sds, embedding_dirs, dtype, device, compute_dtype, where=f"{arch} checkpoint")


# --- separate text-encoder files --------------------------------------------------------------------

# Where a text model starts, by the key of its token embedding, most specific first: transformers
# files with the `text_model.` level, those without it (transformers 5 CLIPTextModel, some old SD1
# conversions), then open_clip.
_ROOT_KEYS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight",
              "token_embedding.weight")


def strip_to_text_model(sd, where: str = "text encoder") -> dict:
    """Keys below whatever prefix a text-encoder file uses (``, `clip_l.transformer.`, ...),
    normalised by `normalize_text_model_keys`."""
    for root in _ROOT_KEYS:
        for key in sd:
            if key.endswith(root):
                prefix = key[: -len(root)]
                sub = normalize_text_model_keys({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
                try:
                    detect_layout(sub)
                    return sub
                except ClipConfigError:
                    continue
    raise TextEncoderError(f"{where}: no CLIP text model found (no token embedding weights)")


def _config_of(sd) -> ClipTextConfig:
    """Sizes only (activation and heads do not matter to the callers)."""
    return ClipTextConfig.from_state_dict(normalize_text_model_keys(sd), "gelu", heads=1)


def _guess_single_arch(sd) -> str:
    """Which architecture a lone text-encoder file serves under the `stable_diffusion` kind.

    Like ComfyUI: a bigG-sized model (31+ layers) is the SDXL refiner's, an OpenCLIP model (open_clip
    layout, or width 1024) is SD2's, anything else is SD1's CLIP-L.
    """
    cfg = _config_of(sd)
    if cfg.layers >= 31:
        return "sdxl_refiner"
    if cfg.layout == "open_clip" or cfg.width == 1024:
        return "sd2"
    return "sd1"


def clip_from_text_encoder_files(sds: list[dict], kind: str, embedding_dirs=(), *, dtype=None,
                                       device=None, compute_dtype=None, names=None) -> CLIP:
    """CLIP from the state dicts of separate text-encoder files (HF `text_model.*` or open_clip layout,
    any prefix; the weights of `diffusion.checkpoint.load_text_encoders`).

    kind: "stable_diffusion" (one file; SD1 / SD2 / refiner guessed from its sizes), "sd1", "sd2",
    "sdxl_refiner" (one file each) or "sdxl" (two files, CLIP-L and bigG in either order: the wider
    one, else the deeper one, else the second, is bigG).
    """
    names = list(names) if names is not None else [f"text encoder {i + 1}" for i in range(len(sds))]
    if kind not in TEXT_ENCODER_KINDS:
        raise TextEncoderError(f"unknown text encoder type {kind!r}; expected one of {TEXT_ENCODER_KINDS}")
    subs = [strip_to_text_model(sd, where=name) for sd, name in zip(sds, names)]
    wanted = 2 if kind == "sdxl" else 1
    if len(subs) != wanted:
        raise TextEncoderError(f"text encoder type {kind!r} takes {wanted} file(s), got {len(subs)}: {names}")
    if kind == "sdxl":
        def size(i):
            cfg = _config_of(subs[i])
            return cfg.width, cfg.layers, i
        g = max(range(2), key=size)
        tower_sds = {"l": subs[1 - g], "g": subs[g]}
        where = f"{names[1 - g]} + {names[g]}"
        arch = "sdxl"
    else:
        arch = _guess_single_arch(subs[0]) if kind == "stable_diffusion" else kind
        tower_sds = {TOWERS[arch][0].key: subs[0]}
        where = names[0]
    return _build(arch, tower_sds, embedding_dirs, dtype, device, compute_dtype, where=where)


def load_text_encoders(paths, kind: str, embedding_dirs=(), *, dtype=None, device=None, compute_dtype=None) -> CLIP:
    """CLIPLoader / DualCLIPLoader: read text-encoder files and build a CLIP (see the function above).

    Files are read by `diffusion.checkpoint.read_state_dict` (safetensors memory-mapped, pickles
    only with weights_only); unreadable files raise its `CheckpointError` naming the file.
    """
    from diffusion.checkpoint import read_state_dict

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    sds = [read_state_dict(p)[0] for p in paths]
    return clip_from_text_encoder_files(sds, kind, embedding_dirs, dtype=dtype, device=device,
                                        compute_dtype=compute_dtype, names=[os.fspath(p) for p in paths])


# --- scaled-down random models (tests, the demo checkpoint) ----------------------------------------

def random_text_encoder_weights(arch: str, widths: dict[str, int] | None = None, layers: int = 2,
                                seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random text-encoder weights for `arch` under the original checkpoint keys.

    `widths` maps tower keys ("l", "h", "g") to their width (default 32 each; heads follow
    `heads_for_width`); bigG and OpenCLIP-H get a text projection of their own width, as released.
    The SDXL UNet's context width must equal widths["l"] + widths["g"].
    """
    if arch not in TOWERS:
        raise TextEncoderError(f"unknown architecture {arch!r}; expected one of {ARCHES}")
    widths = widths or {}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = {}
        for spec in TOWERS[arch]:
            width = widths.get(spec.key, 32)
            config = ClipTextConfig(
                layout="hf" if spec.key == "l" else "open_clip", width=width, layers=layers,
                heads=heads_for_width(width), vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH,
                projection_dim=None if spec.key == "l" else width, activation=spec.activation,
            )
            model = ClipTextModel(config).init_weights()
            out.update({spec.prefix + k: v.to(dtype) for k, v in model.state_dict().items()})
        return out
    finally:
        torch.random.set_rng_state(generator_state)
