"""Smoke test: the official ComfyUI web frontend (PyPI comfyui-frontend-package, pinned 1.58.1), served
by our server with --front-end-root, boots in headless Chromium, takes workflows/default.json, runs it
on the tiny bundled checkpoint and shows the saved image on the Save Image node, as a user would see it.

Needs /usr/bin/chromium (skipped without it) and the `playwright` Python package driving it; never
`playwright install` (we use Debian's Chromium, not a downloaded one).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from PIL import Image

from tests.frontend_harness import (CHROMIUM_ARGS, ROOT, ServerProcess, build_tiny_checkpoint,
                                    frontend_static_dir, require_chromium)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

WORKFLOW = ROOT / "workflows" / "default.json"
SCREENSHOT = Path("/tmp/frontend_smoke.png")
BOOT_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 150_000  # 8 Euler steps at 256x256 on the tiny model take ~30 s on a busy 2-core box


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    static = frontend_static_dir()
    require_chromium()
    base = tmp_path_factory.mktemp("frontend_base")
    build_tiny_checkpoint(base)
    output = base / "output"
    proc = ServerProcess(["--base-directory", str(base), "--output-directory", str(output),
                          "--front-end-root", str(static)], base / "server.log")
    proc.output_dir = output
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def problems():
    """Uncaught script errors and server 5xx answers seen by the page, reported together at the end."""
    return []


@pytest.fixture
def page(server, problems):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("pip install playwright (test extra); do not run `playwright install`")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: r.status >= 500 and problems.append(f"{r.status} {r.url}"))
            # The frontend may try outside hosts (release notes, fonts); keep the test hermetic.
            page.route("**/*", lambda route: route.continue_()
                       if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost")
                       else route.abort())
            yield page
        finally:
            browser.close()


def _visible_dialogs(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.p-dialog, [role=dialog]')]
        .filter(d => d.offsetParent !== null || getComputedStyle(d).position === 'fixed')
        .map(d => d.innerText.trim().slice(0, 300))""")


def _browser_pixels(page, node_id: int) -> dict:
    """Decode the node's preview <img> in the page and return its size and raw RGBA bytes."""
    return page.evaluate("""(id) => {
        const img = window.app.graph.getNodeById(id).imgs[0];
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d', {colorSpace: 'srgb'});
        ctx.drawImage(img, 0, 0);
        return {w: c.width, h: c.height, rgba: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
    }""", node_id)


def test_official_frontend_boots_runs_default_workflow_and_shows_image(server, page, problems):
    workflow = json.loads(WORKFLOW.read_text())
    types = sorted(n["type"] for n in workflow["nodes"])
    by_type = {n["type"]: n for n in workflow["nodes"]}
    save_id = by_type["SaveImage"]["id"]
    width, height, _batch = by_type["EmptyLatentImage"]["widgets_values"]

    # --- boot: the app object, a drawn canvas, and no modal dialog in the way
    page.goto(server.url + "/")
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=BOOT_TIMEOUT_MS)
    canvas = page.locator("canvas#graph-canvas")
    canvas.wait_for(state="visible", timeout=BOOT_TIMEOUT_MS)
    box = canvas.bounding_box()
    assert box and box["width"] > 500 and box["height"] > 400, f"graph canvas too small or hidden: {box}"
    assert _visible_dialogs(page) == [], "a dialog blocks the editor after boot"

    # Every node type of our workflow came through /api/object_info into the frontend's node library.
    unknown = page.evaluate("(types) => types.filter(t => !window.LiteGraph.registered_node_types[t])",
                               sorted(by_type))
    assert unknown == [], f"frontend does not know these node types: {unknown}"

    # --- load our workflow, bring it all into view, and press Run like a user
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.Canvas.FitView')")
    loaded = page.evaluate("() => window.app.graph.nodes.map(n => n.type).sort()")
    assert loaded == types
    assert _visible_dialogs(page) == [], "loading workflows/default.json raised a dialog"
    page.get_by_role("button", name="Run", exact=True).click()

    # --- the Save Image node shows the picture, fetched from /api/view
    started = time.monotonic()
    page.wait_for_function("""(id) => { const n = window.app.graph.getNodeById(id);
        return n && n.imgs && n.imgs.length && n.imgs[0].complete && n.imgs[0].naturalWidth > 0; }""",
                           arg=save_id, timeout=RUN_TIMEOUT_MS)
    run_seconds = time.monotonic() - started
    src = page.evaluate("(id) => window.app.graph.getNodeById(id).imgs[0].src", save_id)
    url = urlparse(src)
    query = parse_qs(url.query)
    assert url.path == "/api/view" and query.get("type") == ["output"], src
    filename = query["filename"][0]
    assert filename.startswith(by_type["SaveImage"]["widgets_values"][0] + "_"), filename
    page.wait_for_timeout(500)  # let the canvas draw the preview before the screenshot
    page.screenshot(path=str(SCREENSHOT))
    assert _visible_dialogs(page) == [], "the run ended with an error dialog"

    # --- the same picture is on disk, with the workflow embedded for drag-and-drop reloading
    png = server.output_dir / query.get("subfolder", [""])[0] / filename
    assert png.is_file(), f"{png} missing; output dir holds {sorted(p.name for p in server.output_dir.iterdir())}"
    with Image.open(png) as im:
        assert im.size == (width, height)
        embedded = json.loads(im.text["workflow"])
        assert "prompt" in im.text
        on_disk = im.convert("RGBA").tobytes()
    assert sorted(n["type"] for n in embedded["nodes"]) == types

    # What the browser decoded is the saved file, pixel for pixel (a PNG without a colour profile is
    # drawn unchanged; allow 1 level for any colour-management rounding).
    shown = _browser_pixels(page, save_id)
    assert (shown["w"], shown["h"]) == (width, height)
    worst = max(abs(a - b) for a, b in zip(shown["rgba"], on_disk))
    assert worst <= 1, f"browser shows different pixels than {png.name} (max difference {worst})"
    assert len(set(on_disk[0::4])) > 16, "the saved image is flat; the sampler produced nothing"

    # The jobs list the frontend's queue panel reads agrees.
    jobs = server.get_json("/api/jobs?status=completed&limit=10")["jobs"]
    assert [j["preview_output"]["filename"] for j in jobs] == [filename]

    # The model library sidebar (fed by /api/experiment/models) lists the checkpoint we ran.
    ckpt_stem = Path(by_type["CheckpointLoaderSimple"]["widgets_values"][0]).stem
    page.get_by_role("button", name="Model Library (m)").click()
    page.get_by_text("checkpoints", exact=True).first.click()
    page.get_by_text(ckpt_stem, exact=True).wait_for(state="visible", timeout=15_000)

    assert problems == [], "\n".join(problems) + "\n--- server log ---\n" + server.log_tail()
    print(f"run took {run_seconds:.1f}s in the browser; screenshot at {SCREENSHOT}")
