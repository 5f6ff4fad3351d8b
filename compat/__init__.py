"""ComfyUI's module names for custom node packs (`comfy.*`), backed by our own code.

This folder is put at the END of sys.path when custom node packs load (nodes/custom_packs.py), so it
never shadows our packages; our own code never imports from it. `server`, `nodes` and `folder_paths`
are not here: they are our own packages (server.PromptServer, nodes.MAX_RESOLUTION) or an alias.
"""
