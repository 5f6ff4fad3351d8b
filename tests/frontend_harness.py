"""Helpers for the official-frontend smoke test: locating the frontend package and Chromium, a server
subprocess on a free loopback port, and the Chromium launch options our machines need."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("LATENTGRAPH_CHROMIUM", "/usr/bin/chromium")
# Headless in a container: no sandbox (we run as root), no GPU, and nothing that reaches out to Google.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FRONTEND_PIN = "comfyui-frontend-package==1.58.1"


def frontend_static_dir() -> Path:
    """The web root shipped inside the official frontend's PyPI package."""
    try:
        import comfyui_frontend_package
    except ImportError:
        pytest.fail(f"the official frontend is not installed: pip install '{FRONTEND_PIN}' "
                    "(it is in the test extra)")
    static = Path(comfyui_frontend_package.__file__).resolve().parent / "static"
    if not (static / "index.html").is_file():
        pytest.fail(f"{static} has no index.html: the comfyui_frontend_package install is broken")
    return static


def require_chromium() -> str:
    """Skip (the only environment gap we tolerate) when no Chromium binary is installed."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LATENTGRAPH_CHROMIUM)")
    return CHROMIUM


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_checkpoint(base: Path) -> Path:
    """Build the bundled demo checkpoint into base/models/checkpoints with the maintainers' tool, so the
    test never depends on a stale copy in the working tree."""
    out = base / "models" / "checkpoints" / "latentgraph-tiny-sd1.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_checkpoint.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        pytest.fail(f"tools/make_tiny_checkpoint.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


class ServerProcess:
    """`python main.py` as a child process; `url` is its base URL once `start()` returns."""

    def __init__(self, args: list[str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, str(ROOT / "main.py"), "--listen", "127.0.0.1",
                     "--port", str(self.port), *args]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before answering:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/api/system_stats", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"server did not answer /api/system_stats within {timeout:.0f}s:\n{self.log_tail()}")

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: aiohttp's run_app shuts down cleanly
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if getattr(self, "_log", None):
            self._log.close()
