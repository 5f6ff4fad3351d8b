"""Review findings in nodes/ and the diffusion glue: behaviour that differed from ComfyUI 0.8."""
from __future__ import annotations

from pathlib import Path

from nodes import folder_paths
from tests.sdnodes_env import temporary_base


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_filename_list_sees_a_folder_a_plugin_adds_directly(tmp_path):
    # COMPAT §7: plugins edit folder_names_and_paths in place (append a root, or replace the entry);
    # a list cached before that must not hide the new folder's files.
    with temporary_base(tmp_path / "base"):
        _touch(tmp_path / "base" / "models" / "checkpoints" / "a.safetensors")
        assert folder_paths.get_filename_list("checkpoints") == ["a.safetensors"]
        extra = tmp_path / "extra"
        _touch(extra / "b.safetensors")
        folder_paths.folder_names_and_paths["checkpoints"][0].append(str(extra))
        assert folder_paths.get_filename_list("checkpoints") == ["a.safetensors", "b.safetensors"]
        folder_paths.folder_names_and_paths["checkpoints"] = ([str(extra)], {".safetensors"})
        assert folder_paths.get_filename_list("checkpoints") == ["b.safetensors"]


def test_folder_extension_lists_no_files(tmp_path):
    # COMPAT §7/§8: "diffusers" holds model folders; its extension set {"folder"} is not empty, so
    # get_filename_list matches no file (ComfyUI's DiffusersLoader walks the folders itself).
    with temporary_base(tmp_path):
        _touch(tmp_path / "models" / "diffusers" / "sd" / "model_index.json")
        _touch(tmp_path / "models" / "diffusers" / "notes.txt")
        assert folder_paths.get_filename_list("diffusers") == []


def test_adding_a_known_folder_again_keeps_its_place(tmp_path):
    # COMPAT §7 add_model_folder_path: a path already listed stays where it is (is_default moves it
    # first); re-adding it must not push it behind the others and change which file wins.
    with temporary_base(tmp_path):
        first, second = str(tmp_path / "a"), str(tmp_path / "b")
        folder_paths.add_model_folder_path("loras", first)
        folder_paths.add_model_folder_path("loras", second)
        base = folder_paths.get_folder_paths("loras")
        assert base[-2:] == [first, second]
        folder_paths.add_model_folder_path("loras", first)
        assert folder_paths.get_folder_paths("loras") == base
        folder_paths.add_model_folder_path("loras", second, is_default=True)
        assert folder_paths.get_folder_paths("loras") == [second] + [p for p in base if p != second]
        folder_paths.add_model_folder_path("my_pack_models", first)
        assert folder_paths.get_folder_paths("my_pack_models") == [first]
        assert folder_paths.folder_names_and_paths["my_pack_models"][1] == set()


def test_models_saved_into_output_are_found(tmp_path):
    with temporary_base(tmp_path):
        saved = tmp_path / "output" / "checkpoints" / "merged.safetensors"
        saved.parent.mkdir(parents=True)
        saved.write_bytes(b"x")
        assert "merged.safetensors" not in folder_paths.get_filename_list("checkpoints")
        folder_paths.add_output_model_paths()
        assert "merged.safetensors" in folder_paths.get_filename_list("checkpoints")
        assert folder_paths.get_folder_paths("clip")[-1] == str(tmp_path / "output" / "clip")


def test_load_image_lists_input_files_by_mimetype(tmp_path):
    from nodes.image_nodes import LoadImage

    with temporary_base(tmp_path):
        for name in ("a.png", "b.avif", "c.jfif", "notes.txt", "model.safetensors", "d.mpo"):
            (tmp_path / "input" / name).write_bytes(b"x")
        listed = LoadImage.INPUT_TYPES()["required"]["image"][0]
        assert listed == ["a.png", "b.avif", "c.jfif"]
        assert folder_paths.filter_files_content_types(["x.glb", "y.safetensors", "z.wav"],
                                                       ["model", "audio"]) == ["x.glb", "z.wav"]
