"""Weighted prompt → 77-token chunks: layout, weights, ComfyUI's chunk-break rule, embeddings."""
import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusion.text.prompt_syntax import parse_weights
from diffusion.text.prompt_tokens import EmbeddingLookup, tokenize_weighted
from diffusion.text.tokenizer import BOS_ID, EOS_ID, get_tokenizer

TOK = get_tokenizer()
CAT = TOK.encode("cat")[0]  # "cat" is a single token, so n cats are n tokens
DIM = 8


def chunk(content, chunk_len=77, pad=EOS_ID):
    """Expected chunk: BOS, content pairs, EOS, padding to chunk_len, specials at weight 1."""
    items = [(BOS_ID, 1.0)] + list(content) + [(EOS_ID, 1.0)]
    return items + [(pad, 1.0)] * (chunk_len - len(items))


def words(text, weight):
    return [(t, weight) for t in TOK.encode(text)]


def approx(chunks):
    return [[(t, pytest.approx(w, rel=1e-12)) for t, w in c] for c in chunks]


def run(text, lookup=None, **kw):
    return tokenize_weighted(text, TOK, lookup, **kw)


def test_empty_prompt_gives_one_chunk():
    assert run("") == [chunk([])]
    assert run("", pad_token=0) == [chunk([], pad=0)]


def test_weights_follow_each_segment():
    out = run("a (red:1.3) cat, ((blue eyes))")
    assert out == approx([chunk(words("a ", 1.0) + words("red", 1.3) + words(" cat, ", 1.0) + words("blue eyes", 1.21))])
    assert all(len(c) == 77 for c in out)


def test_escaped_parentheses_are_text():
    assert run(r"\(x\)") == [chunk(words("(x)", 1.0))]


@pytest.mark.parametrize("n, sizes", [(75, [75]), (76, [75, 1]), (100, [75, 25]), (151, [75, 75, 1])])
def test_long_text_splits_every_75_tokens(n, sizes):
    out = run("cat " * n)
    assert out == [chunk([(CAT, 1.0)] * k) for k in sizes]


def test_short_group_moves_whole_to_next_chunk():
    # 74 + 2 tokens would straddle: the 2-token group starts chunk two, chunk one is padded early.
    out = run("cat " * 74 + "(red hair:1.2)")
    assert out == approx([chunk([(CAT, 1.0)] * 74), chunk(words("red hair", 1.2))])


@pytest.mark.parametrize("group_len, first, second", [(7, 0, 7), (8, 5, 3)])
def test_groups_of_eight_or_more_are_cut_at_the_boundary(group_len, first, second):
    phrase = " ".join(["cat"] * group_len)
    out = run("cat " * 70 + f"({phrase}:1.5)")
    weighted = [(CAT, 1.5)]
    assert out == approx([chunk([(CAT, 1.0)] * 70 + weighted * first), chunk(weighted * second)])


def test_custom_chunk_len_and_pad():
    out = run("cat " * 10, chunk_len=6, pad_token=0)
    assert out == [chunk([(CAT, 1.0)] * 4, 6, 0)] * 2 + [chunk([(CAT, 1.0)] * 2, 6, 0)]
    with pytest.raises(ValueError, match="chunk_len must be at least 3"):
        run("cat", chunk_len=2)


@pytest.fixture
def lookup(tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(3, DIM)}}, tmp_path / "style.pt")
    return EmbeddingLookup([tmp_path], DIM)


def is_vector(item, expected, weight):
    return isinstance(item[0], torch.Tensor) and torch.equal(item[0], expected) and item[1] == pytest.approx(weight)


def test_embedding_vectors_replace_the_reference(lookup):
    vecs = lookup("style")
    out = run("a embedding:style b", lookup)
    (c,) = out
    assert c[1] == (TOK.encode("a")[0], 1.0)
    assert all(is_vector(c[2 + i], vecs[i], 1.0) for i in range(3))
    assert c[5:7] == words("b", 1.0) + [(EOS_ID, 1.0)]


def test_weighted_embedding_and_trailing_comma(lookup):
    vecs = lookup("style")
    (c,) = run("(embedding:style:1.2) embedding:style, b", lookup)
    assert all(is_vector(c[1 + i], vecs[i], 1.2) for i in range(3))
    assert all(is_vector(c[4 + i], vecs[i], 1.0) for i in range(3))
    assert c[7:10] == words(", b", 1.0) + [(EOS_ID, 1.0)]


def test_embedding_group_is_not_split_across_chunks(lookup):
    out = run("cat " * 73 + "embedding:style", lookup)
    assert len(out) == 2
    assert out[0] == chunk([(CAT, 1.0)] * 73)
    assert all(isinstance(t, torch.Tensor) for t, _ in out[1][1:4])


def test_missing_embedding_is_dropped_with_a_warning(lookup, caplog):
    with caplog.at_level(logging.WARNING):
        out = run("x embedding:nope y", lookup)
    assert out == [chunk(words("x ", 1.0) + words("y", 1.0))]
    assert "embedding:nope does not exist" in caplog.text


def test_without_lookup_references_are_plain_text():
    assert run("embedding:style") == [chunk(words("embedding:style", 1.0))]


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("ab cat,(): 1.5\\[]é")), max_size=400),
    chunk_len=st.sampled_from([5, 12, 77]),
)
def test_chunks_keep_every_token_in_order(text, chunk_len):
    out = run(text, chunk_len=chunk_len, pad_token=0)
    expected = [(t, w) for segment, w in parse_weights(text) for t in TOK.encode(segment)]
    content = []
    for c in out:
        assert len(c) == chunk_len and c[0] == (BOS_ID, 1.0)
        end = c.index((EOS_ID, 1.0))
        assert end <= chunk_len - 1 and all(item == (0, 1.0) for item in c[end + 1 :])
        content += c[1:end]
    assert content == expected
