"""The HTTP/WebSocket server. `server.PromptServer` exists for custom node packs (server/pack_api.py)."""


def __getattr__(name):
    if name == "PromptServer":
        from .pack_api import PromptServer

        return PromptServer
    raise AttributeError(f"module 'server' has no attribute {name!r}")
