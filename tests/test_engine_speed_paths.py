"""What the speed work must not change: PNG metadata per prompt, progress_state snapshots, and the
benchmark's image graph (benchmarks/engine.py's HTTP row) running on the built-in nodes."""
import importlib.util
import json
import os

import pytest
from PIL import Image

from graph.runner import Runner
from nodes import folder_paths, load_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture
def temp_dir(tmp_path):
    saved = folder_paths.get_temp_directory()
    folder_paths.set_temp_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_temp_directory(saved)


def previews_prompt(color):
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 4, "batch_size": 1,
                                                         "color": color}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
            "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}


def embedded(path):
    with Image.open(path) as img:
        return json.loads(img.text["prompt"])


def test_every_preview_embeds_its_own_runs_prompt(registry, temp_dir):
    runner = Runner(registry)
    first = runner.run(previews_prompt(1))
    for path in first.previews(folder_paths):
        assert embedded(path) == first.prompt
    second = runner.run(previews_prompt(2))  # a new prompt: the serialized text is not reused
    paths = second.previews(folder_paths)
    assert len(paths) == 2
    for path in paths:
        assert embedded(path) == second.prompt and embedded(path)["1"]["inputs"]["color"] == 2


def test_progress_state_snapshots_do_not_change_afterwards(registry, temp_dir):
    seen = []

    def listener(event, data):
        if event == "progress_state":
            seen.append((data, json.dumps(data, sort_keys=True)))

    Runner(registry, listeners=[listener]).run(previews_prompt(3))
    assert len(seen) >= 8  # running + finished for each of the four nodes
    for data, text in seen:  # each table still reads as it did when it was sent
        assert json.dumps(data, sort_keys=True) == text
    final = seen[-1][0]["nodes"]
    assert sorted(final) == ["1", "2", "3", "4"]
    assert all(entry["state"] == "finished" for entry in final.values())


def test_benchmark_image_graph_runs(temp_dir):
    spec = importlib.util.spec_from_file_location("bench_engine", os.path.join(ROOT, "benchmarks", "engine.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    registry = bench.bench_registry()
    prompt = bench.image_graph(20, 1)
    assert len(prompt) == 20
    assert {n["class_type"] for n in prompt.values()} == {"EmptyImage", "ImageBlend", "ImageInvert",
                                                          "PreviewImage"}
    result = Runner(registry).run(prompt)
    assert len(result.previews(folder_paths)) == 4
    with Image.open(result.previews(folder_paths)[0]) as img:
        assert img.size == (bench.IMAGE_SIZE, bench.IMAGE_SIZE)
