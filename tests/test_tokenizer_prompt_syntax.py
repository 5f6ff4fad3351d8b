"""Prompt weighting syntax: expected weights from the COMPAT §1.6 rules (×1.1 per level, absolute :w)."""
import pytest

from diffusion.text.prompt_syntax import parse_embedding_reference, parse_weights, split_embedding_words, split_top_level


def weights(text):
    return [(seg, pytest.approx(w, rel=1e-12)) for seg, w in parse_weights(text)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("(a cat)", [("a cat", 1.1)]),
        ("((a cat))", [("a cat", 1.1 ** 2)]),
        ("(((a cat)))", [("a cat", 1.1 ** 3)]),
        ("x (a:1.3) y", [("x ", 1.0), ("a", 1.3), (" y", 1.0)]),
        # the number is absolute, whatever the nesting around it
        ("((a:1.3))", [("a", 1.3)]),
        ("(((a:0.5)))", [("a", 0.5)]),
        # ...but nesting inside an absolute group multiplies from it
        ("((a):1.5)", [("a", 1.5 * 1.1)]),
        ("(a (b) c:2)", [("a ", 2.0), ("b", 2.0 * 1.1), (" c", 2.0)]),
        ("(a:0)", [("a", 0.0)]),
        ("(a: 0.5 )", [("a", 0.5)]),
        ("(a:1e-1)", [("a", 0.1)]),
        # last colon decides; a non-number after it is text and the group is a plain x1.1
        ("(a:1.2:1.5)", [("a:1.2", 1.5)]),
        ("(ratio 16:9)", [("ratio 16", 9.0)]),
        ("(a:b)", [("a:b", 1.1)]),
        ("(:1.5)", [(":1.5", 1.1)]),
        ("(a:)", [("a:", 1.1)]),
        # no square-bracket down-weighting
        ("[a] [[b]]", [("[a] [[b]]", 1.0)]),
        ("(a)(b)", [("a", 1.1), ("b", 1.1)]),
        ("()", []),
        ("", []),
    ],
)
def test_weights(text, expected):
    assert weights(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\(a\)", [("(a)", 1.0)]),
        (r"(a \(b\))", [("a (b)", 1.1)]),
        (r"(smile\:1.2)", [("smile\\", 1.2)]),  # only parentheses escape; the colon still weights
        (r"\\(a)", [("\\(a)", 1.0)]),  # "\(" is escaped even after another backslash
        (r"(a\)", [("(a)", 1.0)]),
    ],
)
def test_escapes(text, expected):
    assert weights(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("(a b", [("(a b", 1.0)]),  # unclosed: literal text, outer weight
        ("x (a b", [("x ", 1.0), ("(a b", 1.0)]),
        ("(a (b)", [("a ", 1.1), ("(b", 1.1)]),  # inner close ends the outer group
        ("a) (b:2)", [("a) (b:2)", 1.0)]),  # stray ")": rest of the level is literal
        ("(x) b) (c)", [("x", 1.1), (" b) (c)", 1.0)]),
        ("((a)", [("(a", 1.1)]),
    ],
)
def test_unbalanced_parentheses(text, expected):
    assert weights(text) == expected


def test_split_top_level_keeps_groups_whole():
    assert split_top_level("a (b (c)) d (e") == ["a ", "(b (c))", " d ", "(e"]


def test_rejects_non_text():
    with pytest.raises(TypeError, match="must be a str"):
        parse_weights(None)


@pytest.mark.parametrize(
    "segment, expected",
    [
        ("a embedding:foo b", ["a ", "embedding:foo b"]),
        ("embedding:foo", ["embedding:foo"]),
        ("a\nembedding:x, embedding:y", ["a\n", "embedding:x, ", "embedding:y"]),
        ("xembedding:foo", ["xembedding:foo"]),
        ("", []),
    ],
)
def test_split_embedding_words(segment, expected):
    assert split_embedding_words(segment) == expected


@pytest.mark.parametrize(
    "word, expected",
    [
        ("embedding:foo", ("foo", "")),
        ("embedding:foo  bar\tbaz ", ("foo", "bar baz")),
        ("embedding:sub/foo.pt, x", ("sub/foo.pt,", "x")),
        ("embedding:foo<lora:x:1> y", ("foo", "<lora:x:1> y")),
        ("embedding:foo[b]", ("foo", "[b]")),
        ("embedding: foo", ("foo", "")),
        ("embedding:", ("", "")),
    ],
)
def test_parse_embedding_reference(word, expected):
    assert parse_embedding_reference(word) == expected


def test_parse_embedding_reference_requires_prefix():
    with pytest.raises(ValueError, match="not an embedding reference"):
        parse_embedding_reference("foo")
