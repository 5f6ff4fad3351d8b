"""Beyond ComfyUI: POST /api/run (queue, wait, return outputs) and completion webhooks."""
from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
from aiohttp import web

from graph.queue_records import FINISHED_STATES, QueueItem

from .errors import ApiError, json_response, log, read_json
from .jobs import job_status
from .routes_prompt import submit
from .routing import RouteTable
from .security import resolve_inside
from .state import ServerState, state_of

routes = RouteTable("run")
WEBHOOK_ATTEMPTS = 3
WEBHOOK_TIMEOUT_S = 10
DEFAULT_RUN_TIMEOUT_S = 300
MAX_RUN_TIMEOUT_S = 3600


class Completions:
    """Lets coroutines wait for a prompt to finish; the worker thread reports via `finished`."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, list[asyncio.Future]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self, app=None):
        self.loop = asyncio.get_running_loop()

    async def stop(self, app=None):
        for task in list(self._tasks):
            task.cancel()

    def finished(self, item: QueueItem) -> None:
        """Called from the worker thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._resolve, item)

    def _resolve(self, item: QueueItem) -> None:
        for fut in self._waiters.pop(item.prompt_id, []):
            if not fut.done():
                fut.set_result(item)
        if item.webhook:
            task = asyncio.create_task(call_webhook(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def waiter(self, prompt_id: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(prompt_id, []).append(fut)
        return fut

    def forget(self, prompt_id: str, fut: asyncio.Future) -> None:
        waiting = self._waiters.get(prompt_id, [])
        if fut in waiting:
            waiting.remove(fut)
        if not waiting:
            self._waiters.pop(prompt_id, None)


def result_body(item: QueueItem) -> dict:
    status = item.status or {}
    return {"prompt_id": item.prompt_id, "status": job_status(item),
            "completed": bool(status.get("completed")), "outputs": item.outputs,
            "messages": status.get("messages", [])}


async def call_webhook(item: QueueItem) -> bool:
    """POST the result to the prompt's webhook, retrying a bounded number of times."""
    body = result_body(item)
    delay = 0.2
    timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(item.webhook, json=body) as resp:
                    if resp.status < 400:
                        return True
                    log.warning("webhook %s for %s answered %d (attempt %d/%d)", item.webhook,
                                item.prompt_id, resp.status, attempt, WEBHOOK_ATTEMPTS)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            log.warning("webhook %s for %s failed: %s (attempt %d/%d)", item.webhook, item.prompt_id,
                        e, attempt, WEBHOOK_ATTEMPTS)
        if attempt < WEBHOOK_ATTEMPTS:
            await asyncio.sleep(delay)
            delay *= 2
    return False


def _inline_files(state: ServerState, outputs: dict) -> dict:
    """Add `data` (base64) to each file reference of the outputs, read from its real path."""
    inlined = {}
    for node_id, ui in outputs.items():
        node = {}
        for key, values in (ui.items() if isinstance(ui, dict) else []):
            if not isinstance(values, list):
                node[key] = values
                continue
            out = []
            for v in values:
                if isinstance(v, dict) and "filename" in v and state.directory_for_type(v.get("type", "output")):
                    root = state.directory_for_type(v.get("type", "output"))
                    path = resolve_inside(root, v.get("subfolder") or "", os.path.basename(v["filename"]))
                    if path.is_file():
                        v = {**v, "data": base64.b64encode(path.read_bytes()).decode()}
                out.append(v)
            node[key] = out
        inlined[node_id] = node
    return inlined


@routes.post("/api/run", "Queue a prompt and wait for its outputs (timeout in seconds; inline=true adds base64)")
async def run(request: web.Request):
    state = state_of(request)
    body = await read_json(request)
    timeout = body.pop("timeout", DEFAULT_RUN_TIMEOUT_S)
    inline = body.pop("inline", False)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_RUN_TIMEOUT_S:
        raise ApiError(400, f"'timeout' must be a number of seconds in (0, {MAX_RUN_TIMEOUT_S}]")
    completions: Completions = state.completions
    status, response, item = submit(state, body, request.headers.get("Idempotency-Key"))
    if status != 200:
        return json_response(response, status=status)
    fut = completions.waiter(item.prompt_id)
    current = state.store.get(item.prompt_id)
    if current is not None and current.state in FINISHED_STATES:
        completions.forget(item.prompt_id, fut)
        done = current
    else:
        try:
            done = await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            completions.forget(item.prompt_id, fut)
            now = state.store.get(item.prompt_id)
            return json_response({"prompt_id": item.prompt_id, "timed_out": True,
                                  "status": job_status(now) if now else "unknown"},
                                 status=202)
    result = result_body(done)
    result["node_errors"] = response["node_errors"]
    if inline:
        result["outputs"] = _inline_files(state, result["outputs"])
    return json_response(result)
