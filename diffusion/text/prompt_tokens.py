"""Weighted prompt → fixed-length CLIP token chunks (ComfyUI's `SDTokenizer.tokenize_with_weights`).

A prompt becomes *groups*: the tokens of one weighted segment (see ``prompt_syntax``), or the
vectors of one textual-inversion embedding. Groups are packed into chunks of ``chunk_len`` items:
BOS, up to ``chunk_len - 2`` content items, EOS, then ``pad_token`` up to ``chunk_len``.

Where a chunk fills up, ComfyUI's rule decides (and we follow it, not a word-boundary rule):
- a group of fewer than 8 items (a short weighted phrase, an embedding) is never split: the chunk is
  closed early (EOS + padding) and the group starts the next chunk;
- a group of 8 or more items (typically a long unweighted stretch of prompt) fills the chunk to
  exactly ``chunk_len - 2`` content items and continues in the next chunk, even mid-word.
Each segment is tokenized on its own, so ``a(b)c`` tokenizes "a", "b", "c" separately.
"""
from __future__ import annotations

import logging
from typing import Callable, Union

import torch

from diffusion.text.prompt_syntax import EMBEDDING_PREFIX, parse_embedding_reference, parse_weights, split_embedding_words
from diffusion.text.textual_inversion import EmbeddingLookup
from diffusion.text.tokenizer import BOS_ID, EOS_ID

__all__ = ["tokenize_weighted", "EmbeddingLookup", "Token", "MAX_UNSPLIT_GROUP"]

log = logging.getLogger(__name__)

Token = Union[int, torch.Tensor]  # a vocabulary id, or one embedding vector [dim]
# Groups shorter than this move whole to the next chunk instead of being cut (ComfyUI's max_word_length).
MAX_UNSPLIT_GROUP = 8


def _embedding_group(word: str, weight: float, lookup) -> tuple[list[tuple[Token, float]], str]:
    """Vectors for an ``embedding:`` word and the text left after the name (tokenized as text)."""
    name, leftover = parse_embedding_reference(word)
    vectors = lookup(name) if name else None
    if vectors is None:
        # "embedding:foo," → retry as "foo"; the commas stay in the text (ComfyUI's rule).
        stripped = name.strip(",")
        if stripped and stripped != name:
            vectors = lookup(stripped)
            trailing = name[len(name.rstrip(",")) :]
            leftover = f"{trailing} {leftover}"
    if vectors is None:
        log.warning("warning, embedding:%s does not exist, ignoring", name)
        return [], leftover
    return [(vectors[i], weight) for i in range(vectors.shape[0])], leftover


def _groups(text: str, tokenizer, embedding_lookup) -> list[list[tuple[Token, float]]]:
    groups = []
    for segment, weight in parse_weights(text):
        for word in split_embedding_words(segment):
            if embedding_lookup is not None and word.startswith(EMBEDDING_PREFIX):
                group, word = _embedding_group(word, weight, embedding_lookup)
                if group:
                    groups.append(group)
                if not word:
                    continue
            groups.append([(t, weight) for t in tokenizer.encode(word)])
    return groups


def tokenize_weighted(
    text: str,
    tokenizer,
    embedding_lookup: Callable[[str], torch.Tensor | None] | None,
    chunk_len: int = 77,
    pad_token: int = EOS_ID,
) -> list[list[tuple[Token, float]]]:
    """Chunks of exactly ``chunk_len`` (token, weight) pairs for ``text``; at least one chunk.

    ``tokenizer`` needs ``encode(text) -> list[int]`` (ids without BOS/EOS; its ``bos_id`` /
    ``eos_id`` are used when present). ``embedding_lookup(name)`` returns ``[n, dim]`` vectors or
    None; with no lookup, ``embedding:name`` is tokenized as plain text (as ComfyUI does without an
    embeddings folder). BOS, EOS and padding always carry weight 1.0.
    """
    if chunk_len < 3:
        raise ValueError(f"tokenize_weighted: chunk_len must be at least 3 (BOS, one token, EOS), got {chunk_len}")
    bos = getattr(tokenizer, "bos_id", BOS_ID)
    eos = getattr(tokenizer, "eos_id", EOS_ID)
    room = chunk_len - 1  # the chunk's length before its EOS

    chunks = []
    chunk: list[tuple[Token, float]] = [(bos, 1.0)]
    for group in _groups(text, tokenizer, embedding_lookup):
        splittable = len(group) >= MAX_UNSPLIT_GROUP
        while group:
            if len(chunk) + len(group) <= room:
                chunk.extend(group)
                break
            free = room - len(chunk)
            # A fresh chunk too short for an unsplittable group (only with a tiny chunk_len) must
            # cut it anyway, or the loop would never end.
            if splittable or len(chunk) == 1:
                chunk.extend(group[:free])
                group = group[free:]
            chunk.append((eos, 1.0))
            chunk.extend([(pad_token, 1.0)] * (chunk_len - len(chunk)))
            chunks.append(chunk)
            chunk = [(bos, 1.0)]
    chunk.append((eos, 1.0))
    chunk.extend([(pad_token, 1.0)] * (chunk_len - len(chunk)))
    chunks.append(chunk)
    return chunks
