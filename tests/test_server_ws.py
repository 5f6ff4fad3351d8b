"""WebSocket /ws: handshake, feature flags, COMPAT §5.2 message order, previews, per-client routing."""
import asyncio
import json
import struct

import pytest

from tests.server_fixtures import chain, client, env, make_client, wait_history, ws_messages_until_done  # noqa: F401

pytestmark = pytest.mark.asyncio


async def connect(client, sid, flags=None):
    ws = await client.ws_connect(f"/ws?clientId={sid}")
    hello = await ws.receive_json()
    assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}}
    if flags is not None:
        await ws.send_str(json.dumps({"type": "feature_flags", "data": flags}))
        reply = await ws.receive_json()
        assert reply["type"] == "feature_flags"
        assert reply["data"]["supports_preview_metadata"] is True
        assert reply["data"]["max_upload_size"] == 100 * 1024 * 1024
    return ws


def types_of(msgs):
    return [t for t, _ in msgs]


def strip_progress_state(msgs):
    return [(t, d) for t, d in msgs if t != "progress_state"]


async def post(client, prompt, sid="c1", **extra):
    r = await client.post("/prompt", json={"prompt": prompt, "client_id": sid, **extra})
    assert r.status == 200, await r.text()
    return (await r.json())["prompt_id"]


async def test_handshake_without_client_id_gets_fresh_sid(client):
    ws = await client.ws_connect("/api/ws")
    hello = await ws.receive_json()
    assert hello["type"] == "status" and len(hello["data"]["sid"]) == 32
    await ws.close()


async def test_message_order_then_cached_rerun(client):
    ws = await connect(client, "c1", flags={"supports_preview_metadata": False})
    pid = await post(client, chain(5))
    msgs = await ws_messages_until_done(ws, pid)
    seq = types_of(strip_progress_state(msgs))
    assert seq == ["status", "status", "execution_start", "execution_cached", "executing", "executing",
                   "executed", "execution_success", "status", "executing"]
    first_executing = strip_progress_state(msgs)[4][1]
    assert first_executing == {"node": "1", "display_node": "1", "prompt_id": pid}
    executed = [d for t, d in msgs if t == "executed"][0]
    assert executed == {"node": "9", "display_node": "9", "output": {"value": [5]}, "prompt_id": pid}
    assert msgs[0][1]["status"]["exec_info"]["queue_remaining"] == 1
    assert msgs[-2][1]["status"]["exec_info"]["queue_remaining"] == 0
    assert msgs[-1][1] == {"node": None, "prompt_id": pid}
    # progress_state comes with node states
    states = [d for t, d in msgs if t == "progress_state"]
    assert states and states[-1]["nodes"]["9"]["state"] == "finished"

    # Same prompt again: everything cached, no executing for nodes, executed re-sent.
    pid2 = await post(client, chain(5))
    msgs = await ws_messages_until_done(ws, pid2)
    seq = types_of(strip_progress_state(msgs))
    assert seq == ["status", "status", "execution_start", "execution_cached", "executed",
                   "execution_success", "status", "executing"]
    cached = [d for t, d in msgs if t == "execution_cached"][0]
    assert sorted(cached["nodes"]) == ["1", "9"]
    await ws.close()


async def test_error_sequence(client):
    ws = await connect(client, "c1")
    pid = await post(client, chain(3, fail=True))
    msgs = await ws_messages_until_done(ws, pid)
    seq = types_of(strip_progress_state(msgs))
    assert seq[-3:] == ["execution_error", "status", "executing"]
    assert "execution_success" not in seq
    err = [d for t, d in msgs if t == "execution_error"][0]
    assert err["node_id"] == "3" and err["node_type"] == "Fail" and err["exception_type"] == "RuntimeError"
    assert "failed on purpose with 3" in err["exception_message"] and err["executed"] == ["1"]


