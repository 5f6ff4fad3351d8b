"""SaveImage filename prefixes: the editor's %date:…% and %Title.input% replacements, done here."""
import time

from nodes.folder_paths import format_date, resolve_text_references

PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 42, "model": ["4", 0]},
          "_meta": {"title": "Sampler A"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a/b\\c"}},
}


def test_date_tokens():
    when = time.struct_time((2026, 3, 7, 9, 5, 4, 0, 0, -1))
    assert format_date("yyyy-MM-dd", when) == "2026-03-07"
    assert format_date("yy.M.d h:m:s", when) == "26.3.7 9:5:4"
    assert format_date("hhmmss", when) == "090504"


def test_references_by_title_then_class():
    out = resolve_text_references("%Sampler A.seed%_%EmptyLatentImage.width%x%EmptyLatentImage.height%",
                                  PROMPT)
    assert out == "42_512x768"
    # no node titled "KSampler": found by class, as the editor finds it by its S&R name
    assert resolve_text_references("%KSampler.seed%", PROMPT) == "42"
    assert resolve_text_references("%Sampler A.model%", PROMPT) == "%Sampler A.model%"  # a link
    assert resolve_text_references("%CLIPTextEncode.text%", PROMPT) == "a_b_c"  # no new folders
    assert resolve_text_references("%width%/%Nope.x%", PROMPT) == "%width%/%Nope.x%"


def test_date_in_prefix_uses_local_time():
    expected = time.strftime("%Y")
    assert resolve_text_references("out/%date:yyyy%/img", None) == f"out/{expected}/img"
