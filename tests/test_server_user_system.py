"""Users, settings, userdata, system routes, web root, OpenAPI, /api/run and webhooks."""
import asyncio
import json
import os

import pytest
from aiohttp import web

from tests.server_fixtures import chain, client, env, make_client, wait_history  # noqa: F401

pytestmark = pytest.mark.asyncio


async def test_users_and_settings(client, env):
    assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}
    settings = await (await client.get("/api/settings")).json()
    assert settings["Comfy.TutorialCompleted"] is True
    assert (await client.post("/settings", json={"A.b": 1, "Comfy.TutorialCompleted": False})).status == 200
    assert (await client.post("/settings/X.y", json=[1, 2])).status == 200
    settings = await (await client.get("/settings")).json()
    assert settings["A.b"] == 1 and settings["Comfy.TutorialCompleted"] is False and settings["X.y"] == [1, 2]
    assert await (await client.get("/settings/X.y")).json() == [1, 2]
    assert await (await client.get("/settings/unset")).json() is None
    stored = json.load(open(os.path.join(env.get_user_directory(), "default", "comfy.settings.json")))
    assert stored["A.b"] == 1
    assert (await client.post("/settings", data=b"[1]")).status == 400
    uid = await (await client.post("/users", json={"username": "ann"})).json()
    assert uid.startswith("ann_")
    assert (await client.post("/users", json={"username": "ann"})).status == 400


async def test_userdata_crud_list_move(client):
    r = await client.post("/userdata/workflows%2Fa.json", data=b'{"x": 1}')
    assert r.status == 200 and await r.json() == "workflows/a.json"
    r = await client.post("/userdata/workflows%2Fa.json?overwrite=false", data=b"{}")
    assert r.status == 409
    r = await client.post("/userdata/workflows%2Fsub%2Fb.json?full_info=true", data=b"{}")
    info = await r.json()
    assert info["path"] == "workflows/sub/b.json" and info["size"] == 2 and isinstance(info["modified"], int)
    assert await (await client.get("/userdata/workflows%2Fa.json")).read() == b'{"x": 1}'
    listing = await (await client.get("/userdata?dir=workflows")).json()
    assert listing == ["a.json"]
    listing = await (await client.get("/userdata?dir=workflows&recurse=true")).json()
    assert listing == ["a.json", "sub/b.json"]
    split = await (await client.get("/userdata?dir=workflows&recurse=true&split=true")).json()
    assert split == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = await (await client.get("/api/userdata?dir=workflows&recurse=true&full_info=true")).json()
    assert [f["path"] for f in full] == ["a.json", "sub/b.json"]
    assert (await client.get("/userdata")).status == 400
    assert (await client.get("/userdata?dir=nothing")).status == 404
    v2 = await (await client.get("/v2/userdata?path=workflows")).json()
    assert [(e["name"], e["type"]) for e in v2] == [("sub", "directory"), ("a.json", "file")]
    r = await client.post("/userdata/workflows%2Fa.json/move/workflows%2Fsub%2Fb.json?overwrite=false")
    assert r.status == 409
    r = await client.post("/userdata/workflows%2Fa.json/move/workflows%2Fc.json")
    assert await r.json() == "workflows/c.json"
    assert (await client.get("/userdata/workflows%2Fa.json")).status == 404
    assert (await client.post("/userdata/nope.json/move/x.json")).status == 404
    assert (await client.delete("/userdata/workflows%2Fc.json")).status == 204
    assert (await client.delete("/userdata/workflows%2Fc.json")).status == 404


async def test_system_routes(client):
    stats = await (await client.get("/system_stats")).json()
    assert stats["system"]["python_version"] and stats["devices"][0]["type"] in ("cpu", "cuda")
    assert (await (await client.get("/features")).json())["supports_preview_metadata"] is True
    assert await (await client.get("/extensions")).json() == []
    assert await (await client.get("/i18n")).json() == {}
    r = await client.get("/")
    assert r.status == 404 and "error" in await r.json()


