"""/prompt, /queue, /history, /interrupt, /free, /object_info, /api/jobs over the aiohttp test client."""
import asyncio

import pytest

from tests.server_fixtures import chain, client, env, make_client, wait_history  # noqa: F401

pytestmark = pytest.mark.asyncio


async def test_post_prompt_runs_and_history_has_outputs(client):
    r = await client.post("/prompt", json={"prompt": chain(7), "client_id": "c1"})
    assert r.status == 200
    body = await r.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    entry = await wait_history(client, body["prompt_id"])
    assert entry["outputs"] == {"9": {"value": [7]}}
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]][0] == "execution_start"
    number, pid, prompt, extra, outs = entry["prompt"]
    assert pid == body["prompt_id"] and number == body["number"] and outs == ["9"]
    assert extra["client_id"] == "c1" and isinstance(extra["create_time"], int)


async def test_api_alias_and_json_content_type(client):
    r = await client.get("/api/prompt")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
    assert await r.json() == {"exec_info": {"queue_remaining": 0}}


async def test_missing_prompt_and_invalid_prompt_are_400_with_shapes(client):
    r = await client.post("/prompt", json={"client_id": "x"})
    assert r.status == 400
    body = await r.json()
    assert body["error"]["type"] == "no_prompt" and body["node_errors"] == {}
    r = await client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})
    assert r.status == 400
    assert (await r.json())["error"]["type"] == "invalid_prompt"
    bad = chain()
    bad["1"]["inputs"]["value"] = 5000  # max is 1000
    r = await client.post("/prompt", json={"prompt": bad})
    body = await r.json()
    assert r.status == 400 and body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
    assert "traceback" not in str(body)


async def test_numbers_count_every_post_and_front_negates(client):
    r1 = await (await client.post("/prompt", json={"prompt": chain(1)})).json()
    await client.post("/prompt", json={})  # rejected, still counts
    r3 = await (await client.post("/prompt", json={"prompt": chain(2), "front": True})).json()
    r4 = await (await client.post("/prompt", json={"prompt": chain(3), "number": 2.5})).json()
    assert r3["number"] == -(r1["number"] + 2)
    assert r4["number"] == 2.5


async def test_queue_order_delete_and_clear(client):
    # A slow first prompt keeps the worker busy while we look at the pending list.
    slow = await (await client.post("/prompt", json={"prompt": chain(1, steps=500, delay=0.02)})).json()
    # The worker must hold the slow prompt before the others arrive, or "front" would overtake it.
    for _ in range(500):
        q = await (await client.get("/queue")).json()
        if q["queue_running"]:
            break
        await asyncio.sleep(0.01)
    ids = [(await (await client.post("/prompt", json={"prompt": chain(i)})).json())["prompt_id"]
           for i in range(2, 5)]
    front = (await (await client.post("/prompt", json={"prompt": chain(9), "front": True})).json())["prompt_id"]
    await asyncio.sleep(0.1)
    q = await (await client.get("/queue")).json()
    assert [i[1] for i in q["queue_running"]] == [slow["prompt_id"]]
    assert [i[1] for i in q["queue_pending"]] == [front, *ids]
    assert len(q["queue_pending"][0]) == 5
    r = await client.post("/queue", json={"delete": [ids[0]]})
    assert r.status == 200
    q = await (await client.get("/queue")).json()
    assert [i[1] for i in q["queue_pending"]] == [front, ids[1], ids[2]]
    assert (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 4
    await client.post("/queue", json={"clear": True})
    q = await (await client.get("/queue")).json()
    assert q["queue_pending"] == [] and len(q["queue_running"]) == 1
    await client.post("/interrupt", data=b"")
    entry = await wait_history(client, slow["prompt_id"])
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])


async def test_interrupt_with_other_prompt_id_does_nothing(client):
    slow = await (await client.post("/prompt", json={"prompt": chain(1, steps=10, delay=0.02)})).json()
    await asyncio.sleep(0.05)
    await client.post("/interrupt", json={"prompt_id": "not-the-running-one"})
    entry = await wait_history(client, slow["prompt_id"])
    assert entry["status"]["status_str"] == "success"


