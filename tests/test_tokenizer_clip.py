"""CLIP BPE tokenizer: ids identical to transformers' CLIPTokenizer built from the same vocabulary."""
import itertools
import time
import unicodedata

import pytest

from diffusion.text.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, CLIPTokenizer, clean_text, get_tokenizer, split_words
from tests.tokenizer_reference import reference_tokenizer

SUBJECTS = [
    "a photo of a cat",
    "portrait of an old fisherman, highly detailed",
    "Cyberpunk CITY at Night",
    "a castle on a hill at sunset",
    "don't stop, it's the dog's toy; we're here, they've gone, I'm ok, you'll see, he'd go",
    "masterpiece, best quality, 8k, uhd, RAW photo",
    "low-poly 3D render of a fox",
    "an astronaut riding a horse on mars",
    "oil painting by Greg Rutkowski and Alphonse Mucha",
    "watercolor sketch of Kyoto streets",
]
UNICODE = [
    "café crème brûlée",
    "Straße in München",
    "ΟΔΟΣ ΣΑΣ, σοφία",
    "İstanbul ıı",
    "東京の夜景 漢字テスト",
    "서울 야경",
    "Москва зимой",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "emoji 😀🎨 👩‍💻 🇫🇷 ❤️ 👍🏽",
    "e\u0301 combining accent vs é",
    "ﬁne ligature and ｆｕｌｌｗｉｄｔｈ",
    "zero\u200bwidth and\u00a0nbsp\u3000ideographic space",
]
PUNCTUATION = [
    "!!!", "...", "?!", "(((", ")))", "[[ ]]", "{curly}", "a|b", "x_y", "#hashtag", "@user",
    "50% off", "$100", "C++", "e-mail", "'quoted'", '"double"', "—dash–", "«guillemets»", "~tilde~",
    "back\\slash", "semi;colon", "colon:1.2", "<|endoftext|>", "<|startoftext|>x", "<|ENDOFTEXT|>",
]
NUMBERS = ["1", "42", "3.14159", "1,000,000", "2024-01-31", "x²", "½", "٣٤٥", "Ⅻ", "0x1F", "1e-5", "4096x4096"]
HTML = ["&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&quot;hi&quot;", "&#39;", "&nbsp;", "&#x1F600;"]
SPACING = ["  two  spaces  ", "\ttab\tseparated\t", "new\nline\r\nwindows", " \x0b\x0c form feeds ", "\x1cfile sep\x1f"]
WEIGHTS_STRIPPED = ["red hair 1.2", "blue eyes:1.3", "embedding:easynegative", "\\(escaped\\)", "(a:b:c)"]


def build_corpus():
    corpus = list(SUBJECTS + UNICODE + PUNCTUATION + NUMBERS + HTML + SPACING + WEIGHTS_STRIPPED)
    corpus += [f"{s}, {p}" for s, p in itertools.product(SUBJECTS[:6], PUNCTUATION[:12])]
    corpus += [f"{p}{s}" for s, p in itertools.product(SUBJECTS[6:], PUNCTUATION[12:])]
    corpus += [f"{u} {n}" for u, n in zip(UNICODE, itertools.cycle(NUMBERS))]
    corpus += [f"{h}{s}{w}" for h, s, w in zip(itertools.cycle(HTML), SUBJECTS, itertools.cycle(SPACING))]
    corpus += [", ".join(SUBJECTS), " ".join(UNICODE), "".join(PUNCTUATION), " BREAK ".join(SUBJECTS) * 3]
    corpus += ["", " ", "\n", "a", "A", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "supercalifragilisticexpialidocious"]
    return corpus


CORPUS = build_corpus()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_tokenizer(tmp_path_factory.mktemp("clip_vocab"))


def test_corpus_is_large_and_varied():
    assert len(CORPUS) >= 200
    assert len(set(CORPUS)) == len(CORPUS)


def test_ids_match_transformers_on_corpus(reference):
    tok = get_tokenizer()
    mismatches = []
    for text in CORPUS:
        ref = reference(text)["input_ids"]
        assert ref[0] == BOS_ID and ref[-1] == EOS_ID
        if tok.encode(text) != ref[1:-1]:
            mismatches.append((text, ref[1:-1], tok.encode(text)))
    assert not mismatches, mismatches[:5]


def test_ids_match_transformers_on_a_unicode_sweep(reference):
    # Every 61st code point the stdlib's Unicode database knows, in letter, number and punctuation
    # positions. (Code points newer than that database may split differently: documented limit.)
    chars = [chr(cp) for cp in range(32, 0x30000, 61) if unicodedata.category(chr(cp)) not in ("Cn", "Co", "Cs")]
    texts = [f"a{c}b 1{c}2 {c}{c.upper()}x '{c}s !{c}" for c in chars]
    assert len(texts) > 1000
    ref = reference(texts)["input_ids"]
    tok = get_tokenizer()
    mismatches = [t for t, ids in zip(texts, ref) if tok.encode(t) != ids[1:-1]]
    assert not mismatches, mismatches[:5]


def test_vocabulary_matches_reference(reference):
    tok = get_tokenizer()
    assert tok.vocab_size == VOCAB_SIZE == len(reference)
    ref_vocab = reference.get_vocab()
    assert all(ref_vocab[t] == i for i, t in enumerate(tok.vocab))
    assert tok.vocab[BOS_ID] == "<|startoftext|>" and tok.vocab[EOS_ID] == "<|endoftext|>"


def test_known_ids_of_a_common_prompt():
    # Ids every SD1 user has seen in token dumps: "a photo of a cat".
    assert get_tokenizer().encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_decode_round_trips_cleaned_text():
    tok = get_tokenizer()
    assert tok.decode(tok.encode("A  Photo of a CAT!")) == "a photo of a cat !"
    assert tok.decode([BOS_ID] + tok.encode("café") + [EOS_ID]) == "café"
    assert tok.decode([BOS_ID, EOS_ID], skip_special_tokens=False) == "<|startoftext|><|endoftext|>"
    with pytest.raises(ValueError, match="outside the CLIP vocabulary"):
        tok.decode([VOCAB_SIZE])


def test_cleanup_and_word_split_rules():
    assert clean_text("A\t\n B\u3000C") == "a b c"
    # capital sigma lowers to σ everywhere, never to the word-final ς
    assert clean_text("ΟΔΟΣ") == "οδοσ"
    assert split_words("don't x²3 !'s ab.cd") == ["don", "'t", "x", "²", "3", "!'", "s", "ab", ".", "cd"]


def test_encode_rejects_non_text():
    with pytest.raises(TypeError, match="expects a str"):
        get_tokenizer().encode(b"bytes")


def test_get_tokenizer_is_cached_and_fast():
    assert get_tokenizer() is get_tokenizer()
    fresh = CLIPTokenizer()  # cold word cache
    start = time.perf_counter()
    for text in CORPUS[:200]:
        fresh.encode(text)
    assert time.perf_counter() - start < 1.0
