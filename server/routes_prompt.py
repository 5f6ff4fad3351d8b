"""Running workflows: /prompt, /queue, /interrupt, /free, /history, /object_info."""
from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from urllib.parse import urlsplit

from aiohttp import web

from graph.queue_records import QueueError, now_ms

from .errors import ApiError, json_response, log, query_int, read_json
from .routing import RouteTable
from .state import ServerState, state_of

routes = RouteTable("prompt")
# extra_data keys that hold credentials: kept in memory only, never in /queue, history or the db.
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _strip_tracebacks(obj):
    """Validation reasons may carry Python tracebacks: kept out of responses (logged at debug)."""
    if isinstance(obj, dict):
        return {k: _strip_tracebacks(v) for k, v in obj.items() if k != "traceback"}
    if isinstance(obj, list):
        return [_strip_tracebacks(v) for v in obj]
    return obj


def _prompt_error(type_: str, message: str, details: str = "") -> dict:
    return {"error": {"type": type_, "message": message, "details": details, "extra_info": {}},
            "node_errors": {}}


def _maybe_convert_ui_format(state: ServerState, prompt: dict) -> dict:
    """A UI-format workflow posted as `prompt` is converted here (ComfyUI only does it in the
    browser)."""
    try:
        from graph import workflow_formats
    except ImportError:
        return prompt
    if not workflow_formats.is_ui_format(prompt):
        return prompt
    info_for = getattr(state.registry, "object_info_for", None)
    if info_for is None:
        raise ApiError(400, "UI-format workflows need a registry with object_info_for")
    try:
        return workflow_formats.ui_to_api(prompt, info_for)
    except Exception as e:  # the converter's own errors name the node; keep them as a 400
        raise ApiError(400, f"could not convert the UI-format workflow: {e}") from None


def _number(body: dict, counter: int | None) -> float:
    if counter is None:
        try:
            return float(body["number"])
        except (TypeError, ValueError):
            raise ApiError(400, f"'number' must be a number, got {body['number']!r}") from None
    return -counter if body.get("front") else counter  # any truthy `front`, as ComfyUI


def _webhook(body: dict) -> str | None:
    url = body.get("webhook")
    if url is None:
        return None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise ApiError(400, f"'webhook' must be an http(s) URL, got {url!r}")
    return url


