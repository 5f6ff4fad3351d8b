"""ComfyUI's modules for custom node packs: `server.PromptServer`, `comfy.utils`,
`comfy.model_management` (compat/ and server/pack_api.py), used by a pack written in the test."""
from __future__ import annotations

import ast
import os
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from graph import progress
from graph.contract import InterruptProcessing
from nodes import folder_paths
from nodes.custom_packs import COMPAT_DIR
from server.app import build_app
from server.args import parse_args
from server.pack_api import PromptServer
from tests.plugins_env import write
from tests.server_nodes import make_executor, make_registry
from wiring import load_with_packs, server_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHIM_PACK = '''
import server
import comfy.utils
import comfy.model_management
from aiohttp import web


@server.PromptServer.instance.routes.get("/shim_pack/hello")
async def hello(request):
    return web.json_response({"hello": "pack"})


class Steps:
    CATEGORY = "pack"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3})}}

    def run(self, steps):
        bar = comfy.utils.ProgressBar(steps)
        for _ in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)
        server.PromptServer.instance.send_sync("shim_pack.done", {"steps": steps})
        return (steps,)


NODE_CLASS_MAPPINGS = {"ShimSteps": Steps}
'''


@pytest.fixture
def shim_pack(tmp_path, monkeypatch):
    root = tmp_path / "custom_nodes"
    write(root, "shim_pack.py", SHIM_PACK)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(root)], set()))
    registry, reports = load_with_packs(make_registry)
    assert [(r.name, r.status, r.error) for r in reports] == [("shim_pack", "OK", None)]
    yield registry, reports
    # The route table is process-wide (packs register at import); leave it as we found it.
    PromptServer.instance.routes._items[:] = [
        d for d in PromptServer.instance.routes if not d.path.startswith("/shim_pack/")]


def bound_run(extra_data=None):
    events = []
    run = progress.NodeRun("p1", "7", "7", None, "7", threading.Event(),
                           on_progress=lambda r, v, t, p: events.append((r.node_id, v, t)),
                           extra_data=extra_data or {})
    return run, events


@pytest.mark.asyncio
async def test_pack_route_is_served_and_send_sync_reaches_the_hub(shim_pack, aiohttp_client):
    registry, reports = shim_pack
    app = build_app(parse_args([]), server_context(registry, reports), executor=make_executor(registry))
    client = await aiohttp_client(app)
    for path in ("/shim_pack/hello", "/api/shim_pack/hello"):  # ComfyUI serves pack routes both ways
        r = await client.get(path)
        assert r.status == 200 and await r.json() == {"hello": "pack"}
    sent = []
    PromptServer.instance._hub.send_threadsafe = lambda *a: sent.append(a)
    PromptServer.instance.send_sync("x", {"a": 1}, "sid1")
    assert sent == [("x", {"a": 1}, "sid1")]
    await client.close()
    assert PromptServer.instance._hub is None  # detached at cleanup: headless send_sync is a no-op
    PromptServer.instance.send_sync("x", {})


def test_pack_node_progress_interrupt_and_server_ids(shim_pack):
    registry, _ = shim_pack
    node = registry.get_class("ShimSteps")()
    run, events = bound_run({"client_id": "c9"})
    token = progress.bind(run)
    try:
        assert PromptServer.instance.client_id == "c9" and PromptServer.instance.last_node_id == "7"
        assert node.run(3) == (3,)
        assert events == [("7", 1, 3), ("7", 2, 3), ("7", 3, 3)]
        import comfy.model_management as mm

        assert not mm.processing_interrupted()
        mm.interrupt_current_processing()
        assert mm.processing_interrupted()
        with pytest.raises(mm.InterruptProcessingException):
            node.run(2)
        assert mm.InterruptProcessingException is InterruptProcessing
    finally:
        progress.unbind(token)
        progress.clear_last(run)
    assert PromptServer.instance.client_id is None


def test_global_progress_hook_replaces_the_default(shim_pack):
    import comfy.utils

    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda v, t, p, node_id=None: calls.append((v, t, node_id)))
    try:
        comfy.utils.ProgressBar(4, node_id="n").update_absolute(9)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    assert calls == [(4, 4, "n")]


def test_common_upscale_is_our_resize(shim_pack):
    import comfy.utils

    x = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(comfy.utils.common_upscale(x, 6, 4, "bilinear", "disabled"),
                       F.interpolate(x, size=(4, 6), mode="bilinear"))
    # crop "center": 8x12 to a square target keeps the middle 8 columns.
    assert torch.equal(comfy.utils.common_upscale(x, 4, 4, "area", "center"),
                       F.interpolate(x[..., 2:10], size=(4, 4), mode="area"))
    out = comfy.utils.lanczos(x, 5, 3)
    assert out.shape == (2, 3, 3, 5) and (out - F.interpolate(x, size=(3, 5), mode="area")).abs().max() < 0.5


def test_load_torch_file_reads_safetensors_and_tensor_pickles(shim_pack, tmp_path):
    import comfy.utils
    from safetensors.torch import save_file

    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    save_file(sd, str(tmp_path / "m.safetensors"), metadata={"k": "v"})
    got, meta = comfy.utils.load_torch_file(str(tmp_path / "m.safetensors"), return_metadata=True)
    assert torch.equal(got["w"], sd["w"]) and meta == {"k": "v"}
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    assert torch.equal(comfy.utils.load_torch_file(str(tmp_path / "m.ckpt"), safe_load=True)["w"], sd["w"])


def test_compat_shadows_nothing_and_our_code_never_imports_it(shim_pack):
    import comfy

    assert sys.path.index(COMPAT_DIR) > sys.path.index(ROOT) if ROOT in sys.path else True
    assert os.path.dirname(comfy.__file__) == os.path.join(COMPAT_DIR, "comfy")
    ours = {"graph", "nodes", "diffusion", "server", "main", "wiring", "folder_paths"}
    assert not {n.removesuffix(".py") for n in os.listdir(COMPAT_DIR)} & ours
    bad = []
    for package in ("graph", "nodes", "diffusion", "server"):
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(dirpath, name)
                for n in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    mods = [a.name for a in n.names] if isinstance(n, ast.Import) else (
                        [n.module] if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module else [])
                    bad += [f"{path}: {m}" for m in mods if m.split(".")[0] in ("comfy", "compat")]
    assert not bad