async def test_blocker_reports_error_but_succeeds(client):
    ws = await connect(client, "c1")
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 1}},
              "2": {"class_type": "Block", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    pid = await post(client, prompt)
    msgs = await ws_messages_until_done(ws, pid)
    seq = types_of(strip_progress_state(msgs))
    assert "execution_error" in seq and seq[-3:] == ["execution_success", "status", "executing"]
    err = [d for t, d in msgs if t == "execution_error"][0]
    assert err["exception_type"] == "ExecutionBlocked"
    assert (await wait_history(client, pid))["status"]["status_str"] == "success"


async def test_interrupt_sequence_and_previews(client):
    ws = await connect(client, "c1", flags={"supports_preview_metadata": True})
    legacy = await connect(client, "c2")
    prompt = chain(1, steps=200, delay=0.01)
    prompt["2"]["inputs"]["preview"] = True
    pid = await post(client, prompt)
    got, previews = [], []
    while True:
        msg = await asyncio.wait_for(ws.receive(), 10)
        if msg.type.name == "BINARY":
            previews.append(msg.data)
            got.append(("binary", None))
            if len(previews) == 3:
                await client.post("/interrupt", data=b"{not json")
            continue
        m = json.loads(msg.data)
        got.append((m["type"], m["data"]))
        if m["type"] == "executing" and m["data"]["node"] is None:
            break
    seq = [t for t, _ in got if t != "progress_state"]
    assert seq[-3:] == ["execution_interrupted", "status", "executing"]
    # Type-4 frames, each sent before its progress message.
    first = seq.index("binary")
    assert seq[first + 1] == "progress"
    kind, meta_len = struct.unpack(">II", previews[0][:8])
    assert kind == 4
    meta = json.loads(previews[0][8:8 + meta_len])
    assert meta["node_id"] == "2" and meta["prompt_id"] == pid and meta["image_type"] == "image/jpeg"
    assert previews[0][8 + meta_len:][:2] == b"\xff\xd8"  # JPEG
    progress = [d for t, d in got if t == "progress"]
    assert progress[0] == {"value": 1, "max": 200, "prompt_id": pid, "node": "2"}
    interrupted = [d for t, d in got if t == "execution_interrupted"][0]
    assert interrupted["prompt_id"] == pid and interrupted["node_id"] == "2"
    # The other client saw only status broadcasts, nothing of c1's prompt.
    other = []
    while True:
        try:
            msg = await asyncio.wait_for(legacy.receive(), 0.3)
        except asyncio.TimeoutError:
            break
        other.append(json.loads(msg.data)["type"] if msg.type.name == "TEXT" else "binary")
    assert set(other) == {"status"}
    await ws.close()
    await legacy.close()


async def test_type1_previews_for_clients_without_metadata_flag(client):
    ws = await connect(client, "c1", flags={"supports_preview_metadata": False})
    prompt = chain(1, steps=2, delay=0.0)
    prompt["2"]["inputs"]["preview"] = True
    pid = await post(client, prompt)
    msgs = await ws_messages_until_done(ws, pid)
    frames = [d for t, d in msgs if t == "binary"]
    assert len(frames) == 2
    assert struct.unpack(">II", frames[0][:8]) == (1, 1) and frames[0][8:10] == b"\xff\xd8"


async def test_prompt_without_client_id_broadcasts_only_progress_kind(client):
    ws = await connect(client, "watcher")
    r = await client.post("/prompt", json={"prompt": chain(2, steps=2)})
    pid = (await r.json())["prompt_id"]
    await wait_history(client, pid)
    seen = []
    while True:
        try:
            msg = await asyncio.wait_for(ws.receive(), 0.3)
        except asyncio.TimeoutError:
            break
        seen.append(json.loads(msg.data)["type"])
    assert set(seen) == {"status", "progress", "progress_state"}


async def test_reconnect_while_running_gets_executing(client):
    ws = await connect(client, "c1")
    pid = await post(client, chain(1, steps=30, delay=0.02))
    await asyncio.sleep(0.2)
    await ws.close()
    ws2 = await client.ws_connect("/ws?clientId=c1")
    hello = await ws2.receive_json()
    assert hello["type"] == "status" and hello["data"]["sid"] == "c1"
    again = await ws2.receive_json()
    assert again == {"type": "executing", "data": {"node": "2"}}
    await wait_history(client, pid)
    await ws2.close()


async def test_http_answers_fast_while_a_prompt_runs(client):
    pid = await post(client, chain(1, steps=40, delay=0.02))
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    for _ in range(5):
        t0 = loop.time()
        r = await client.get("/system_stats")
        assert r.status == 200
        assert loop.time() - t0 < 0.1
    await wait_history(client, pid)


class BrokenExecutor:
    def execute(self, *a, **kw):
        raise KeyError("engine bug")

    def interrupt(self):
        pass


async def test_engine_failure_is_filed_as_error_and_worker_goes_on(env, aiohttp_client):
    from tests.server_fixtures import make_app

    app = make_app(env, executor=BrokenExecutor())
    client = await aiohttp_client(app)
    ws = await connect(client, "c1")
    for _ in range(2):
        pid = await post(client, chain(1))
        msgs = await ws_messages_until_done(ws, pid)
        assert types_of(msgs)[-3:] == ["execution_error", "status", "executing"]
        entry = await wait_history(client, pid)
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][0][1]["exception_type"] == "KeyError"
