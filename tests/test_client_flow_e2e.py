"""The client flow of ComfyUI's script_examples/websockets_api_example.py against our real server:
connect /ws?clientId=..., POST /prompt with an API prompt (workflows/default.json converted, made small),
read messages until `executing` with node null for our prompt id, GET /history/{id}, GET /view of the
image. Real registry, real nodes, the tiny SD1 checkpoint under the workflow's own checkpoint name.
"""
from __future__ import annotations

import asyncio
import io
import json
import uuid
from pathlib import Path

import pytest
from PIL import Image

from graph.queue import PromptStore
from server.app import build_app
from server.args import parse_args
from tests.sdnodes_env import temporary_base

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "workflows" / "default.json"
SIZE = 64
STEPS = 3
WAIT_S = 60.0  # generous: the machine is shared


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory) -> Path:
    from tools.make_tiny_checkpoint import make_tiny_sd1

    return make_tiny_sd1(tmp_path_factory.mktemp("client_flow_ckpt") / "tiny.safetensors", seed=0)


@pytest.fixture
def base(tmp_path):
    """nodes.folder_paths re-rooted at a temporary base directory; restored afterwards."""
    with temporary_base(tmp_path):
        yield tmp_path


def _api_prompt(registry) -> dict:
    """workflows/default.json in API format, with the edits a script makes: size and steps."""
    from graph.workflow_formats import to_api

    prompt = to_api(str(WORKFLOW), registry.object_info_for)
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=SIZE, height=SIZE)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = STEPS
    return prompt


async def _receive_until_done(ws, prompt_id) -> list[tuple[str, dict]]:
    """As the example script: read until `executing` with node None for our prompt (binary frames
    would be previews; none are expected with previews off)."""
    messages = []
    while True:
        msg = await asyncio.wait_for(ws.receive(), WAIT_S)
        assert msg.type.name == "TEXT", f"unexpected frame {msg.type}: {msg.data!r:.200}"
        m = json.loads(msg.data)
        messages.append((m["type"], m["data"]))
        if m["type"] == "executing" and m["data"]["node"] is None and m["data"].get("prompt_id") == prompt_id:
            return messages


def _topological(order: list[str], prompt: dict) -> bool:
    seen = set()
    for nid in order:
        links = [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
        if not set(links) <= seen:
            return False
        seen.add(nid)
    return True


def _expected_types(order: list[str], prompt: dict) -> list[str]:
    """The COMPAT §5.2 sequence for a cold run of this prompt, node by node in `order`."""
    seq = ["status", "status", "execution_start", "execution_cached"]
    for nid in order:
        seq += ["progress_state", "executing"]
        if prompt[nid]["class_type"] == "KSampler":
            seq += ["progress_state", "progress"] * STEPS
        if prompt[nid]["class_type"] == "SaveImage":
            seq += ["executed"]
        seq += ["progress_state"]
    return seq + ["execution_success", "status", "executing"]


async def _app_client(aiohttp_client, base, registry):
    from wiring import server_context

    app = build_app(parse_args(["--base-directory", str(base)]), server_context(registry),
                    store=PromptStore())
    return await aiohttp_client(app)


async def _script_run(client, prompt: dict, extra_data=None):
    """The example script's steps: (messages, prompt_id, history entry, viewed image bytes, saved path)."""
    from nodes import folder_paths

    client_id = uuid.uuid4().hex
    ws = await client.ws_connect(f"/ws?clientId={client_id}")
    hello = json.loads((await ws.receive(timeout=WAIT_S)).data)
    assert hello["type"] == "status" and hello["data"]["sid"] == client_id

    body = {"prompt": prompt, "client_id": client_id}
    if extra_data is not None:
        body["extra_data"] = extra_data
    r = await client.post("/prompt", json=body)
    assert r.status == 200, await r.text()
    prompt_id = (await r.json())["prompt_id"]
    messages = await _receive_until_done(ws, prompt_id)
    await ws.close()

    r = await client.get(f"/history/{prompt_id}")
    history = (await r.json())[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"], history["status"]
    (images,) = [out["images"] for out in history["outputs"].values() if "images" in out]
    (image,) = images
    r = await client.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"],
                                          "type": image["type"]})
    assert r.status == 200
    saved = Path(folder_paths.get_output_directory(), image["subfolder"], image["filename"])
    return messages, prompt_id, history, await r.read(), saved


