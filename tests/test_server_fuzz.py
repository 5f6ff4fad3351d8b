"""Hypothesis fuzz: random and malformed prompts and bodies never get a 5xx, and the server keeps
answering. The server runs in a background thread; requests are plain urllib (2,050 examples, ~20 s)."""
import asyncio
import json
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server_fixtures import make_app
from tests.server_nodes import FakeFolderPaths


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Base URL of a server running in its own thread and event loop."""
    fp = FakeFolderPaths(tmp_path_factory.mktemp("fuzz"))
    app = make_app(fp)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box = {}

    async def start():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = site._server.sockets[0].getsockname()[1]
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()),
                              daemon=True)
    thread.start()
    assert started.wait(10)
    yield f"http://127.0.0.1:{box['port']}"
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def request(base, method, path, body=None, headers=None):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)

# Only quick nodes: the fuzzer must not queue long sleeps or file writes.
class_types = st.sampled_from(["Number", "Add", "Show", "Fail", "Block"]) | st.text(max_size=8)
links = st.tuples(st.sampled_from(["1", "2", "3", 1, "x"]), st.integers(-1, 3) | st.text(max_size=2)).map(list)
input_values = json_values | links | st.integers(-2000, 2000)
nodes = st.fixed_dictionaries(
    {"class_type": class_types},
    optional={"inputs": st.dictionaries(st.sampled_from(["value", "a", "b", "zz"]), input_values, max_size=3)})
prompts = st.dictionaries(st.sampled_from(["1", "2", "3", "9", ""]), nodes | json_values, max_size=4)
prompt_bodies = st.fixed_dictionaries(
    {"prompt": prompts | json_values},
    optional={"client_id": json_values, "front": json_values, "number": json_values,
              "prompt_id": json_values, "extra_data": json_values,
              "partial_execution_targets": json_values, "webhook": json_values})

POST_JSON_ROUTES = ["/prompt", "/api/prompt", "/queue", "/history", "/free", "/interrupt", "/settings",
                    "/settings/x", "/users", "/api/run", "/api/jobs/x/cancel", "/userdata/f.json"]
GET_ROUTES = ["/view", "/history", "/api/jobs", "/userdata", "/v2/userdata", "/models/{}", "/object_info/{}",
              "/view_metadata/{}", "/internal/files/{}", "/history/{}", "/api/jobs/{}", "/userdata/{}",
              "/settings/{}"]


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=prompt_bodies)
def test_random_prompts_never_5xx(live, body):
    status, raw = request(live, "POST", "/prompt", json.dumps(body).encode(),
                          {"Content-Type": "application/json"})
    assert status < 500, raw
    assert status in (200, 400), (status, raw)
    if status == 400:
        assert "error" in json.loads(raw)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(POST_JSON_ROUTES),
       body=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_bodies_never_5xx(live, route, body):
    if route == "/api/run":
        # keep the wait short whatever the fuzzer sends
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            parsed["timeout"] = 0.05
            body = json.dumps(parsed).encode()
    status, raw = request(live, "POST", route, body, {"Content-Type": "application/json"})
    assert status < 500, (route, body, raw)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(GET_ROUTES), segment=st.text(max_size=12),
       query=st.dictionaries(st.sampled_from(["filename", "subfolder", "type", "dir", "path", "max_items",
                                              "offset", "status", "limit", "channel", "preview", "recurse"]),
                             st.text(max_size=12), max_size=4))
def test_random_paths_and_queries_never_5xx(live, route, segment, query):
    path = route.format(urllib.parse.quote(segment, safe="")) + "?" + urllib.parse.urlencode(query)
    status, raw = request(live, "GET", path)
    assert status < 500, (path, raw)
    assert b"Traceback" not in raw


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(["/upload/image", "/upload/mask"]), body=st.binary(max_size=200),
       boundary=st.sampled_from(["x", "", "--", "a" * 80]))
def test_random_multipart_never_5xx(live, route, body, boundary):
    body = b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n" + body
    status, raw = request(live, "POST", route, body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status < 500, (route, body, raw)


def test_still_answers_after_fuzzing(live):
    status, raw = request(live, "GET", "/system_stats")
    assert status == 200 and "system" in json.loads(raw)
