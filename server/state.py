"""What every handler needs, bundled in one object stored on the aiohttp app."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from graph.queue import PromptStore


@dataclass
class ServerState:
    opts: Any                      # server.args.ServerOptions
    store: PromptStore
    registry: Any                  # nodes.registry.NodeRegistry or a stand-in (get_class, object_info…)
    folder_paths: Any              # the nodes.folder_paths module (or a stand-in with its API)
    hub: Any = None                # server.ws.Hub
    worker: Any = None             # server.worker.PromptWorker
    completions: Any = None        # server.run_api.Completions
    web_root: str | None = None
    user_id: str = "default"

    def directory_for_type(self, kind: str) -> str | None:
        """The root directory of an input/output/temp file reference, else None."""
        fp = self.folder_paths
        return {"input": fp.get_input_directory, "output": fp.get_output_directory,
                "temp": fp.get_temp_directory}.get(kind, lambda: None)()


STATE = web.AppKey("latentgraph_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
