"""`comfy` for custom node packs: comfy.utils and comfy.model_management (see compat/__init__.py)."""
