"""kill -9 during a run: the server is a subprocess; after a restart every pending prompt runs, the
running one is marked interrupted (and can be re-queued), and nothing runs twice."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 50


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def start(port, base):
    proc = subprocess.Popen([sys.executable, "-m", "tests.server_app", "--port", str(port),
                             "--base-directory", str(base)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            call(port, "GET", "/system_stats")
            return proc
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise AssertionError("server process exited during start-up")
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start")


def wait_idle(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if call(port, "GET", "/prompt")["exec_info"]["queue_remaining"] == 0:
            return
        time.sleep(0.1)
    raise AssertionError("queue did not drain")


def prompt(i, log):
    return {"1": {"class_type": "Number", "inputs": {"value": i}},
            "2": {"class_type": "Steps", "inputs": {"value": ["1", 0], "steps": 4, "delay": 0.02}},
            "3": {"class_type": "Append", "inputs": {"value": ["2", 0], "path": str(log)}}}


@pytest.mark.timeout(120)
def test_kill9_mid_run_then_restart(tmp_path):
    port, log = free_port(), tmp_path / "runs.log"
    proc = start(port, tmp_path)
    try:
        ids = [call(port, "POST", "/prompt", {"prompt": prompt(i, log)})["prompt_id"] for i in range(N)]
        # Let a few finish, then kill while one is running.
        deadline = time.time() + 30
        while time.time() < deadline:
            queue = call(port, "GET", "/queue")
            if len(call(port, "GET", "/history")) >= 3 and queue["queue_running"]:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    proc = start(port, tmp_path)
    try:
        wait_idle(port)
        history = call(port, "GET", "/history")
        assert sorted(history) == sorted(ids)  # nothing lost, nothing duplicated
        interrupted = [pid for pid, e in history.items()
                       if any(m[0] == "execution_interrupted" for m in e["status"]["messages"])]
        assert len(interrupted) == 1
        bad = history[interrupted[0]]
        assert bad["status"]["status_str"] == "error"
        assert bad["status"]["messages"][0][1]["reason"] == "server restarted"
        assert call(port, "GET", f"/api/jobs/{interrupted[0]}")["status"] == "cancelled"
        assert all(e["status"]["status_str"] == "success" for pid, e in history.items() if pid != interrupted[0])
        runs = [int(x) for x in log.read_text().split()]
        done_values = sorted(history[pid]["outputs"]["3"]["value"][0] for pid in ids if pid != interrupted[0])
        assert done_values == sorted(set(range(N)) - {ids.index(interrupted[0])})
        for v in done_values:
            assert runs.count(v) == 1, f"value {v} ran {runs.count(v)} times"
        lost = ids.index(interrupted[0])
        assert runs.count(lost) <= 1

        # The interrupted one can be queued again and then completes.
        call(port, "POST", f"/api/jobs/{interrupted[0]}/requeue")
        wait_idle(port)
        entry = call(port, "GET", f"/history/{interrupted[0]}")[interrupted[0]]
        assert entry["status"]["status_str"] == "success" and entry["outputs"]["3"]["value"] == [lost]
        assert len(call(port, "GET", "/history")) == N
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
