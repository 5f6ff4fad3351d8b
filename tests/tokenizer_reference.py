"""Reference CLIP tokenizer for the tokenizer tests: transformers' CLIPTokenizer built from our vocab.

The vocab.json / merges.txt pair is derived from the bundled BPE file the way OpenAI's CLIP builds its
encoder (bytes, bytes + "</w>", joined merges, the two special tokens), written independently of
diffusion/tokenizer.py so the comparison is not the code checking itself.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

BPE_FILE = Path(__file__).resolve().parents[1] / "diffusion" / "text" / "data" / "bpe_simple_vocab_16e6.txt.gz"


def _byte_chars() -> list[str]:
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    others = [b for b in range(256) if b not in printable]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return [table[b] for b in printable + others]


def write_vocab_files(directory: Path) -> Path:
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory


def reference_tokenizer(directory: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_vocab_files(directory)))
