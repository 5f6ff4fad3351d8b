"""PreviewAny (comfy_extras.nodes_preview_any): any value shown as text in the node's UI result."""
import json

import pytest
import torch

from graph.runner import Runner
from nodes import load_registry
from nodes.utility_nodes import PreviewAny

# /object_info as ComfyUI (the version COMPAT §9 describes) reports it.
COMFY_INFO = {"input": {"required": {"source": ["*", {}]}}, "input_order": {"required": ["source"]},
              "output": [], "output_is_list": [], "output_name": [], "name": "PreviewAny",
              "display_name": "Preview Any", "description": "",
              "python_module": "comfy_extras.nodes_preview_any", "category": "utils", "output_node": True}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def test_object_info_equals_comfyui(registry):
    assert json.loads(json.dumps(registry.object_info_for("PreviewAny"))) == COMFY_INFO


def shown(value):
    return PreviewAny().execute(value)["ui"]["text"]


def test_plain_values():
    assert shown("a\nb") == ["a\nb"]
    assert shown(3) == ["3"] and shown(2.5) == ["2.5"] and shown(True) == ["True"]
    assert shown(None) == ["None"]


def test_containers_render_as_json_where_they_can():
    assert shown([1, "x", None]) == ['[1, "x", null]']
    assert shown({"a": [1.5, False]}) == ['{"a": [1.5, false]}']
    t = torch.arange(3.0)
    assert shown(t) == [str(t)]  # a tensor is not JSON: its str()
    latent = {"samples": torch.zeros(1, 4, 1, 1)}
    assert shown(latent) == [str(latent)]
    loop = []
    loop.append(loop)
    assert shown(loop) == ["[[...]]"]

    class Broken:
        def __str__(self):
            raise RuntimeError("no")

    assert shown(Broken()) == ["source exists, but could not be serialized."]


def test_in_a_graph_any_type_links_in(registry):
    prompt = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
              "3": {"class_type": "EmptyImage", "inputs": {"width": 2, "height": 1, "batch_size": 1,
                                                           "color": 0}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    outputs = Runner(registry).run(prompt).outputs
    assert outputs["2"] == {"text": ["7"]}
    assert outputs["4"] == {"text": [str(torch.zeros(1, 1, 2, 3))]}
