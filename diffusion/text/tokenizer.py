"""CLIP byte-level BPE tokenizer (the 49,408-token vocabulary of SD1/SDXL text encoders).

The vocabulary ships as ``diffusion/text/data/bpe_simple_vocab_16e6.txt.gz`` (OpenAI's merge list, see
``diffusion/text/data/README.md``); nothing is fetched at run time.

Text cleanup follows what ComfyUI's tokenizer does with the transformers ``CLIPTokenizer`` of
transformers 5 (the tokenizers-backed one): Unicode NFC, every run of Unicode whitespace becomes one
space, then per-character lower-casing. We deliberately do not apply ftfy's mojibake repair nor
``html.unescape`` (OpenAI's reference applies both; ComfyUI does not, and the token ids must match
ComfyUI's). The exact strings ``<|startoftext|>`` / ``<|endoftext|>`` in the text map to their ids,
as the transformers tokenizer's added-token matching does.

Words are split with CLIP's pattern (contractions, letter runs, single digits, runs of other
non-space characters), hand-written over ``unicodedata`` categories so the stdlib suffices.

Known limits: a character newer than the running Python's Unicode database (14.0 on Python 3.11)
has no category here and may split differently from the reference; every assigned character of
that database gives identical ids (checked exhaustively once, and by a sweep in the tests).
ComfyUI on transformers 4 used the pure-Python tokenizer, whose cleanup (without ftfy) also dropped
control/format characters and split CJK ideographs apart; transformers 5, what we match, does not.
"""
from __future__ import annotations

import functools
import gzip
import unicodedata
from pathlib import Path

VOCAB_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
BOS_ID = 49406
EOS_ID = 49407
VOCAB_SIZE = 49408
BOS_TEXT = "<|startoftext|>"
EOS_TEXT = "<|endoftext|>"
_N_MERGES = 49152 - 256 - 2  # the merges CLIP uses from the file: vocab size minus bytes and specials
_END_OF_WORD = "</w>"
_WORD_CACHE_LIMIT = 200_000
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")

# Unicode White_Space (what the tokenizers crate's `\s` means); Python's str.isspace() differs
# (it also counts U+001C..U+001F), so the set is spelled out.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, as GPT-2/CLIP byte-level BPE does.

    Printable Latin-1 bytes map to themselves; the rest are shifted to U+0100 and up, so that no BPE
    symbol is whitespace or a control character.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def read_merges(path: Path = VOCAB_PATH) -> list[tuple[str, str]]:
    """The merge rules CLIP uses, in priority order (first line of the file is a header)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : _N_MERGES + 1]
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: line {number} is not a merge rule of two symbols: {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """Token strings in id order: bytes, bytes ending a word, one per merge, then the two specials."""
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + _END_OF_WORD for c in byte_chars]
    vocab += ["".join(pair) for pair in merges]
    vocab += [BOS_TEXT, EOS_TEXT]
    return vocab


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "L"


def _is_number(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "N"


def clean_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, lower-cased character by character.

    Per-character lowering matters only for capital sigma: str.lower() picks the word-final form ς by
    context, the reference tokenizer always gives σ.
    """
    text = unicodedata.normalize("NFC", text)
    out = []
    in_space = False
    for ch in text:
        if ch in _WHITESPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(ch)
            in_space = False
    text = "".join(out)
    if "Σ" in text:
        return "".join(ch.lower() for ch in text)
    return text.lower()


def split_words(text: str) -> list[str]:
    """CLIP's word pattern over cleaned text, tried left to right like a regex alternation.

    At each position: a contraction ('s 't 're 've 'm 'll 'd), else a run of letters, else one
    number character, else a run of characters that are neither whitespace, letters nor numbers.
    Whitespace between words is dropped.
    """
    words = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _WHITESPACE:
            i += 1
            continue
        if ch == "'":
            matched = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
            if matched:
                words.append(matched)
                i += len(matched)
                continue
        if _is_letter(ch):
            j = i + 1
            while j < n and _is_letter(text[j]):
                j += 1
        elif _is_number(ch):
            j = i + 1
        else:
            j = i + 1
            while j < n and not (text[j] in _WHITESPACE or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        words.append(text[i:j])
        i = j
    return words


class CLIPTokenizer:
    """Byte-level BPE over CLIP's merges; ``encode`` gives ids without BOS/EOS."""

    bos_id = BOS_ID
    eos_id = EOS_ID

    def __init__(self, vocab_path: Path | str = VOCAB_PATH):
        merges = read_merges(Path(vocab_path))
        self.vocab = build_vocab(merges)
        if len(self.vocab) != VOCAB_SIZE:
            raise ValueError(f"{vocab_path}: expected a {VOCAB_SIZE}-token vocabulary, built {len(self.vocab)}")
        self.token_to_id = {tok: i for i, tok in enumerate(self.vocab)}
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Prompts repeat the same words endlessly and BPE of a word is pure, so cache it; the bound
        # only keeps a long-running server's memory flat.
        self._word_cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _bpe(self, word: str) -> list[str]:
        """Merge the symbols of one byte-encoded word, lowest-ranked pair first, all occurrences."""
        symbols = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        ranks = self.merge_ranks
        while len(symbols) > 1:
            best = min(zip(symbols, symbols[1:]), key=lambda pair: ranks.get(pair, _N_MERGES))
            if best not in ranks:
                break
            first, second = best
            merged = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._word_cache.get(word)
        if ids is None:
            encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids = tuple(self.token_to_id[s] for s in self._bpe(encoded))
            if len(self._word_cache) >= _WORD_CACHE_LIMIT:
                self._word_cache.clear()
            self._word_cache[word] = ids
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in split_words(clean_text(text)):
            ids.extend(self._encode_word(word))
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without the BOS/EOS that frame a CLIP sequence."""
        if not isinstance(text, str):
            raise TypeError(f"CLIPTokenizer.encode expects a str, got {type(text).__name__}")
        if BOS_TEXT not in text and EOS_TEXT not in text:
            return self._encode_plain(text)
        ids: list[int] = []
        for part, special in _split_specials(text):
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._encode_plain(part))
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of token ids: bytes re-joined, word ends become spaces, ends trimmed."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the CLIP vocabulary (0..{len(self.vocab) - 1})")
            token = self.vocab[i]
            if i in (BOS_ID, EOS_ID):
                if not skip_special_tokens:
                    out += token.encode("utf-8")
                continue
            word_end = token.endswith(_END_OF_WORD)
            if word_end:
                token = token[: -len(_END_OF_WORD)]
            out += bytes(self.byte_decoder[ch] for ch in token)
            if word_end:
                out += b" "
        return out.decode("utf-8", errors="replace").strip()


def _split_specials(text: str):
    """Yield (plain_text, None) and ("", special_id) pieces, in order."""
    start = 0
    while True:
        found = [(text.find(s, start), s) for s in (BOS_TEXT, EOS_TEXT)]
        found = [(pos, s) for pos, s in found if pos >= 0]
        if not found:
            yield text[start:], None
            return
        pos, special = min(found)
        yield text[start:pos], None
        yield "", BOS_ID if special == BOS_TEXT else EOS_ID
        start = pos + len(special)


@functools.lru_cache(maxsize=None)
def get_tokenizer() -> CLIPTokenizer:
    """The shared tokenizer over the bundled vocabulary (built once per process, ~0.3 s)."""
    return CLIPTokenizer()