def request_hash(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def submit(state: ServerState, body: dict, idempotency_key: str | None = None):
    """Validate and queue one POST /prompt body. Returns (status, response body, queued item|None)."""
    # ComfyUI advances the counter on every POST without an explicit `number`, even rejected ones.
    counter = None if "number" in body else state.store.next_number()
    if idempotency_key is not None:
        if len(idempotency_key) > 200:
            raise ApiError(400, "Idempotency-Key is longer than 200 characters")
        try:
            earlier = state.store.find_by_idempotency_key(idempotency_key, request_hash(body))
        except QueueError as e:
            raise ApiError(409, str(e)) from None
        if earlier is not None:
            return 200, {"prompt_id": earlier.prompt_id, "number": earlier.as_tuple()[0],
                         "node_errors": {}}, earlier
    if "prompt" not in body:
        return 400, _prompt_error("no_prompt", "No prompt provided", "No prompt provided"), None
    prompt = body["prompt"]
    if not isinstance(prompt, dict):
        return 400, _prompt_error("invalid_prompt", "Invalid prompt",
                                  f"'prompt' must be a JSON object, got {type(prompt).__name__}"), None
    prompt = _maybe_convert_ui_format(state, prompt)
    number = _number(body, counter)
    prompt_id = body.get("prompt_id") or str(uuid.uuid4())
    if not isinstance(prompt_id, str) or len(prompt_id) > 200:
        raise ApiError(400, "'prompt_id' must be a string of at most 200 characters")
    targets = body.get("partial_execution_targets")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise ApiError(400, "'partial_execution_targets' must be a list of node id strings")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        raise ApiError(400, "'extra_data' must be a JSON object")
    webhook = _webhook(body)

    from graph.validate import validate_prompt

    try:
        result = validate_prompt(prompt, state.registry, targets)
    except Exception as e:
        log.exception("validation raised for prompt %s", prompt_id)
        return 400, _prompt_error("invalid_prompt", "Prompt could not be validated", str(e)), None
    if not result.ok:
        log.debug("prompt %s failed validation: %r", prompt_id, result.as_response())
        return 400, _strip_tracebacks({"error": result.error, "node_errors": result.node_errors}), None

    extra_data = dict(extra_data)
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    extra_data["create_time"] = now_ms()
    sensitive = {k: extra_data.pop(k) for k in SENSITIVE_KEYS if k in extra_data}
    try:
        item = state.store.put(prompt_id, prompt, extra_data, list(result.outputs), number,
                               sensitive=sensitive, idempotency_key=idempotency_key,
                               request_hash=request_hash(body) if idempotency_key else None,
                               webhook=webhook)
    except QueueError as e:
        raise ApiError(409 if idempotency_key else 400, str(e)) from None
    response = {"prompt_id": item.prompt_id, "number": item.as_tuple()[0],
                "node_errors": _strip_tracebacks(result.node_errors)}
    return 200, response, item


@routes.post("/prompt", "Validate and queue an API-format prompt")
async def post_prompt(request: web.Request):
    body = await read_json(request)
    status, response, _ = submit(state_of(request), body, request.headers.get("Idempotency-Key"))
    return json_response(response, status=status)


@routes.get("/prompt", "Queue size")
async def get_prompt(request: web.Request):
    return json_response({"exec_info": {"queue_remaining": state_of(request).store.queue_remaining()}})


@routes.get("/queue", "Running and pending prompts")
async def get_queue(request: web.Request):
    store = state_of(request).store
    return json_response({"queue_running": [i.as_tuple() for i in store.running()],
                          "queue_pending": [i.as_tuple() for i in store.pending()]})


def _id_list(body: dict, key: str) -> list[str]:
    ids = body.get(key)
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ApiError(400, f"'{key}' must be a list of prompt id strings")
    return ids


async def _clear_or_delete(request: web.Request, clear, delete) -> web.Response:
    """POST /queue and /history: {"clear": true} empties, {"delete": [ids]} removes some."""
    body = await read_json(request, default={})
    if body.get("clear"):
        clear()
    if "delete" in body:
        delete(_id_list(body, "delete"))
    return web.Response(status=200)


@routes.post("/queue", "Clear or delete pending prompts")
async def post_queue(request: web.Request):
    store = state_of(request).store
    return await _clear_or_delete(request, store.clear_pending, store.delete_pending)


@routes.post("/interrupt", "Interrupt the running prompt (optionally only if it is prompt_id)")
async def post_interrupt(request: web.Request):
    raw = await request.read()
    prompt_id = None
    try:
        body = json.loads(raw) if raw.strip() else {}
        if isinstance(body, dict) and isinstance(body.get("prompt_id"), str):
            prompt_id = body["prompt_id"]
    except (ValueError, UnicodeDecodeError):
        pass  # ComfyUI accepts an empty or invalid body as "interrupt whatever runs"
    worker = state_of(request).worker
    if worker is not None:
        worker.interrupt(prompt_id)
    return web.Response(status=200)


@routes.post("/free", "Free memory / unload models between prompts")
async def post_free(request: web.Request):
    body = await read_json(request, default={})
    worker = state_of(request).worker
    if worker is not None:
        worker.request_free(bool(body.get("unload_models")), bool(body.get("free_memory")))
    return web.Response(status=200)


@routes.get("/history", "Finished prompts, oldest first")
async def get_history(request: web.Request):
    max_items = query_int(request, "max_items", 0)
    offset = query_int(request, "offset", 0)
    return json_response(state_of(request).store.history(max_items, offset))


@routes.get("/history/{prompt_id}", "One finished prompt ({} if unknown)")
async def get_history_item(request: web.Request):
    item = state_of(request).store.get(request.match_info["prompt_id"])
    if item is None or item.status is None:
        return json_response({})
    return json_response({item.prompt_id: item.history_entry()})


@routes.post("/history", "Clear or delete history entries")
async def post_history(request: web.Request):
    store = state_of(request).store
    return await _clear_or_delete(request, store.clear_history, store.delete_history)


@routes.get("/object_info", "Definitions of all node classes")
async def object_info(request: web.Request):
    # INPUT_TYPES may rescan model folders: keep that off the event loop.
    return json_response(await asyncio.to_thread(state_of(request).registry.object_info))


@routes.get("/object_info/{node_class}", "Definition of one node class ({} if unknown)")
async def object_info_one(request: web.Request):
    name = request.match_info["node_class"]
    info = state_of(request).registry.object_info_for(name)
    return json_response({name: info} if info is not None else {})
