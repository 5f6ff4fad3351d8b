"""/api/jobs: the job view of queue + history that the current frontend reads (Appendix A)."""
from __future__ import annotations

import mimetypes

from aiohttp import web

from graph.queue_records import ERROR, INTERRUPTED, PENDING, RUNNING, SUCCESS, QueueError, QueueItem

from .errors import ApiError, json_response, query_int
from .routing import RouteTable
from .state import state_of

routes = RouteTable("jobs")
JOB_STATUS = {PENDING: "pending", RUNNING: "in_progress", SUCCESS: "completed", ERROR: "failed",
              INTERRUPTED: "cancelled"}
STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")


def job_status(item: QueueItem) -> str:
    """The job-view name of a queue state (pending, in_progress, completed, failed, cancelled)."""
    return JOB_STATUS.get(item.state, item.state)


def job_from_path(request: web.Request) -> QueueItem:
    """The job named by the path's {job_id}; 404 if the store does not know it."""
    item = state_of(request).store.get(request.match_info["job_id"])
    if item is None:
        raise ApiError(404, "Job not found")
    return item


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
        "status": job_status(item),
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
    offset = query_int(request, "offset", 0, default=0)
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
    limit = query_int(request, "limit", 1, default=max(total - offset, 0))
    page = jobs[offset: offset + limit]
    return json_response({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total,
                                                      "has_more": offset + len(page) < total}})


@routes.get("/api/jobs/{job_id}", "One job with outputs and workflow")
async def get_job(request: web.Request):
    return json_response(job_detail(job_from_path(request)))


@routes.post("/api/jobs/{job_id}/cancel", "Cancel a job: pending ones are removed, a running one interrupted")
async def cancel_job(request: web.Request):
    state = state_of(request)
    item = job_from_path(request)
    job_id = item.prompt_id
    if item.state == PENDING:
        state.store.delete_pending([job_id])
        return json_response({"id": job_id, "status": "cancelled"})
    if item.state == RUNNING and state.worker is not None:
        state.worker.interrupt(job_id)
        return json_response({"id": job_id, "status": "cancelling"})
    raise ApiError(409, f"job {job_id!r} is already {job_status(item)}")


@routes.post("/api/jobs/{job_id}/requeue", "Queue a finished (e.g. interrupted) job again under the same id")
async def requeue_job(request: web.Request):
    job_id = job_from_path(request).prompt_id
    try:
        item = state_of(request).store.requeue(job_id)
    except QueueError as e:
        raise ApiError(409, str(e)) from None
    return json_response({"id": job_id, "status": "pending", "number": item.as_tuple()[0]})
