"""Textual-inversion files: every supported format, name resolution, and the failure cases."""
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from diffusion.text.prompt_tokens import EmbeddingLookup

DIM = 8


@pytest.fixture
def vectors():
    return torch.randn(3, DIM, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "embeddings"
    root.mkdir()
    return root


def test_a1111_string_to_param_pt(folder, vectors):
    torch.save({"string_to_param": {"*": vectors}, "name": "style", "step": 3000}, folder / "style.pt")
    out = EmbeddingLookup([folder], DIM)("style")
    assert out.shape == (3, DIM) and torch.equal(out, vectors)


def test_emb_params_safetensors(folder, vectors):
    save_file({"emb_params": vectors}, str(folder / "neg.safetensors"))
    assert torch.equal(EmbeddingLookup([folder], DIM)("neg"), vectors)


def test_plain_tensor_pt_and_single_vector(folder, vectors):
    torch.save(vectors, folder / "plain.pt")
    torch.save(vectors[0], folder / "one.pt")
    lookup = EmbeddingLookup([folder], DIM)
    assert torch.equal(lookup("plain"), vectors)
    assert torch.equal(lookup("one"), vectors[:1])  # a [dim] tensor is one vector


def test_list_of_dicts_keeps_matching_widths(folder, vectors):
    torch.save([{"a": vectors[:2], "skip": torch.zeros(2, DIM + 1)}, {"b": vectors[2]}], folder / "old.bin")
    assert torch.equal(EmbeddingLookup([folder], DIM)("old"), vectors)


def test_sdxl_file_picks_vectors_by_key(folder):
    clip_l, clip_g = torch.randn(2, DIM), torch.randn(2, 2 * DIM)
    save_file({"clip_g": clip_g, "clip_l": clip_l}, str(folder / "xl.safetensors"))
    assert torch.equal(EmbeddingLookup([folder], DIM, key="clip_l")("xl"), clip_l)
    assert torch.equal(EmbeddingLookup([folder], 2 * DIM, key="clip_g")("xl"), clip_g)


def test_embedding_bundled_in_lora(folder, vectors):
    save_file(
        {"bundle_emb.thing.string_to_param.*": vectors, "lora_unet_x.lora_up.weight": torch.zeros(4, 4)},
        str(folder / "bundle.safetensors"),
    )
    assert torch.equal(EmbeddingLookup([folder], DIM)("bundle"), vectors)


def test_half_precision_is_returned_as_float32(folder, vectors):
    save_file({"emb_params": vectors.half()}, str(folder / "half.safetensors"))
    out = EmbeddingLookup([folder], DIM)("half")
    assert out.dtype == torch.float32 and torch.allclose(out, vectors, atol=1e-2)


def test_names_with_extension_subfolders_and_multiple_roots(tmp_path, vectors):
    first, second = tmp_path / "a", tmp_path / "b"
    (first / "styles" / "deep").mkdir(parents=True)
    second.mkdir()
    torch.save(vectors, first / "styles" / "deep" / "nested.pt")
    torch.save(vectors * 2, second / "other.pt")
    lookup = EmbeddingLookup([first, second], DIM)
    assert torch.equal(lookup("nested"), vectors)  # bare name found in a subfolder
    assert torch.equal(lookup("styles/deep/nested"), vectors)
    assert torch.equal(lookup("nested.pt"), vectors)
    assert torch.equal(lookup("other"), vectors * 2)  # second root
    assert lookup.find("nested").name == "nested.pt"


def test_extension_order_prefers_safetensors(folder, vectors):
    torch.save(vectors * 3, folder / "dup.pt")
    save_file({"emb_params": vectors}, str(folder / "dup.safetensors"))
    assert torch.equal(EmbeddingLookup(folder, DIM)("dup"), vectors)


def test_missing_and_escaping_names_give_none(tmp_path, folder, vectors):
    torch.save(vectors, tmp_path / "outside.pt")
    lookup = EmbeddingLookup([folder], DIM)
    assert lookup("nope") is None
    assert lookup("") is None
    assert lookup("../outside") is None
    assert lookup(str(tmp_path / "outside")) is None
    assert EmbeddingLookup([], DIM)("anything") is None


def test_width_mismatch_warns_and_gives_none(folder, vectors, caplog):
    torch.save(vectors, folder / "wide.pt")
    with caplog.at_level(logging.WARNING):
        assert EmbeddingLookup([folder], DIM * 2)("wide") is None
    assert "width 8" in caplog.text and "needs 16" in caplog.text and "wide" in caplog.text


class _NotATensor:
    pass


def test_unsafe_or_corrupt_files_warn_and_give_none(folder, caplog):
    with open(folder / "evil.pt", "wb") as f:
        pickle.dump({"string_to_param": {"*": _NotATensor()}}, f, protocol=2)
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    lookup = EmbeddingLookup([folder], DIM)
    with caplog.at_level(logging.WARNING):
        assert lookup("evil") is None
        assert lookup("broken") is None
    assert "evil" in caplog.text and "broken" in caplog.text


def test_cache_is_refreshed_when_the_file_changes(folder, vectors):
    path = folder / "changing.pt"
    torch.save(vectors, path)
    lookup = EmbeddingLookup([folder], DIM)
    assert lookup("changing") is lookup("changing")  # served from the cache
    torch.save(vectors[:1] * 5, path)
    os.utime(path, ns=(1, 1))  # force a different stamp even on coarse-mtime filesystems
    assert torch.equal(lookup("changing"), vectors[:1] * 5)


def test_symlinked_folders_are_searched_and_cycles_end(tmp_path, folder, vectors):
    elsewhere = tmp_path / "shared_styles"
    elsewhere.mkdir()
    torch.save(vectors, elsewhere / "linked.pt")
    try:
        (folder / "link").symlink_to(elsewhere, target_is_directory=True)
        (elsewhere / "loop").symlink_to(folder, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not available here")
    lookup = EmbeddingLookup([folder], DIM)
    assert torch.equal(lookup("linked"), vectors)
    assert lookup("absent") is None  # the loop is walked once, not down to the path-length limit
