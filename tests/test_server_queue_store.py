"""graph/queue.py: the durable SQLite queue and history store."""
import threading

import pytest

from graph.queue import PromptStore
from graph.queue_records import QueueError


def put(store, pid, number=None, **kw):
    n = store.next_number() if number is None else number
    return store.put(pid, {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c"}, ["1"], n, **kw)


def test_claim_order_is_number_then_id_and_front_goes_first(tmp_path):
    store = PromptStore(tmp_path / "q.db")
    put(store, "b")
    put(store, "a", number=store.next_number())
    put(store, "front", number=-store.next_number())
    put(store, "tie2", number=10)
    put(store, "tie1", number=10)
    order = [store.claim("w").prompt_id for _ in range(5)]
    assert order == ["front", "b", "a", "tie1", "tie2"]
    assert store.claim("w") is None


def test_finish_writes_history_entry_shape():
    store = PromptStore()
    put(store, "p1")
    item = store.claim("w1")
    assert item.state == "running" and store.queue_remaining() == 1
    msgs = [["execution_start", {"prompt_id": "p1", "timestamp": 1}]]
    store.finish("p1", "success", True, {"1": {"images": []}}, msgs, {"1": {"node_id": "1"}},
                 worker_id="w1")
    hist = store.history()
    assert list(hist) == ["p1"]
    entry = hist["p1"]
    assert entry["prompt"] == [1, "p1", {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "c"}, ["1"]]
    assert entry["outputs"] == {"1": {"images": []}}
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": msgs}
    assert store.queue_remaining() == 0


def test_finish_refuses_wrong_worker_and_wrong_state():
    store = PromptStore()
    put(store, "p1")
    with pytest.raises(QueueError, match="not running"):
        store.finish("p1", "success", True, {}, [], {})
    store.claim("w1")
    with pytest.raises(QueueError, match="leased by 'w1'"):
        store.finish("p1", "success", True, {}, [], {}, worker_id="w2")


def test_survives_reopen_and_recover_marks_running_interrupted(tmp_path):
    path = tmp_path / "q.db"
    store = PromptStore(path)
    for pid in ("a", "b", "c"):
        put(store, pid)
    store.claim("w")  # "a" is running when the process "dies"
    # No close(): simulate a dead process by opening a second connection on the same file.
    again = PromptStore(path)
    assert again.recover() == ["a"]
    assert [i.prompt_id for i in again.pending()] == ["b", "c"]
    entry = again.history()["a"]
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][0][0] == "execution_interrupted"
    assert again.get("a").state == "interrupted"
    # and it can be queued again
    again.requeue("a")
    assert [i.prompt_id for i in again.pending()] == ["b", "c", "a"]
    assert "a" not in again.history()


def test_history_is_bounded_and_paged():
    store = PromptStore(max_history=3)
    for i in range(5):
        put(store, f"p{i}")
        store.claim("w")
        store.finish(f"p{i}", "success", True, {}, [], {})
    assert list(store.history()) == ["p2", "p3", "p4"]
    assert list(store.history(max_items=2)) == ["p3", "p4"]
    assert list(store.history(max_items=1, offset=1)) == ["p3"]
    assert list(store.history(offset=2)) == ["p4"]
    store.delete_history(["p3"])
    assert list(store.history()) == ["p2", "p4"]
    store.clear_history()
    assert store.history() == {}


def test_delete_and_clear_touch_pending_only():
    store = PromptStore()
    for pid in ("a", "b", "c"):
        put(store, pid)
    store.claim("w")
    assert store.delete_pending(["a", "b", "zzz"]) == 1
    assert [i.prompt_id for i in store.pending()] == ["c"]
    store.clear_pending()
    assert store.pending() == [] and [i.prompt_id for i in store.running()] == ["a"]


def test_idempotency_key_returns_first_item_and_rejects_other_body():
    store = PromptStore()
    first = put(store, "p1", idempotency_key="k", request_hash="h1")
    again = put(store, "p2", idempotency_key="k", request_hash="h1")
    assert again.prompt_id == "p1" and again.number == first.number
    assert store.count("pending") == 1
    with pytest.raises(QueueError, match="different request body"):
        put(store, "p3", idempotency_key="k", request_hash="h2")


def test_duplicate_prompt_id_is_refused():
    store = PromptStore()
    put(store, "p1")
    with pytest.raises(QueueError, match="already queued"):
        put(store, "p1")


def test_sensitive_data_is_never_written(tmp_path):
    path = tmp_path / "q.db"
    store = PromptStore(path)
    put(store, "p1", sensitive={"api_key_comfy_org": "SECRET-XYZ"})
    assert store.sensitive("p1") == {"api_key_comfy_org": "SECRET-XYZ"}
    store.close()
    for f in tmp_path.iterdir():
        assert b"SECRET-XYZ" not in f.read_bytes()


def test_expired_lease_is_interrupted():
    store = PromptStore()
    put(store, "p1")
    store.claim("remote", lease_s=-1)
    assert store.expire_leases() == ["p1"]
    assert store.get("p1").state == "interrupted"


def test_concurrent_claims_never_hand_out_twice(tmp_path):
    store = PromptStore(tmp_path / "q.db")
    for i in range(60):
        put(store, f"p{i:02}")
    got, lock = [], threading.Lock()

    def work(w):
        while (item := store.claim(w)) is not None:
            with lock:
                got.append(item.prompt_id)
            store.finish(item.prompt_id, "success", True, {}, [], {}, worker_id=w)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"p{i:02}" for i in range(60)]
    assert len(store.history()) == 60
