"""`main.py convert` (the server's own UI->API conversion, from a file or a PNG) and the previews a
headless run keeps (a workflow whose SaveImage is muted ends only in a PreviewImage)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image

from graph.cli import convert_main, run_main
from nodes import folder_paths, load_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIC = os.path.join(ROOT, "tests", "workflows", "classic_default_v0.4.json")


def preview_workflow(save_mode=2):
    """EmptyImage -> ImageInvert -> PreviewImage, and a SaveImage muted (mode 2) by default."""
    def link_in(name, type_, link):
        return [{"name": name, "type": type_, "link": link}]

    return {"last_node_id": 4, "last_link_id": 3, "version": 0.4,
            "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 2, 0, 4, 0, "IMAGE"]],
            "nodes": [
                {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [6, 4, 2, 0xFF0000],
                 "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
                {"id": 2, "type": "ImageInvert", "mode": 0, "inputs": link_in("image", "IMAGE", 1),
                 "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2, 3]}]},
                {"id": 3, "type": "PreviewImage", "mode": 0, "inputs": link_in("images", "IMAGE", 2),
                 "widgets_values": []},
                {"id": 4, "type": "SaveImage", "mode": save_mode, "inputs": link_in("images", "IMAGE", 3),
                 "widgets_values": ["kept"]}]}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture
def dirs(tmp_path):
    saved = (folder_paths.get_output_directory(), folder_paths.get_temp_directory())
    yield tmp_path
    folder_paths.set_output_directory(saved[0])
    folder_paths.set_temp_directory(saved[1])


def _run(args, registry, capsys):
    rc = run_main(args, registry_factory=lambda: registry, folder_paths=folder_paths)
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_headless_run_keeps_previews_under_out(tmp_path, registry, dirs, capsys):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(preview_workflow()))
    rc, lines, err = _run([str(wf), "--out", str(tmp_path / "out"), "--quiet"], registry, capsys)
    assert rc == 0, err
    previews = tmp_path / "out" / "previews"
    assert len(lines) == 2 and all(os.path.dirname(p) == str(previews) for p in lines)
    for path in lines:  # red inverted is cyan, at the workflow's size
        with Image.open(path) as img:
            assert img.size == (6, 4) and img.getpixel((0, 0)) == (0, 255, 255)
    # --previews puts them elsewhere; saved images (SaveImage unmuted) are printed first
    wf.write_text(json.dumps(preview_workflow(save_mode=0)))
    rc, lines, err = _run([str(wf), "--out", str(tmp_path / "out"), "--previews", str(tmp_path / "p"),
                           "--quiet"], registry, capsys)
    assert rc == 0, err
    assert [os.path.dirname(p) for p in lines] == [str(tmp_path / "out")] * 2 + [str(tmp_path / "p")] * 2
    assert os.path.basename(lines[0]) == "kept_00001_.png"


def test_python_api_lists_previews(tmp_path, registry, dirs):
    from graph.runner import Runner

    folder_paths.set_output_directory(str(tmp_path / "out"))
    folder_paths.set_temp_directory(str(tmp_path / "temp"))
    result = Runner(registry).run(preview_workflow())
    previews = result.previews(folder_paths)
    assert len(previews) == 2 and all(p.startswith(str(tmp_path / "temp")) for p in previews)
    assert all(os.path.isfile(p) for p in previews)
    assert result.files(folder_paths) == previews  # nothing saved: the SaveImage is muted
    assert result.files(folder_paths, types=("output",)) == []


def _convert(args, registry, capsys):
    rc = convert_main(args, registry_factory=lambda: registry)
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_prints_what_the_server_would_run(tmp_path, registry, capsys):
    from server.routes_prompt import _maybe_convert_ui_format

    rc, out, err = _convert([CLASSIC, "--no-validate"], registry, capsys)
    assert rc == 0, err
    server = _maybe_convert_ui_format(SimpleNamespace(registry=registry), json.load(open(CLASSIC)))
    assert json.loads(out) == server
    assert json.loads(out)["3"]["inputs"]["denoise"] == 1
    # validated by default: the classic file names a checkpoint this machine lacks
    rc, out, err = _convert([CLASSIC], registry, capsys)
    assert rc == 1 and json.loads(out) == server
    assert "node 4 (CheckpointLoaderSimple" in err and "v1-5-pruned-emaonly.ckpt" in err


def test_convert_reads_pngs_with_a_workflow_or_a_prompt(tmp_path, registry, dirs, capsys):
    from graph.runner import Runner

    folder_paths.set_output_directory(str(tmp_path))
    ui = preview_workflow(save_mode=0)
    png = Runner(registry).run(ui).files(folder_paths, types=("output",))[0]
    expected = Runner(registry).run(ui).prompt
    rc, out, err = _convert([png], registry, capsys)  # carries the prompt: printed as run
    assert rc == 0, err
    assert json.loads(out) == expected
    # a PNG with only the UI workflow (as some tools write them) is converted
    only_ui = tmp_path / "only_ui.png"
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("workflow", json.dumps(ui))
    Image.new("RGB", (2, 2)).save(only_ui, pnginfo=info)
    rc, out, err = _convert([str(only_ui)], registry, capsys)
    assert rc == 0, err
    assert json.loads(out) == expected


def test_convert_exit_codes_name_the_problem(tmp_path, registry, capsys):
    rc, out, err = _convert([str(tmp_path / "missing.json")], registry, capsys)
    assert (rc, out) == (2, "") and "no such file" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    rc, out, err = _convert([str(bad)], registry, capsys)
    assert (rc, out) == (2, "") and "malformed JSON at line 1" in err
    wf = preview_workflow()
    wf["nodes"][1]["inputs"] = "not a list of inputs"
    bad.write_text(json.dumps(wf))
    rc, out, err = _convert([str(bad)], registry, capsys)
    assert (rc, out) == (1, "") and "cannot convert the UI workflow" in err and "node 2" in err
    wf = preview_workflow()
    wf["nodes"][0]["widgets_values"] = [6, "tall", 2, 0]
    bad.write_text(json.dumps(wf))
    rc, out, err = _convert([str(bad)], registry, capsys)
    assert rc == 1 and json.loads(out)["1"]["inputs"]["height"] == "tall"
    assert "node 1 (EmptyImage" in err and "'height'" in err


def test_main_py_convert_subprocess():
    proc = subprocess.run([sys.executable, "main.py", "convert", CLASSIC, "--no-validate", "--indent", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["3"]["class_type"] == "KSampler"
