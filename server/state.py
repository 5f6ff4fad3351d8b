"""What every handler needs, bundled in one object stored on the aiohttp app; and what main.py
hands the server to build it from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from aiohttp import web

from graph.queue import PromptStore


@dataclass(frozen=True)
class ServerContext:
    """The node side, handed in by main.py: server/ imports neither nodes/ nor diffusion/ (DESIGN.md)."""

    registry: Any                  # get_class, object_info, object_info_for, class_types
    folder_paths: Any              # the folder_paths module or a stand-in with its API
    unload_models: Optional[Callable[[], None]] = None  # POST /free, and after an out-of-memory error
    after_prompt: Optional[Callable[[], None]] = None   # model housekeeping between prompts
    packs: tuple = ()              # custom node pack reports (dicts), for GET /api/packs
    pack_server: Any = None        # server.pack_api.PromptServer: its routes served, the hub attached


@dataclass
class ServerState:
    opts: Any                      # server.args.ServerOptions
    store: PromptStore
    registry: Any                  # ServerContext.registry
    folder_paths: Any              # ServerContext.folder_paths
    hub: Any = None                # server.ws.Hub
    worker: Any = None             # server.worker.PromptWorker
    completions: Any = None        # server.run_api.Completions
    web_root: str | None = None
    packs: tuple = ()              # ServerContext.packs
    user_id: str = "default"

    def directory_for_type(self, kind: str) -> str | None:
        """The root directory of an input/output/temp file reference, else None."""
        fp = self.folder_paths
        return {"input": fp.get_input_directory, "output": fp.get_output_directory,
                "temp": fp.get_temp_directory}.get(kind, lambda: None)()


STATE = web.AppKey("latentgraph_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
