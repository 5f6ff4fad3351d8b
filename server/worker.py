"""The prompt worker: one thread that claims prompts from the durable store, runs them with the
graph executor (off the event loop), routes its events to WebSocket clients, and files results."""
from __future__ import annotations

import io
import threading
import traceback
import uuid

from graph.queue import PromptStore
from graph.queue_records import now_ms

from .errors import log
from .ws import Hub, Preview

# Without a client_id ComfyUI still broadcasts these (COMPAT §5); all others are dropped.
BROADCAST_WITHOUT_CLIENT = {"execution_interrupted", "progress", "progress_state", "preview"}


def encode_preview(image, max_size: int) -> tuple[str, bytes]:
    from PIL import ImageOps

    image = ImageOps.contain(image.convert("RGB"), (max_size, max_size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return "JPEG", buf.getvalue()


class EventRouter:
    """Executor listener for one prompt: forwards events to its client, remembers the node."""

    def __init__(self, hub: Hub, prompt_id: str, client_id: str | None, preview_size: int):
        self.hub = hub
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.preview_size = preview_size
        self.last_node: str | None = None

    def __call__(self, event: str, data: dict) -> None:
        if event == "executing":
            if data.get("node") is None:
                return  # the worker sends "executing null" itself, after history is written
            self.last_node = data.get("node")
        if self.client_id is None and event not in BROADCAST_WITHOUT_CLIENT:
            return
        if event == "preview":
            image = data.get("image")
            if image is None:
                return
            fmt, body = encode_preview(image, self.preview_size)
            meta = {k: v for k, v in data.items() if k != "image"}
            meta["image_type"] = "image/jpeg"
            self.hub.send_threadsafe("preview", Preview(fmt, body, meta), self.client_id)
            return
        self.hub.send_threadsafe(event, data, self.client_id)


class PromptWorker:
    def __init__(self, store: PromptStore, hub: Hub, executor, *, preview_size: int = 512,
                 preview_method: str = "none", on_finished=None, unload_models=None,
                 after_prompt=None):
        self.store = store
        self.hub = hub
        self.executor = executor
        self.preview_size = preview_size
        self.preview_method = preview_method
        self.on_finished = on_finished          # called (in this thread) with the finished item
        self.unload_models = unload_models
        self.after_prompt = after_prompt         # model housekeeping between prompts, if offered
        self.worker_id = f"local-{uuid.uuid4().hex[:8]}"
        self.current = None                      # (item, EventRouter) while a prompt runs
        self._stop = threading.Event()
        self._free = {"unload_models": False, "free_memory": False}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="prompt-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.interrupt()
        self.store.wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def running_prompt_id(self) -> str | None:
        current = self.current
        return current[0].prompt_id if current else None

    def running_node_for(self, client_id: str) -> str | None:
        current = self.current
        if current and current[1].client_id == client_id:
            return current[1].last_node
        return None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        current = self.current
        if prompt_id is not None and (current is None or current[0].prompt_id != prompt_id):
            return False
        if self.executor is not None:
            self.executor.interrupt()
        return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            self._free["unload_models"] |= unload_models or free_memory
            self._free["free_memory"] |= free_memory
        self.store.wake()

    def _process_free(self) -> None:
        with self._lock:
            flags, self._free = self._free, {"unload_models": False, "free_memory": False}
        if flags["free_memory"] and hasattr(self.executor, "reset"):
            self.executor.reset()
        if flags["unload_models"] and self.unload_models is not None:
            self.unload_models()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._process_free()
            item = self.store.claim(self.worker_id)
            if item is None:
                self.store.wait_for_work(0.5)
                continue
            try:
                self.run_one(item)
            except Exception:
                log.exception("worker failed on prompt %s", item.prompt_id)

    def run_one(self, item) -> None:
        client_id = item.extra_data.get("client_id")
        router = EventRouter(self.hub, item.prompt_id, client_id, self.preview_size)
        self.current = (item, router)
        extra = {**item.extra_data, **self.store.sensitive(item.prompt_id)}
        if extra.get("preview_method") in (None, "default"):  # "default" = the --preview-method flag
            extra["preview_method"] = self.preview_method
        try:
            result = self.executor.execute(item.prompt, item.prompt_id, extra,
                                           item.outputs_to_execute, listeners=[router])
            status_str, completed = result.status_str, result.completed
            outputs, messages, meta = result.outputs, result.messages, result.meta
        except Exception as e:
            # The engine itself failed (not a node): file it as an error so the prompt is not lost.
            log.exception("executor raised on prompt %s", item.prompt_id)
            data = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
                    "exception_message": str(e), "exception_type": type(e).__name__,
                    "traceback": traceback.format_tb(e.__traceback__), "current_inputs": {},
                    "current_outputs": [], "timestamp": now_ms()}
            router("execution_error", data)
            status_str, completed, outputs, meta = "error", False, {}, {}
            messages = [["execution_error", data]]
        interrupted = any(m and m[0] == "execution_interrupted" for m in messages)
        if self.unload_models is not None and any(
                m and m[0] == "execution_error" and "OutOfMemory" in str(m[1].get("exception_type"))
                for m in messages):
            self.unload_models()  # as ComfyUI does: give the next prompt a clean device
        try:
            finished = self.store.finish(item.prompt_id, status_str, completed, outputs, messages,
                                         meta, worker_id=self.worker_id, interrupted=interrupted)
        finally:
            self.current = None
        if client_id is not None:
            self.hub.send_threadsafe("executing", {"node": None, "prompt_id": item.prompt_id}, client_id)
        if self.after_prompt is not None:
            try:
                self.after_prompt()
            except Exception:
                log.exception("after-prompt housekeeping failed")
        if self.on_finished is not None:
            self.on_finished(finished)
