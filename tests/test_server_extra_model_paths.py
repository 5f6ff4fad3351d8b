"""nodes/extra_model_paths.py: YAML sections onto folder_paths (COMPAT §8)."""
import os

import pytest

from nodes.extra_model_paths import ExtraPathsError, load_extra_model_paths, parse_extra_model_paths
from tests.server_nodes import FakeFolderPaths


def test_sections_base_path_blocks_legacy_keys_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELS_HOME", str(tmp_path / "home"))
    yaml_file = tmp_path / "conf" / "extra.yaml"
    yaml_file.parent.mkdir()
    yaml_file.write_text(
        "a111:\n"
        "  base_path: $MODELS_HOME/sd\n"
        "  checkpoints: models/Stable-diffusion\n"
        "  unet: models/unet\n"
        "  loras: |\n"
        "    models/Lora\n"
        "    models/LyCORIS\n"
        "other:\n"
        "  is_default: true\n"
        "  vae: rel/vae\n"
        "empty:\n")
    entries = parse_extra_model_paths(str(yaml_file))
    home = str(tmp_path / "home" / "sd")
    assert entries == [
        ("checkpoints", os.path.join(home, "models", "Stable-diffusion"), False),
        ("diffusion_models", os.path.join(home, "models", "unet"), False),
        ("loras", os.path.join(home, "models", "Lora"), False),
        ("loras", os.path.join(home, "models", "LyCORIS"), False),
        ("vae", str(tmp_path / "conf" / "rel" / "vae"), True),
    ]
    fp = FakeFolderPaths(tmp_path / "base")
    fp.add_model_folder_path("vae", "/existing/vae")
    load_extra_model_paths(str(yaml_file), fp)
    assert fp.get_folder_paths("vae") == [str(tmp_path / "conf" / "rel" / "vae"), "/existing/vae"]
    assert fp.get_folder_paths("checkpoints")[-1] == os.path.join(home, "models", "Stable-diffusion")


def test_relative_base_path_is_relative_to_yaml_dir(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("s:\n  base_path: ../shared\n  embeddings: emb\n")
    assert parse_extra_model_paths(str(f)) == [
        ("embeddings", os.path.normpath(str(tmp_path / ".." / "shared" / "emb")), False)]


@pytest.mark.parametrize("text", ["- a\n- b\n", "s: [1, 2]\n", "s:\n  loras: [a, b]\n", "s: {a: b\n"])
def test_bad_yaml_is_a_clear_error(tmp_path, text):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ExtraPathsError, match="bad.yaml"):
        parse_extra_model_paths(str(f))
