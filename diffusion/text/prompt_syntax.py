"""Prompt weighting syntax, with ComfyUI's semantics (COMPAT §1.6, `comfy/sd1_clip.py:token_weights`).

- ``(text)`` multiplies the weight of ``text`` by 1.1 per nesting level: ``((text))`` is 1.1·1.1.
- ``(text:1.3)`` sets the weight to 1.3 (absolute, not relative to the enclosing level); the number
  is whatever follows the *last* colon inside the group and must parse as a Python float, otherwise
  the colon is ordinary text and the group counts as ×1.1. A colon in first position never weights.
- ``\\(`` and ``\\)`` are literal parentheses (the backslash is dropped). ``[text]`` has no meaning:
  square brackets are ordinary text (no down-weighting).
- ``embedding:name`` at the start of a segment or after whitespace names a textual inversion.

Unbalanced parentheses are kept exactly as ComfyUI treats them, because workflows in the wild rely
on that output:
- An unclosed ``(`` keeps everything from it to the end of its level as one piece. If that piece
  happens to end with ``)`` (an inner group closed it) it is read as a group: ``(a (b)`` gives
  ``a `` and ``(b`` at 1.1. Otherwise the ``(`` stays in the text at the outer weight: ``(a b`` is
  the text ``(a b`` at 1.0.
- A stray ``)`` drives the depth below zero, after which no group closes on that level: the rest of
  the level is literal text at the outer weight, parentheses included: ``a) (b:2)`` is ``a) (b:2)``
  at 1.0.
"""
from __future__ import annotations

import re

EMBEDDING_PREFIX = "embedding:"
NESTING_FACTOR = 1.1

# Escaped parentheses are swapped for these markers before parsing and restored afterwards (the same
# markers ComfyUI uses, so a prompt holding them literally behaves the same too).
_ESCAPED_CLOSE = "\0\1"
_ESCAPED_OPEN = "\0\2"
_EMBEDDING_SPLIT = re.compile(r"(?<=\s)" + re.escape(EMBEDDING_PREFIX))
_EMBEDDING_NAME_END = re.compile(r"[<\[]")


def _escape(text: str) -> str:
    return text.replace("\\)", _ESCAPED_CLOSE).replace("\\(", _ESCAPED_OPEN)


def _unescape(text: str) -> str:
    return text.replace(_ESCAPED_CLOSE, ")").replace(_ESCAPED_OPEN, "(")


def split_top_level(text: str) -> list[str]:
    """Split text into plain runs and top-level ``(...)`` groups (groups keep their parentheses)."""
    pieces = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0 and current:
                pieces.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                pieces.append(current + ch)
                current = ""
            else:
                current += ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def _weights(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for piece in split_top_level(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            inner_weight = weight * NESTING_FACTOR
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight = float(inner[colon + 1 :])
                    inner = inner[:colon]
                except ValueError:
                    pass  # not a number: the colon is text, the group is a plain ×1.1
            out.extend(_weights(inner, inner_weight))
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` as (segment, weight) pairs in order, escapes resolved; empty groups vanish."""
    if not isinstance(text, str):
        raise TypeError(f"prompt text must be a str, got {type(text).__name__}")
    return [(_unescape(segment), weight) for segment, weight in _weights(_escape(text), 1.0)]


def split_embedding_words(segment: str) -> list[str]:
    """Cut a segment before each ``embedding:`` that follows whitespace; empty pieces are dropped.

    Pieces that start with ``embedding:`` are references (see ``parse_embedding_reference``); the
    others are plain text. An ``embedding:`` glued to a preceding word (``xembedding:a``) is text.
    """
    parts = _EMBEDDING_SPLIT.split(segment)
    pieces = parts[:1] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    return [p for p in pieces if p]


def parse_embedding_reference(word: str) -> tuple[str, str]:
    """``embedding:NAME rest`` → (NAME, rest), where NAME ends at whitespace, ``<`` or ``[``.

    The rest is whitespace-collapsed (it is tokenized as ordinary text afterwards). A reference with
    no name gives ("", rest).
    """
    if not word.startswith(EMBEDDING_PREFIX):
        raise ValueError(f"not an embedding reference (must start with {EMBEDDING_PREFIX!r}): {word!r}")
    words = word[len(EMBEDDING_PREFIX) :].split()
    if not words:
        return "", ""
    name, leftover = words[0], " ".join(words[1:])
    cut = _EMBEDDING_NAME_END.search(name)
    if cut is not None:
        leftover = name[cut.start() :] + (" " + leftover if leftover else "")
        name = name[: cut.start()]
    return name, leftover