async def test_history_paging_delete_clear(client):
    ids = []
    for i in range(4):
        pid = (await (await client.post("/prompt", json={"prompt": chain(i)})).json())["prompt_id"]
        await wait_history(client, pid)
        ids.append(pid)
    assert list(await (await client.get("/history")).json()) == ids
    assert list(await (await client.get("/history?max_items=2")).json()) == ids[2:]
    assert list(await (await client.get("/history?max_items=1&offset=1")).json()) == ids[1:2]
    assert (await client.get("/history?max_items=x")).status == 400
    assert await (await client.get("/history/unknown")).json() == {}
    await client.post("/history", json={"delete": [ids[0]]})
    assert list(await (await client.get("/history")).json()) == ids[1:]
    await client.post("/history", json={"clear": True})
    assert await (await client.get("/history")).json() == {}


async def test_free_and_object_info(client):
    assert (await client.post("/free", json={"free_memory": True})).status == 200
    info = await (await client.get("/object_info")).json()
    assert info["Number"]["output"] == ["INT"] and info["Show"]["output_node"] is True
    one = await (await client.get("/object_info/Add")).json()
    assert list(one) == ["Add"] and one["Add"]["input"]["required"]["a"] == ["INT"]
    assert await (await client.get("/api/object_info/Unknown")).json() == {}


async def test_idempotency_key_never_runs_twice(client):
    headers = {"Idempotency-Key": "abc-123"}
    body = {"prompt": chain(4), "client_id": "c"}
    first = await (await client.post("/prompt", json=body, headers=headers)).json()
    again = await (await client.post("/prompt", json=body, headers=headers)).json()
    assert again["prompt_id"] == first["prompt_id"] and again["number"] == first["number"]
    await wait_history(client, first["prompt_id"])
    later = await (await client.post("/prompt", json=body, headers=headers)).json()
    assert later["prompt_id"] == first["prompt_id"]
    assert len(await (await client.get("/history")).json()) == 1
    other = await client.post("/prompt", json={"prompt": chain(5)}, headers=headers)
    assert other.status == 409


async def test_jobs_list_detail_cancel(client):
    done = (await (await client.post("/prompt", json={"prompt": chain(1)})).json())["prompt_id"]
    await wait_history(client, done)
    slow = (await (await client.post("/prompt", json={"prompt": chain(2, steps=40, delay=0.02)})).json())["prompt_id"]
    pending = (await (await client.post("/prompt", json={"prompt": chain(3)})).json())["prompt_id"]
    await asyncio.sleep(0.1)
    jobs = await (await client.get("/api/jobs")).json()
    status = {j["id"]: j["status"] for j in jobs["jobs"]}
    assert status == {done: "completed", slow: "in_progress", pending: "pending"}
    assert jobs["pagination"] == {"offset": 0, "limit": 3, "total": 3, "has_more": False}
    page = await (await client.get("/api/jobs?status=pending,completed&limit=1&sort_order=asc")).json()
    assert [j["id"] for j in page["jobs"]] == [done] and page["pagination"]["has_more"] is True
    assert (await client.get("/api/jobs?status=bogus")).status == 400
    assert (await client.get("/api/jobs?limit=0")).status == 400
    detail = await (await client.get(f"/api/jobs/{done}")).json()
    assert detail["outputs"] == {"9": {"value": [1]}} and detail["workflow"]["prompt"]["1"]["class_type"] == "Number"
    assert (await client.get("/api/jobs/nope")).status == 404
    r = await client.post(f"/api/jobs/{pending}/cancel")
    assert (await r.json())["status"] == "cancelled"
    await client.post(f"/api/jobs/{slow}/cancel")
    await wait_history(client, slow)
    assert (await (await client.get(f"/api/jobs/{slow}")).json())["status"] == "cancelled"
    assert (await client.post(f"/api/jobs/{slow}/cancel")).status == 409


async def test_node_error_recorded_as_failed_job(client):
    pid = (await (await client.post("/prompt", json={"prompt": chain(3, fail=True)})).json())["prompt_id"]
    entry = await wait_history(client, pid)
    assert entry["status"]["status_str"] == "error"
    job = await (await client.get(f"/api/jobs/{pid}")).json()
    assert job["status"] == "failed" and "failed on purpose" in job["execution_error"]["exception_message"]


async def test_interrupt_while_idle_does_not_hit_the_next_prompt(client):
    assert (await client.post("/api/interrupt")).status == 200
    pid = (await (await client.post("/prompt", json={"prompt": chain(1, steps=3)})).json())["prompt_id"]
    entry = await wait_history(client, pid)
    assert entry["status"]["status_str"] == "success"
