"""The one-call Python API: wiring.run_workflow keeps its cache between calls."""
import json
import os

import pytest

import wiring
from graph.runner import RunError
from nodes import folder_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "workflows", "example_images.json")


def test_run_workflow_reuses_its_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(wiring, "_runner", None)
    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        wf = json.load(open(EXAMPLE))
        first = wiring.run_workflow(wf)
        files = first.files(folder_paths)
        assert files and all(os.path.isfile(f) for f in files)
        assert len(first.ran) == len(wf)
        again = wiring.run_workflow(EXAMPLE)  # same workflow from its path: nothing re-runs
        assert again.ran == []
        with pytest.raises(RunError, match="no such file"):
            wiring.run_workflow(str(tmp_path / "missing.json"))
    finally:
        folder_paths.set_output_directory(old)
