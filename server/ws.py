"""WebSocket /ws: handshake, feature flags, and one FIFO publisher that delivers JSON messages and
binary preview frames, per client or broadcast. Other threads hand messages in with
`send_threadsafe`; order across threads is kept because everything goes through one asyncio queue."""
from __future__ import annotations

import asyncio
import json
import struct
import uuid

from aiohttp import WSMsgType, web

from .errors import log

PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}
SEND_TIMEOUT_S = 10.0


def server_features(max_upload_bytes: int) -> dict:
    return {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes,
            "extension": {"manager": {"supports_v4": True}}}


def preview_frame(image_format: str, image_bytes: bytes, metadata: dict | None) -> bytes:
    """Binary preview frame (COMPAT §5.3): type 4 with metadata JSON, else type 1."""
    if metadata is not None:
        meta = json.dumps(metadata).encode()
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image_bytes
    return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[image_format]) + image_bytes


class Preview:
    """An encoded preview; the hub picks the frame type per receiving client."""

    def __init__(self, image_format: str, image_bytes: bytes, metadata: dict):
        self.image_format = image_format
        self.image_bytes = image_bytes
        self.metadata = metadata


class Hub:
    def __init__(self, status_data, max_upload_bytes: int, running_node_for=None):
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.flags: dict[str, dict] = {}
        self._status_data = status_data          # () -> {"exec_info": {...}}
        # sid -> node id now running for that client (handshake step 2); set by the app.
        self.running_node_for = running_node_for or (lambda sid: None)
        self.max_upload_bytes = max_upload_bytes
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self, app=None) -> None:
        self.loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._publish())

    async def stop(self, app=None) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for ws in list(self.sockets.values()):
            await ws.close()

    # ---- sending -------------------------------------------------------------------------------
    def send_threadsafe(self, event: str, data, sid: str | None = None) -> None:
        """Queue a message from any thread; sid None = every socket."""
        if self.loop is None or self.loop.is_closed():
            return
        if not self.sockets:  # nobody to tell: spare the event loop a wake-up per node event
            return
        self.loop.call_soon_threadsafe(self._queue.put_nowait, (event, data, sid))

    def broadcast_status(self) -> None:
        self.send_threadsafe("status", {"status": self._status_data()})

    async def _publish(self) -> None:
        while True:
            event, data, sid = await self._queue.get()
            targets = list(self.sockets.items()) if sid is None else (
                [(sid, self.sockets[sid])] if sid in self.sockets else [])
            for target_sid, ws in targets:
                try:
                    # A client that stops reading must not stall everyone else's messages.
                    await asyncio.wait_for(self._send_one(target_sid, ws, event, data), SEND_TIMEOUT_S)
                except asyncio.TimeoutError:
                    log.warning("client %s is not reading its WebSocket; closing it", target_sid)
                    asyncio.create_task(ws.close())
                except (ConnectionError, RuntimeError) as e:
                    log.debug("dropping message to %s: %s", target_sid, e)

    async def _send_one(self, sid: str, ws, event: str, data) -> None:
        if isinstance(data, Preview):
            meta = data.metadata if self.flags.get(sid, {}).get("supports_preview_metadata") else None
            await ws.send_bytes(preview_frame(data.image_format, data.image_bytes, meta))
        elif isinstance(data, (bytes, bytearray)):
            await ws.send_bytes(bytes(data))
        else:
            await ws.send_str(json.dumps({"type": event, "data": data}))

    # ---- the route -----------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        old = self.sockets.get(sid)
        self.sockets[sid] = ws
        self.flags.pop(sid, None)
        if old is not None and old is not ws:
            await old.close()
        try:
            await ws.send_str(json.dumps({"type": "status",
                                          "data": {"status": self._status_data(), "sid": sid}}))
            node = self.running_node_for(sid)
            if node is not None:
                await ws.send_str(json.dumps({"type": "executing", "data": {"node": node}}))
            first = True
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and first:
                    self._maybe_feature_flags(sid, msg.data, ws)
                    if sid in self.flags:
                        await ws.send_str(json.dumps({
                            "type": "feature_flags", "data": server_features(self.max_upload_bytes)}))
                first = False
        finally:
            if self.sockets.get(sid) is ws:
                del self.sockets[sid]
                self.flags.pop(sid, None)
        return ws

    def _maybe_feature_flags(self, sid: str, text: str, ws) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "feature_flags" and isinstance(msg.get("data"), dict):
            self.flags[sid] = msg["data"]