async def test_websocket_script_flow_on_default_workflow(base, tiny_sd1, aiohttp_client):
    from nodes import load_registry

    registry = load_registry()
    prompt = _api_prompt(registry)
    ckpt = next(n["inputs"]["ckpt_name"] for n in prompt.values() if n["class_type"] == "CheckpointLoaderSimple")
    (base / "models" / "checkpoints" / ckpt).symlink_to(tiny_sd1)
    client = await _app_client(aiohttp_client, base, registry)
    messages, prompt_id, history, body, saved = await _script_run(client, prompt)

    # --- the message order of COMPAT §5.2 for this workflow
    types = [t for t, _ in messages]
    order = [d["node"] for t, d in messages if t == "executing" and d["node"] is not None]
    assert sorted(order) == sorted(prompt) and _topological(order, prompt), order
    assert types == _expected_types(order, prompt), types
    for t, d in messages:
        if t != "status":
            assert d["prompt_id"] == prompt_id, (t, d)
    by_type = {}
    for t, d in messages:
        by_type.setdefault(t, []).append(d)
    assert by_type["execution_cached"] == [{"nodes": [], "prompt_id": prompt_id,
                                            "timestamp": by_type["execution_cached"][0]["timestamp"]}]
    sampler = next(nid for nid, n in prompt.items() if n["class_type"] == "KSampler")
    assert [(d["value"], d["max"], d["node"]) for d in by_type["progress"]] == \
        [(i + 1, STEPS, sampler) for i in range(STEPS)]
    final_states = by_type["progress_state"][-1]["nodes"]
    assert sorted(final_states) == sorted(prompt)
    assert all(s["state"] == "finished" for s in final_states.values())
    save = next(nid for nid, n in prompt.items() if n["class_type"] == "SaveImage")
    (executed,) = by_type["executed"]
    assert executed["node"] == save and executed["display_node"] == save
    assert by_type["executing"][-1] == {"node": None, "prompt_id": prompt_id}

    # --- history and the viewed image: the very bytes SaveImage wrote
    assert history["prompt"][2] == prompt
    assert history["outputs"][save] == executed["output"]
    assert body == saved.read_bytes()
    with Image.open(io.BytesIO(body)) as png:
        assert png.format == "PNG" and png.size == (SIZE, SIZE)
        assert json.loads(png.text["prompt"]) == prompt


async def test_websocket_script_flow_on_a_comfyui_template(base, aiohttp_client):
    """image_sdxl_simple.json from ComfyUI's templates package, converted as the frontend would, sent with
    the UI workflow in extra_pnginfo; the viewed PNG carries both back."""
    from graph.workflow_formats import ui_to_api
    from nodes import load_registry
    from tests.templates_env import checkpoint_names, load_template, require_templates_package, shrink
    from tools.make_tiny_checkpoint import make_tiny_sdxl

    require_templates_package()
    registry = load_registry()
    ui, overrides = shrink(load_template("image_sdxl_simple.json"), SIZE, STEPS)
    prompt = ui_to_api(ui, registry.object_info_for)
    for key, value in overrides.items():  # a script sets inputs on the API prompt
        node, name = key.split(".")
        prompt[node]["inputs"][name] = value
    (ckpt,) = set(checkpoint_names(prompt).values())
    make_tiny_sdxl(base / "models" / "checkpoints" / ckpt, seed=0)
    client = await _app_client(aiohttp_client, base, registry)
    messages, prompt_id, history, body, saved = await _script_run(client, prompt, {"extra_pnginfo": {"workflow": ui}})

    assert [d["value"] for t, d in messages if t == "progress"] == list(range(1, STEPS + 1))
    assert body == saved.read_bytes()
    with Image.open(io.BytesIO(body)) as png:
        assert png.size == (SIZE, SIZE)
        assert json.loads(png.text["prompt"]) == prompt
        assert json.loads(png.text["workflow"]) == ui
