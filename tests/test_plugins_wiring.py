"""Custom node packs through main.py's wiring: GET /api/packs, the start-up report, the flags on
`main.py run` (subprocess) and a pack node running end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nodes import folder_paths
from server.app import build_app
from server.args import parse_args
from tests.plugins_env import package_pack, saving_pack, single_file_pack, write
from tests.server_nodes import make_executor, make_registry
from wiring import load_with_packs, server_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def custom_nodes(tmp_path, monkeypatch):
    root = tmp_path / "custom_nodes"
    root.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "custom_nodes", ([str(root)], set()))
    return root


@pytest.mark.asyncio
async def test_api_packs_lists_status_classes_time_and_error(custom_nodes, aiohttp_client, caplog):
    single_file_pack(custom_nodes)
    package_pack(custom_nodes)
    write(custom_nodes, "broken.py", "import surely_not_installed_xyz\n")
    caplog.set_level("INFO")
    registry, reports = load_with_packs(make_registry)
    assert "Import times for custom nodes:" in caplog.text
    assert "broken FAILED (missing module 'surely_not_installed_xyz')" in caplog.text
    app = build_app(parse_args([]), server_context(registry, reports), executor=make_executor(registry))
    client = await aiohttp_client(app)
    r = await client.get("/api/packs")
    assert r.status == 200
    packs = {p["name"]: p for p in await r.json()}
    assert set(packs) == {"single_pack", "pkg_pack", "broken"}
    assert packs["single_pack"]["status"] == "OK" and packs["single_pack"]["node_classes"] == ["PackDouble"]
    assert packs["single_pack"]["error"] is None and packs["single_pack"]["seconds"] >= 0
    assert packs["broken"]["status"] == "FAILED" and packs["broken"]["node_classes"] == []
    assert packs["broken"]["error"] == "missing module 'surely_not_installed_xyz'"
    info = await (await client.get("/object_info/PackTriple")).json()
    assert info["PackTriple"]["python_module"] == "custom_nodes.pkg_pack"
    assert "/extensions/pkg_pack/ext.js" in await (await client.get("/extensions")).json()
    assert await (await client.get("/extensions/pkg_pack/ext.js")).text() == "// frontend extension\n"


def run_cli(custom_root, *argv):
    """`main.main(argv)` in a fresh interpreter whose custom_nodes folder is `custom_root`."""
    code = ("import sys; from nodes import folder_paths; "
            f"folder_paths.folder_names_and_paths['custom_nodes'] = ([{str(custom_root)!r}], set()); "
            f"import main; sys.exit(main.main({list(argv)!r}))")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240)


def test_main_run_loads_packs_and_honours_the_flags(custom_nodes, tmp_path):
    single_file_pack(custom_nodes)
    saving_pack(custom_nodes)
    workflow = tmp_path / "wf.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "PackDouble", "inputs": {"value": 21}},
        "2": {"class_type": "PackSaveInt", "inputs": {"value": ["1", 0]}}}))
    out = tmp_path / "out"
    out.mkdir()
    # The whitelist written before the sub-command must not swallow it.
    proc = run_cli(custom_nodes, "--disable-all-custom-nodes", "--whitelist-custom-nodes", "single_pack",
                   "saving_pack", "run", str(workflow), "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert (out / "pack_value.txt").read_text() == "42"
    assert "single_pack OK" in proc.stderr and "saving_pack OK" in proc.stderr

    proc = run_cli(custom_nodes, "run", str(workflow), "--out", str(out), "--quiet",
                   "--disable-all-custom-nodes", "--whitelist-custom-nodes", "saving_pack")
    assert proc.returncode == 1
    assert "PackDouble" in proc.stderr and "single_pack" not in proc.stderr
