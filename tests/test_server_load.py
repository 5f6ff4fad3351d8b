"""Loopback load: many WS clients each submit prompts; each prompt completes exactly once and each
client receives exactly its own execution messages: 50 clients x 10 prompts = 500 prompts
(about 10 s here)."""
import asyncio
import json

import pytest

from tests.server_fixtures import env, make_client  # noqa: F401

pytestmark = pytest.mark.asyncio
PER_PROMPT = {"execution_start", "execution_cached", "executing", "executed", "execution_success",
              "progress_state"}


async def run_load(client, n_clients, per_client):
    sockets = {}
    for c in range(n_clients):
        sid = f"client{c}"
        ws = await client.ws_connect(f"/ws?clientId={sid}")
        assert (await ws.receive_json())["data"]["sid"] == sid
        sockets[sid] = ws

    async def one_client(sid, ws):
        mine = set()
        for i in range(per_client):
            prompt = {"1": {"class_type": "Number", "inputs": {"value": i}},
                      "9": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
            r = await client.post("/prompt", json={"prompt": prompt, "client_id": sid})
            assert r.status == 200
            mine.add((await r.json())["prompt_id"])
        done, seen = [], {}
        while len(done) < per_client:
            msg = await asyncio.wait_for(ws.receive(), 60)
            m = json.loads(msg.data)
            pid = m["data"].get("prompt_id")
            if m["type"] in PER_PROMPT or m["type"] == "executing":
                assert pid in mine, f"{sid} got a message of someone else's prompt {pid}"
                seen.setdefault(pid, []).append(m["type"])
            if m["type"] == "executing" and m["data"]["node"] is None:
                done.append(pid)
        assert sorted(done) == sorted(mine)  # each prompt finished exactly once
        for pid in mine:
            assert seen[pid].count("execution_start") == 1 and seen[pid].count("execution_success") == 1
        return mine

    results = await asyncio.gather(*(one_client(sid, ws) for sid, ws in sockets.items()))
    all_ids = set().union(*results)
    assert len(all_ids) == n_clients * per_client
    history = await (await client.get("/history")).json()
    assert set(history) == all_ids
    assert all(e["status"]["status_str"] == "success" for e in history.values())
    for ws in sockets.values():
        await ws.close()


async def test_load_50_clients_500_prompts(make_client):
    client = await make_client()
    await run_load(client, n_clients=50, per_client=10)
