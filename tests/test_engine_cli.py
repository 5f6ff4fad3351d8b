"""Headless runner and `main.py run` (subprocess)."""
import json
import os
import subprocess
import sys

import pytest

from graph.runner import RunError, Runner
from tests import engine_nodes as N

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "workflows", "example_images.json")


def chain():
    return {"1": {"class_type": "IntConst", "inputs": {"value": 2}, "_meta": {"title": "Start"}},
            "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 3}},
            "3": {"class_type": "Output", "inputs": {"value": ["2", 0]}}}


def test_runner_reuses_cache_and_applies_overrides():
    runner = Runner(N.registry())
    first = runner.run(chain())
    assert first.outputs == {"3": {"value": [5]}} and first.ran == ["1", "2", "3"]
    assert runner.run(chain()).ran == []
    changed = runner.run(chain(), overrides={"2.b": 10})
    assert changed.outputs == {"3": {"value": [12]}} and changed.ran == ["2", "3"]
    by_title = runner.run(chain(), overrides={("Start", "value"): 0})
    assert by_title.outputs == {"3": {"value": [3]}}
    with pytest.raises(RunError, match="no node '9'"):
        runner.run(chain(), overrides={"9.value": 1})


def test_runner_errors_are_readable():
    runner = Runner(N.registry())
    with pytest.raises(RunError) as e:
        runner.run(chain(), overrides={"1.value": 99999})
    assert e.value.kind == "validation"
    assert "node 1 (IntConst, 'Start') input 'value': Value 99999 bigger than max of 1000" in str(e.value)
    p = chain()
    p["2"]["class_type"] = "Fail"
    p["2"]["inputs"] = {"value": ["1", 0]}
    with pytest.raises(RunError) as e:
        runner.run(p)
    assert e.value.kind == "execution"
    assert str(e.value) == "node 2 (Fail) failed: ValueError: bad value 2"


def test_runner_accepts_ui_format_and_png(tmp_path):
    pytest.importorskip("graph.workflow_formats")
    import nodes
    ui = {"last_node_id": 3, "last_link_id": 2, "version": 0.4, "links": [[1, 1, 0, 2, 0, "IMAGE"],
                                                                          [2, 2, 0, 3, 0, "IMAGE"]],
          "nodes": [
              {"id": 1, "type": "EmptyImage", "mode": 0, "inputs": [],
               "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}],
               "widgets_values": [8, 4, 1, 0]},
              {"id": 2, "type": "ImageInvert", "mode": 0,
               "inputs": [{"name": "image", "type": "IMAGE", "link": 1}],
               "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [2]}], "widgets_values": []},
              {"id": 3, "type": "SaveImage", "mode": 0,
               "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "outputs": [],
               "widgets_values": ["ui_run"]}]}
    old_out = nodes.folder_paths.get_output_directory()
    nodes.folder_paths.set_output_directory(str(tmp_path))
    try:
        runner = Runner(nodes.load_registry())
        result = runner.run(ui)
        (png,) = result.files(nodes.folder_paths)
        assert os.path.basename(png) == "ui_run_00001_.png"
        # the saved PNG carries both the prompt and the UI workflow: run it again from the PNG
        again = Runner(nodes.load_registry()).run(png)
        assert again.prompt["1"]["inputs"]["width"] == 8
        assert again.files(nodes.folder_paths)[0].endswith("ui_run_00002_.png")
    finally:
        nodes.folder_paths.set_output_directory(old_out)


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "main.py", "run", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_success_prints_output_path(tmp_path):
    proc = cli(EXAMPLE, "--out", str(tmp_path), "--set", "1.width=16", "--quiet")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.strip().splitlines()
    assert line == os.path.join(str(tmp_path), "example_images_00001_.png")
    from PIL import Image
    with Image.open(line) as img:
        assert img.size == (16, 48)


def test_cli_bad_workflow_readable_error(tmp_path):
    bad = tmp_path / "bad.json"
    wf = json.load(open(EXAMPLE))
    wf["1"]["inputs"]["height"] = "tall"
    del wf["3"]["inputs"]["filename_prefix"]
    bad.write_text(json.dumps(wf))
    proc = cli(str(bad), "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "node 1 (EmptyImage, 'Empty Image') input 'height': Failed to convert an input value to a INT value" \
        in proc.stderr
    assert "node 3 (SaveImage, 'Save Image') input 'filename_prefix': Required input is missing" \
        in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = cli(str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    badset = cli(EXAMPLE, "--set", "width=3")
    assert badset.returncode == 2 and "NODE.INPUT=VALUE" in badset.stderr


def test_tqdm_listener_draws_one_bar_per_stepping_node():
    import io
    from graph.cli import TqdmProgress
    stream = io.StringIO()
    listener = TqdmProgress({"5": {"class_type": "KSampler"}}, stream=stream)
    listener("executing", {"node": "5"})
    for i in range(1, 4):
        listener("progress", {"value": i, "max": 3, "node": "5", "prompt_id": "p"})
    assert listener.bars["5"].n == 3
    listener("execution_success", {"prompt_id": "p"})
    assert listener.bars == {} and "5 KSampler" in stream.getvalue() and "3/3" in stream.getvalue()


def test_runner_announces_the_prompt_so_bars_name_node_classes(tmp_path):
    import io

    from graph.cli import TqdmProgress
    from graph.runner import Runner
    from tests.engine_nodes import registry

    events = []
    stream = io.StringIO()
    bars = TqdmProgress(stream=stream)
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 2}},
              "2": {"class_type": "Output", "inputs": {"value": ["1", 0]}}}
    Runner(registry()).run(prompt, listeners=[lambda e, d: events.append(e), bars])
    assert events[0] == "run_start" and events[1] == "execution_start"
    assert bars.prompt["1"]["class_type"] == "IntConst"