async def test_web_root_served_with_no_cache_and_extensions(make_client, tmp_path):
    root = tmp_path / "web"
    (root / "extensions" / "core").mkdir(parents=True)
    (root / "index.html").write_text("<html>editor</html>")
    (root / "extensions" / "core" / "a.js").write_text("export {}")
    client = await make_client(["--front-end-root", str(root)], web_root=str(root))
    r = await client.get("/")
    assert await r.text() == "<html>editor</html>" and r.headers["Cache-Control"] == "no-cache"
    assert await (await client.get("/extensions")).json() == ["/extensions/core/a.js"]
    r = await client.get("/extensions/core/a.js")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
    assert (await client.get("/%2E%2E/%2E%2E/etc/passwd")).status in (403, 404)


async def test_openapi_matches_registered_routes(client):
    doc = await (await client.get("/api/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = set()
    for resource in client.app.router.resources():
        path = resource.canonical
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue
            registered.add((route.method, path.replace("{path:.+}", "{path}")))
    non_api = {("GET", p) for p in ("/ws", "/api/ws", "/extensions/{name}/{path}", "/", "/{path}")}
    assert documented == registered - non_api
    # the routes the issue names are all there, at both spellings
    for method, path in [("POST", "/prompt"), ("GET", "/api/prompt"), ("GET", "/queue"),
                         ("POST", "/interrupt"), ("POST", "/free"), ("GET", "/history/{prompt_id}"),
                         ("GET", "/api/jobs/{job_id}"), ("POST", "/api/jobs/{job_id}/cancel"),
                         ("GET", "/object_info/{node_class}"), ("GET", "/view_metadata/{folder}"),
                         ("POST", "/upload/mask"), ("GET", "/v2/userdata"),
                         ("POST", "/userdata/{file}/move/{dest}"), ("GET", "/internal/files/{type}"),
                         ("POST", "/api/run"), ("GET", "/api/i18n")]:
        assert (method, path) in documented, (method, path)


async def test_api_run_returns_outputs_and_inline_files(client):
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 42}},
              "2": {"class_type": "SaveText", "inputs": {"value": ["1", 0], "filename": "r.txt"}}}
    r = await client.post("/api/run", json={"prompt": prompt, "inline": True, "timeout": 10})
    body = await r.json()
    assert r.status == 200 and body["status"] == "completed"
    ref = body["outputs"]["2"]["images"][0]
    import base64
    assert base64.b64decode(ref["data"]) == b"42"
    r = await client.post("/api/run", json={"prompt": chain(1, steps=50, delay=0.02), "timeout": 0.1})
    assert r.status == 202 and (await r.json())["timed_out"] is True
    r = await client.post("/api/run", json={"prompt": chain(1), "timeout": "soon"})
    assert r.status == 400
    r = await client.post("/api/run", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert r.status == 400


async def test_webhook_called_with_bounded_retries(client):
    calls = []

    async def hook(request):
        calls.append(await request.json())
        return web.Response(status=500 if len(calls) == 1 else 200)

    hook_app = web.Application()
    hook_app.router.add_post("/hook", hook)
    runner = web.AppRunner(hook_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        r = await client.post("/prompt", json={"prompt": chain(6), "webhook": f"http://127.0.0.1:{port}/hook"})
        pid = (await r.json())["prompt_id"]
        for _ in range(200):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(calls) == 2  # one failure, one retry that succeeded, then no more
        assert calls[1]["prompt_id"] == pid and calls[1]["outputs"] == {"9": {"value": [6]}}
        assert calls[1]["status"] == "completed"
        await asyncio.sleep(0.5)
        assert len(calls) == 2
        bad = await client.post("/prompt", json={"prompt": chain(6), "webhook": "file:///etc/passwd"})
        assert bad.status == 400
    finally:
        await runner.cleanup()


async def test_default_web_root_is_the_landing_page(make_client):
    from server.routes_system import default_web_root

    root = default_web_root()
    assert root is not None and root.endswith("web")
    client = await make_client(web_root=root)
    r = await client.get("/")
    assert r.status == 200 and "latentgraph" in await r.text()
