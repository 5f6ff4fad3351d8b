"""/api/jobs: the job view of queue + history that the current frontend reads (Appendix A)."""
from __future__ import annotations

import mimetypes

from aiohttp import web

from graph.queue import ERROR, INTERRUPTED, PENDING, RUNNING, SUCCESS, QueueError, QueueItem

from .errors import ApiError, json_response
from .routing import RouteTable
from .state import state_of

routes = RouteTable("jobs")
JOB_STATUS = {PENDING: "pending", RUNNING: "in_progress", SUCCESS: "completed", ERROR: "failed",
              INTERRUPTED: "cancelled"}
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")


def _file_outputs(item: QueueItem):
    """(node_id, media_key, file dict) for every file reference in the outputs."""
    for node_id, ui in (item.outputs or {}).items():
        if not isinstance(ui, dict):
            continue
        for key, values in ui.items():
            if isinstance(values, list):
                for v in values:
                    if isinstance(v, dict) and "filename" in v:
                        yield node_id, key, v


def _is_previewable(key: str, ref: dict) -> bool:
    mime = mimetypes.guess_type(str(ref.get("filename", "")))[0] or ""
    return key in ("images", "video", "audio", "animated") or mime.startswith(("image/", "video/", "audio/"))


def _execution_error(item: QueueItem):
    for message in (item.status or {}).get("messages", []):
        if message and message[0] == "execution_error":
            return message[1]
    return None


def _workflow_id(item: QueueItem):
    workflow = (item.extra_data.get("extra_pnginfo") or {}).get("workflow")
    return workflow.get("id") if isinstance(workflow, dict) else None


def job_summary(item: QueueItem) -> dict:
    files = list(_file_outputs(item))
    previewable = [(n, k, f) for n, k, f in files if _is_previewable(k, f)]
    preview = None
    if previewable:
        node_id, key, ref = previewable[0]
        preview = {"filename": ref.get("filename"), "subfolder": ref.get("subfolder", ""),
                   "type": ref.get("type", "output"), "nodeId": node_id,
                   "mediaType": key if key != "animated" else "images"}
    return {
        "id": item.prompt_id,
        "status": JOB_STATUS.get(item.state, item.state),
        "priority": item.as_tuple()[0],
        "create_time": item.extra_data.get("create_time", item.create_time),
        "execution_start_time": item.start_time,
        "execution_end_time": item.end_time,
        "outputs_count": len(files),
        "previewable_outputs_count": len(previewable),
        "preview_output": preview,
        "execution_error": _execution_error(item),
        "workflow_id": _workflow_id(item),
    }


def job_detail(item: QueueItem) -> dict:
    job = job_summary(item)
    if item.status is not None:
        job["outputs"] = item.outputs
        job["execution_status"] = item.status
    job["workflow"] = {"prompt": item.prompt, "extra_data": item.extra_data}
    return job


def _int_param(request, name: str, default: int | None, minimum: int) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ApiError(400, f"{name} must be >= {minimum}, got {n}")
    return n


@routes.get("/api/jobs", "Jobs (pending, running and finished) with filters and paging")
async def list_jobs(request: web.Request):
    q = request.query
    wanted = None
    if q.get("status"):
        wanted = {s.strip() for s in q["status"].split(",") if s.strip()}
        bad = wanted - set(STATUSES)
        if bad:
            raise ApiError(400, f"unknown status {sorted(bad)}; use {', '.join(STATUSES)}")
    sort_by = q.get("sort_by", "created_at")
    if sort_by not in ("created_at", "execution_duration"):
        raise ApiError(400, f"sort_by must be created_at or execution_duration, got {sort_by!r}")
    sort_order = q.get("sort_order", "desc")
    if sort_order not in ("asc", "desc"):
        raise ApiError(400, f"sort_order must be asc or desc, got {sort_order!r}")
    offset = _int_param(request, "offset", 0, 0)
    jobs = [job_summary(i) for i in state_of(request).store.all_items()]
    if wanted is not None:
        jobs = [j for j in jobs if j["status"] in wanted]
    if q.get("workflow_id"):
        jobs = [j for j in jobs if j["workflow_id"] == q["workflow_id"]]
    if sort_by == "created_at":
        key = lambda j: (j["create_time"] or 0, j["id"])  # noqa: E731
    else:
        key = lambda j: ((j["execution_end_time"] or 0) - (j["execution_start_time"] or 0), j["id"])  # noqa: E731
    jobs.sort(key=key, reverse=sort_order == "desc")
    total = len(jobs)
    limit = _int_param(request, "limit", max(total - offset, 0), 1)
    page = jobs[offset: offset + limit]
    return json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                      "has_more": offset + len(page) < total}})


@routes.get("/api/jobs/{job_id}", "One job with outputs and workflow")
async def get_job(request: web.Request):
    item = state_of(request).store.get(request.match_info["job_id"])
    if item is None:
        return json_response({"error": "Job not found"}, status=404)
    return json_response(job_detail(item))


@routes.post("/api/jobs/{job_id}/cancel", "Cancel a job: pending ones are removed, a running one interrupted")
async def cancel_job(request: web.Request):
    state = state_of(request)
    job_id = request.match_info["job_id"]
    item = state.store.get(job_id)
    if item is None:
        return json_response({"error": "Job not found"}, status=404)
    if item.state == PENDING:
        state.store.delete_pending([job_id])
        return json_response({"id": job_id, "status": "cancelled"})
    if item.state == RUNNING and state.worker is not None:
        state.worker.interrupt(job_id)
        return json_response({"id": job_id, "status": "cancelling"})
    raise ApiError(409, f"job {job_id!r} is already {JOB_STATUS.get(item.state, item.state)}")


@routes.post("/api/jobs/{job_id}/requeue", "Queue a finished (e.g. interrupted) job again under the same id")
async def requeue_job(request: web.Request):
    state = state_of(request)
    job_id = request.match_info["job_id"]
    item = state.store.get(job_id)
    if item is None:
        return json_response({"error": "Job not found"}, status=404)
    try:
        item = state.store.requeue(job_id)
    except QueueError as e:
        raise ApiError(409, str(e)) from None
    return json_response({"id": job_id, "status": "pending", "number": item.as_tuple()[0]})
